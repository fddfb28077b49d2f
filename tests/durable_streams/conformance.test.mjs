// The Durable Streams server conformance suite (@durable-streams/server-conformance-tests),
// run against CONFORMANCE_TEST_URL (for the cluster: `${public_url}/streams`).
//
// The suite sends no credentials and our server has no anonymous access, so every request
// to the base URL gets `Authorization: Bearer ${DS_TOKEN}` when DS_TOKEN is set (one that
// carries its own Authorization header keeps it). The suite's helpers call the global
// `fetch`, and so does its copy of @durable-streams/client (`(...args) => fetch(...args)`,
// looked up at call time), so wrapping globalThis.fetch before the suite runs reaches both.
import { runConformanceTests } from "@durable-streams/server-conformance-tests"

const baseUrl = process.env.CONFORMANCE_TEST_URL
if (!baseUrl) {
  throw new Error(
    "CONFORMANCE_TEST_URL is not set (e.g. http://127.0.0.1:8080/streams, or the reference server's URL)",
  )
}

const token = process.env.DS_TOKEN
if (token) {
  const originalFetch = globalThis.fetch
  const prefix = baseUrl.replace(/\/+$/, "")
  const targetsServer = (url) => url === prefix || url.startsWith(`${prefix}/`) || url.startsWith(`${prefix}?`)

  globalThis.fetch = function fetchWithToken(input, init) {
    if (input instanceof Request) {
      if (!targetsServer(input.url)) return originalFetch(input, init)
      const request = new Request(input, init)
      if (!request.headers.has("authorization")) {
        request.headers.set("authorization", `Bearer ${token}`)
      }
      return originalFetch(request)
    }
    const url = input instanceof URL ? input.href : String(input)
    if (!targetsServer(url)) return originalFetch(input, init)
    const headers = new Headers(init?.headers)
    if (!headers.has("authorization")) headers.set("authorization", `Bearer ${token}`)
    return originalFetch(input, { ...init, headers })
  }
}

// The long-poll timeout the server is expected to use (the suite's default: 20 s);
// tests that wait one out get this plus a second.
const longPollTimeoutMs = process.env.DS_LONG_POLL_TIMEOUT_MS
  ? Number(process.env.DS_LONG_POLL_TIMEOUT_MS)
  : undefined

// DS_SUBSCRIPTIONS=1 runs the reserved subscription API tests too (skipped by default).
const subscriptions = process.env.DS_SUBSCRIPTIONS === "1"

runConformanceTests({
  baseUrl,
  ...(longPollTimeoutMs ? { longPollTimeoutMs } : {}),
  ...(subscriptions ? { subscriptions } : {}),
})
