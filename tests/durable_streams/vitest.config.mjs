// `npx vitest run` here runs the conformance suite (conformance.test.mjs) against
// CONFORMANCE_TEST_URL. Per-test results go to a JSON report (DS_REPORT, default
// conformance-report.json here) that tests/e2e/test_durable_streams.py reads.
//
// Timeouts: the suite gives every test that waits out a long-poll its own timeout
// (longPollTimeoutMs + 1 s, DS_LONG_POLL_TIMEOUT_MS in conformance.test.mjs, default 20 s),
// and leaves the rest on vitest's default of 5 s, as its own CLI
// (`npx @durable-streams/server-conformance-tests --run URL`) does. Two of those
// ("offset=now with long-poll ...") wait for the server's long-poll timeout to answer
// 204, so they pass only against a server whose long-poll timeout is under the test
// timeout; DS_TEST_TIMEOUT_MS raises it (the reference server's is 30 s: 35000 makes
// them pass there, and the run about a minute longer). Hooks get a generous minute.
import { defineConfig } from "vitest/config"

const testTimeout = Number(process.env.DS_TEST_TIMEOUT_MS || 5_000)

export default defineConfig({
  test: {
    include: ["conformance.test.mjs"],
    testTimeout,
    hookTimeout: 60_000,
    teardownTimeout: 10_000,
    watch: false,
    reporters: ["default", "json"],
    outputFile: { json: process.env.DS_REPORT || "conformance-report.json" },
  },
})
