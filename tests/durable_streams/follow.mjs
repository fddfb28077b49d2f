// Follow one JSON Durable Stream live over SSE with @durable-streams/client, from its
// start (offset -1) to its close, through any number of broken connections:
//
//   DS_TOKEN=<jwt> node follow.mjs http://127.0.0.1:8080/streams/answers/<message_id>
//
// stdout gets one JSON object a line:
//   {"event":"response","status":200,"live":"sse","offset":"<asked>","served_by":"gateway-2"}
//       every HTTP response the client got (served_by: its X-Served-By header, or null);
//   {"event":"batch","offset":"<after it>","items":[...],"up_to_date":true,
//    "stream_closed":false,"served_by":"gateway-2"}
//       every batch the client delivered (served_by: the response it came on);
//   {"event":"error","error":"...","offset":"<resume from>"} then {"event":"resume",...}
//       when a connection broke in a way the client does not retry itself;
//   {"closed":true,"text":"<every item's delta, in order>","offset":"...","items":N,
//    "resumes":K}
//       last, once the stream is closed; then the exit status is 0.
// Any other end (a 4xx other than 429, FOLLOW_TIMEOUT_S passed, FOLLOW_MAX_RESUMES
// broken connections) prints {"event":"fatal",...} and exits 1 (2 for bad usage).
//
// Recovery: the client itself retries a failed request (network error, 5xx, 429) with
// backoff (backoffOptions), and opens a new SSE connection from the last offset when one
// ends cleanly. A connection cut mid-response (kill -9 of the node serving it) makes its
// body fail instead, which ends the client's StreamResponse with an error; this script
// then calls stream() again from the offset after the last batch it got, so nothing is
// read twice or skipped (the items are printed as received, not deduplicated: the test
// checks that).
import { FetchError, stream } from "@durable-streams/client"

const url = process.argv[2]
if (!url) {
  console.error("usage: DS_TOKEN=<jwt> node follow.mjs <stream url>")
  process.exit(2)
}
const token = process.env.DS_TOKEN
const timeoutS = Number(process.env.FOLLOW_TIMEOUT_S || 60)
const maxResumes = Number(process.env.FOLLOW_MAX_RESUMES || 20)
/** How long a 404 before the first item is taken for "not created yet". */
const notFoundGraceMs = Number(process.env.FOLLOW_NOT_FOUND_GRACE_MS || 5_000)

const emit = (obj) => process.stdout.write(`${JSON.stringify(obj)}\n`)

function fatal(reason, extra = {}) {
  emit({ event: "fatal", error: reason, offset, ...extra })
  process.exit(1)
}

const started = Date.now()
const deadline = started + timeoutS * 1000
setTimeout(() => fatal(`not closed within ${timeoutS}s`), timeoutS * 1000).unref()

let offset = "-1"
let text = ""
let itemCount = 0
let resumes = 0
/** X-Served-By of the last response: the one the next batches come from. */
let servedBy = null

/** The client's fetch: global fetch, recording (and printing) which node answered. */
async function recordingFetch(input, init) {
  const response = await fetch(input, init)
  const asked = new URL(input instanceof Request ? input.url : String(input))
  servedBy = response.headers.get("x-served-by")
  emit({
    event: "response",
    status: response.status,
    live: asked.searchParams.get("live"),
    offset: asked.searchParams.get("offset"),
    served_by: servedBy,
  })
  return response
}

/** Batches of an abandoned session (one we resumed past) are ignored: `offset` only moves
 * with a batch that was taken, so the next session reads them again. */
let session = 0

/** Follow from `offset` until the stream is closed (true) or the session ends (false). */
async function followOnce() {
  const mine = ++session
  const res = await stream({
    url,
    offset,
    live: "sse",
    json: true,
    headers: token ? { Authorization: `Bearer ${token}` } : {},
    fetch: recordingFetch,
    // Retry a request that failed (network error, 5xx, 429) for up to about 15 s.
    backoffOptions: { initialDelay: 50, maxDelay: 1_000, multiplier: 1.5, maxRetries: 25 },
    sseResilience: { logWarnings: true },
    warnOnHttp: false,
  })
  return await new Promise((resolve, reject) => {
    const settle = (fn, value) => {
      if (session !== mine) return
      session += 1 // later batches of this session are ignored
      fn(value)
    }
    res.subscribeJson((batch) => {
      if (session !== mine) return
      for (const item of batch.items) {
        text += typeof item?.delta === "string" ? item.delta : ""
      }
      itemCount += batch.items.length
      offset = batch.offset
      emit({
        event: "batch",
        offset: batch.offset,
        items: batch.items,
        up_to_date: batch.upToDate,
        stream_closed: batch.streamClosed,
        served_by: servedBy,
      })
      if (batch.streamClosed) settle(resolve, true)
    })
    // `closed` settles when the client stops fetching, which may be before the
    // subscriber has been given every response already fetched, and the client's state
    // may say "closed" without a batch that does (an SSE control event with
    // streamClosed and no data). So once the subscriber has taken everything up to the
    // client's last offset, the stream is closed if the client says so; otherwise (the
    // session ended without an error, e.g. an SSE fallback) it is resumed from there.
    res.closed.then(
      () => {
        const drainedBy = Date.now() + 5_000
        const check = () => {
          if (session !== mine) return
          if (offset !== res.offset && Date.now() < drainedBy) {
            setTimeout(check, 10)
            return
          }
          if (!res.streamClosed) {
            emit({ event: "ended", offset: res.offset, up_to_date: res.upToDate })
          }
          settle(resolve, res.streamClosed && offset === res.offset)
        }
        check()
      },
      (err) => settle(reject, err),
    )
  })
}

function permanent(err) {
  if (!(err instanceof FetchError)) return false
  if (err.status === 404 && itemCount === 0 && Date.now() - started < notFoundGraceMs) {
    return false
  }
  return err.status >= 400 && err.status < 500 && err.status !== 429
}

for (;;) {
  let closed = false
  try {
    closed = await followOnce()
  } catch (err) {
    const reason = err instanceof Error ? `${err.name}: ${err.message}` : String(err)
    const cause = err?.cause instanceof Error ? err.cause.message : undefined
    if (permanent(err)) fatal(reason, { status: err.status })
    emit({ event: "error", error: reason, cause, offset })
  }
  if (closed) break
  resumes += 1
  if (resumes > maxResumes) fatal(`gave up after ${maxResumes} broken connections`)
  if (Date.now() > deadline) fatal(`not closed within ${timeoutS}s`)
  await new Promise((resolve) => setTimeout(resolve, Math.min(100 * resumes, 1_000)))
  emit({ event: "resume", offset, resumes })
}

emit({ closed: true, text, offset, items: itemCount, resumes })
process.exit(0)
