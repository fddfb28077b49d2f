// The reference Durable Streams server (@durable-streams/server's DurableStreamTestServer),
// for comparisons and the bench: `PORT=4437 node reference-server.mjs` listens on
// 127.0.0.1:PORT (PORT unset or 0: a free port), prints `ready <url>` once it accepts
// requests, and runs until SIGTERM or SIGINT. DATA_DIR=<dir> makes it file-backed
// (LMDB and append-only logs) instead of in-memory; LONG_POLL_TIMEOUT_MS sets how long a
// long-poll waits for data before it answers 204 (the server's default: 30 s).
import { DurableStreamTestServer } from "@durable-streams/server"

const port = Number(process.env.PORT || 0)
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  console.error(`bad PORT: ${process.env.PORT}`)
  process.exit(2)
}

const server = new DurableStreamTestServer({
  host: "127.0.0.1",
  port,
  ...(process.env.DATA_DIR ? { dataDir: process.env.DATA_DIR } : {}),
  ...(process.env.LONG_POLL_TIMEOUT_MS
    ? { longPollTimeout: Number(process.env.LONG_POLL_TIMEOUT_MS) }
    : {}),
})
const url = await server.start()
console.log(`ready ${url}`)

let stopping = false
async function stop(signal) {
  if (stopping) return
  stopping = true
  try {
    await server.stop()
  } catch (err) {
    console.error(`stop after ${signal} failed:`, err)
    process.exit(1)
  }
  process.exit(0)
}
process.on("SIGTERM", () => stop("SIGTERM"))
process.on("SIGINT", () => stop("SIGINT"))
