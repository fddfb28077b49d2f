// A check of follow.mjs itself, on the reference server (no cluster): a writer appends
// {"seq", "delta"} messages to a JSON stream and closes it, while follow.mjs reads it
// through a proxy that cuts every response in flight twice (as a gateway killed -9
// mid-answer would: no end of the chunked body) and once ends them cleanly (as a node
// closing an SSE connection does). follow.mjs must print every seq exactly once, the
// whole text, X-Served-By of each proxy "generation", and exit 0.
//
//   node follow-selftest.mjs        prints `ok ...` and exits 0, or says what went wrong
import { spawn } from "node:child_process"
import http from "node:http"
import { createInterface } from "node:readline"
import { DurableStream } from "@durable-streams/client"
import { DurableStreamTestServer } from "@durable-streams/server"

const N = 120
const APPEND_EVERY_MS = 15

const server = new DurableStreamTestServer({ host: "127.0.0.1", port: 0 })
const target = new URL(await server.start())

// The proxy: names itself gateway-<generation> in X-Served-By; cut() destroys every
// response in flight and moves on to the next generation.
let generation = 1
let proxyUrl = ""
const inFlight = new Set()
const proxy = http.createServer((req, res) => {
  const upstream = http.request(
    { host: target.hostname, port: target.port, method: req.method, path: req.url, headers: req.headers },
    (answer) => {
      res.writeHead(answer.statusCode, { ...answer.headers, "x-served-by": `gateway-${generation}` })
      res.flushHeaders()
      res.sse = new URL(req.url, proxyUrl).searchParams.get("live") === "sse"
      inFlight.add(res)
      res.on("close", () => inFlight.delete(res))
      answer.pipe(res)
    },
  )
  upstream.on("error", (err) => res.destroy(err))
  res.on("close", () => upstream.destroy())
  req.pipe(upstream)
})
await new Promise((resolve) => proxy.listen(0, "127.0.0.1", resolve))
proxyUrl = `http://127.0.0.1:${proxy.address().port}`
function cut(clean) {
  for (const res of inFlight) (clean ? res.end() : res.destroy())
  generation += 1
}

const path = `/answers/selftest-${Date.now()}`
const writer = await DurableStream.create({ url: `${target.href.replace(/\/$/, "")}${path}`, contentType: "application/json" })
let expected = ""
const wrote = (async () => {
  for (let seq = 1; seq <= N; seq++) {
    const delta = `${seq === 1 ? "" : " "}word${seq}`
    expected += delta
    await writer.append(JSON.stringify({ seq, delta }))
    await new Promise((resolve) => setTimeout(resolve, APPEND_EVERY_MS))
  }
  await writer.close()
})()

const follower = spawn(process.execPath, ["follow.mjs", `${proxyUrl}${path}`], {
  cwd: import.meta.dirname,
  env: { ...process.env, FOLLOW_TIMEOUT_S: "30" },
  stdio: ["ignore", "pipe", "inherit"],
})
const events = []
createInterface({ input: follower.stdout }).on("line", (line) => events.push(JSON.parse(line)))
const exited = new Promise((resolve) => follower.on("exit", (code) => resolve(code)))

const seqsSoFar = () => events.filter((e) => e.event === "batch").flatMap((e) => e.items.map((i) => i.seq))
async function until(what, condition, timeoutMs = 10_000) {
  const deadline = Date.now() + timeoutMs
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 5))
  }
}

let problem = null
try {
  // Cut at 20 and 50 items received, end cleanly at 80: each time on a live SSE read.
  for (const [items, clean] of [[20, false], [50, false], [80, true]]) {
    await until(`${items} items`, () => seqsSoFar().length >= items)
    await until("an SSE read in flight", () => [...inFlight].some((res) => res.sse))
    cut(clean)
  }
  await wrote
  const code = await Promise.race([exited, new Promise((resolve) => setTimeout(() => resolve("timeout"), 20_000))])
  const last = events.at(-1) ?? {}
  const seqs = seqsSoFar()
  const servedBy = new Set(events.filter((e) => e.event === "response").map((e) => e.served_by))
  const errors = events.filter((e) => e.event === "error").length
  if (code !== 0) problem = `follow.mjs exited with ${code}`
  else if (!last.closed) problem = `no closed line: ${JSON.stringify(last)}`
  else if (last.text !== expected) problem = `text differs: ${JSON.stringify(last.text)}`
  else if (seqs.length !== N || seqs.some((s, i) => s !== i + 1)) problem = `seqs not 1..${N} once: ${seqs}`
  else if (errors < 2) problem = `expected 2 cut connections, saw ${errors} errors`
  else if (servedBy.size < 4) problem = `expected 4 proxy generations, saw ${[...servedBy]}`
  else console.log(`ok: ${N} items, ${last.resumes} resumes, served by ${[...servedBy].join(", ")}`)
} catch (err) {
  problem = String(err)
} finally {
  follower.kill("SIGKILL")
  proxy.closeAllConnections()
  proxy.close()
  await server.stop()
}
if (problem) {
  console.error(`follow.mjs self-test failed: ${problem}`)
  for (const e of events) console.error(JSON.stringify(e).slice(0, 300))
  process.exit(1)
}
process.exit(0)
