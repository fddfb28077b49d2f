// node --test status/
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  History,
  addBuckets,
  bucketDeltas,
  buckets,
  formatBytes,
  formatSeconds,
  formatUptime,
  gatewayStats,
  healthOf,
  niceMax,
  parsePrometheus,
  quantile,
  rate,
  sumOf,
  svgPath,
  total,
  workerStats,
} from "./metrics.mjs";

const GATEWAY = `# HELP gateway_connections_open Open WebSocket connections
# TYPE gateway_connections_open gauge
gateway_connections_open 12.0
gateway_answers_streaming 3.0
# TYPE gateway_chunks_sent_total counter
gateway_chunks_sent_total 1000.0
gateway_errors_sent_total{code="busy"} 2.0
gateway_errors_sent_total{code="internal"} 1.0
gateway_chunk_delay_seconds_bucket{le="0.01"} 10.0
gateway_chunk_delay_seconds_bucket{le="0.1"} 90.0
gateway_chunk_delay_seconds_bucket{le="1.0"} 100.0
gateway_chunk_delay_seconds_bucket{le="+Inf"} 100.0
gateway_chunk_delay_seconds_count 100.0
gateway_chunk_delay_seconds_sum 4.2
process_start_time_seconds 1000.0
process_cpu_seconds_total 5.0
process_resident_memory_bytes 5.24288e+07
python_info{implementation="CPython",major="3",version="3.11.7"} 1.0
`;

test("parses names, labels, values and skips comments", () => {
  const samples = parsePrometheus(GATEWAY);
  assert.equal(samples.length, 15);
  assert.deepEqual(samples[0], { name: "gateway_connections_open", labels: {}, value: 12 });
  assert.deepEqual(samples[3].labels, { code: "busy" });
  assert.equal(samples.find((s) => s.labels.le === "+Inf").value, 100);
  assert.equal(total(samples, "process_resident_memory_bytes"), 52428800);
});

test("label values keep escaped quotes, backslashes and newlines; specials parse", () => {
  const [a, b, c, d] = parsePrometheus(
    'x{path="a\\"b\\\\c\\nd",z="}"} 1 1712345678000\ny NaN\nz +Inf\nw -Inf\nbroken{a="1" 2\n',
  );
  assert.deepEqual(a.labels, { path: 'a"b\\c\nd', z: "}" });
  assert.equal(a.value, 1);
  assert.ok(Number.isNaN(b.value));
  assert.equal(c.value, Infinity);
  assert.equal(d.value, -Infinity);
  assert.equal(parsePrometheus('broken{a="1" 2\nok 3').length, 1);
});

test("total sums over labels; null when the metric is absent", () => {
  const samples = parsePrometheus(GATEWAY);
  assert.equal(total(samples, "gateway_errors_sent_total"), 3);
  assert.equal(total(samples, "nope"), null);
});

test("buckets are summed by le and sorted, +Inf last", () => {
  const samples = parsePrometheus(
    'h_bucket{le="+Inf",n="a"} 5\nh_bucket{le="0.5",n="a"} 2\nh_bucket{le="0.5",n="b"} 1\n' +
      'h_bucket{le="+Inf",n="b"} 4\nh_count 9\n',
  );
  assert.deepEqual(buckets(samples, "h"), [
    { le: 0.5, count: 3 },
    { le: Infinity, count: 9 },
  ]);
  assert.deepEqual(buckets(samples, "other"), []);
});

test("quantile interpolates inside the bucket the rank falls in", () => {
  const b = buckets(parsePrometheus(GATEWAY), "gateway_chunk_delay_seconds");
  // rank 50 of 100: between 0.01 (10) and 0.1 (90): 0.01 + 0.09 * 40/80.
  assert.ok(Math.abs(quantile(0.5, b) - 0.055) < 1e-12);
  // rank 95: between 0.1 (90) and 1 (100): 0.1 + 0.9 * 5/10.
  assert.ok(Math.abs(quantile(0.95, b) - 0.55) < 1e-12);
  // rank 5 in the first bucket: from 0.
  assert.ok(Math.abs(quantile(0.05, b) - 0.005) < 1e-12);
});

test("quantile: nothing counted is null; a rank in +Inf is the highest finite bound", () => {
  assert.equal(quantile(0.5, []), null);
  assert.equal(quantile(0.5, [{ le: 1, count: 0 }, { le: Infinity, count: 0 }]), null);
  const b = [
    { le: 1, count: 1 },
    { le: Infinity, count: 10 },
  ];
  assert.equal(quantile(0.95, b), 1);
});

test("bucket deltas are the interval's counts; a restart starts over", () => {
  const prev = [
    { le: 0.1, count: 5 },
    { le: Infinity, count: 10 },
  ];
  const cur = [
    { le: 0.1, count: 7 },
    { le: Infinity, count: 20 },
  ];
  assert.deepEqual(bucketDeltas(prev, cur), [
    { le: 0.1, count: 2 },
    { le: Infinity, count: 10 },
  ]);
  const restarted = [
    { le: 0.1, count: 1 },
    { le: Infinity, count: 1 },
  ];
  assert.deepEqual(bucketDeltas(prev, restarted), restarted);
  assert.deepEqual(bucketDeltas(null, cur), cur);
  // Over the interval only the slow chunks came: p50 is in the +Inf-side bucket.
  assert.equal(quantile(0.5, bucketDeltas(prev, cur)), 0.1);
});

test("addBuckets adds nodes' histograms with the same bounds", () => {
  const a = [
    { le: 1, count: 1 },
    { le: Infinity, count: 2 },
  ];
  const b = [
    { le: 1, count: 3 },
    { le: Infinity, count: 3 },
  ];
  assert.deepEqual(addBuckets([a, [], b]), [
    { le: 1, count: 4 },
    { le: Infinity, count: 5 },
  ]);
  assert.deepEqual(addBuckets([a, [{ le: 2, count: 1 }]]), a);
  assert.deepEqual(addBuckets([]), []);
});

test("rate handles resets, missing readings and a zero interval", () => {
  assert.equal(rate(100, 160, 3), 20);
  assert.equal(rate(100, 30, 3), 10);
  assert.equal(rate(null, 30, 3), null);
  assert.equal(rate(10, 30, 0), null);
});

test("health: ok is up, the node's 503 is degraded, anything else is down", () => {
  assert.equal(healthOf(200, { status: "ok" }), "up");
  assert.equal(healthOf(503, { status: "error", reason: "redis unreachable" }), "degraded");
  assert.equal(healthOf(502, null), "down");
  assert.equal(healthOf(0, null), "down");
});

test("gateway stats over an interval: rates, delay quantiles, uptime", () => {
  const prev = { at: 2000, samples: parsePrometheus(GATEWAY) };
  const next = GATEWAY.replace("chunks_sent_total 1000.0", "chunks_sent_total 1300.0")
    .replace('le="0.01"} 10.0', 'le="0.01"} 30.0')
    .replace('le="0.1"} 90.0', 'le="0.1"} 110.0')
    .replace('le="1.0"} 100.0', 'le="1.0"} 120.0')
    .replace('le="+Inf"} 100.0', 'le="+Inf"} 120.0')
    .replace("process_cpu_seconds_total 5.0", "process_cpu_seconds_total 6.5");
  const cur = { at: 2003, samples: parsePrometheus(next) };
  const first = gatewayStats(null, prev);
  assert.equal(first.chunksPerS, null);
  assert.equal(first.delayP95, null);
  assert.equal(first.connections, 12);
  const stats = gatewayStats(prev, cur);
  assert.equal(stats.chunksPerS, 100);
  assert.equal(stats.connections, 12);
  assert.equal(stats.streaming, 3);
  assert.equal(stats.uptime, 1003);
  assert.equal(stats.cpu, 0.5);
  // All 20 new chunks were under 10 ms.
  assert.ok(stats.delayP95 <= 0.01, stats.delayP95);
  assert.ok(Math.abs(stats.delayP50 - 0.005) < 1e-12);
});

test("worker stats: in flight and tokens per second", () => {
  const text = (tokens) =>
    `worker_generations_in_flight 4\nworker_tokens_written_total ${tokens}\n`;
  const prev = { at: 10, samples: parsePrometheus(text(100)) };
  const cur = { at: 12.5, samples: parsePrometheus(text(600)) };
  const stats = workerStats(prev, cur);
  assert.equal(stats.inFlight, 4);
  assert.equal(stats.tokensPerS, 200);
  assert.equal(stats.uptime, null);
  assert.equal(sumOf([stats, null, { inFlight: 2 }], "inFlight"), 6);
  assert.equal(sumOf([null], "inFlight"), null);
});

test("history keeps the window only", () => {
  const h = new History(300);
  for (let t = 0; t <= 600; t += 3) h.push(t, t);
  assert.equal(h.points[0].t, 300);
  assert.equal(h.points.at(-1).t, 600);
});

test("svg path scales time and value, clips, and breaks at gaps", () => {
  const points = [
    { t: 0, v: 0 },
    { t: 5, v: 50 },
    { t: 7, v: null },
    { t: 10, v: 500 },
  ];
  const path = svgPath(points, { width: 100, height: 50, t0: 0, t1: 10, yMax: 100 });
  assert.equal(path, "M0.0 50.0 L50.0 25.0 M100.0 0.0");
  assert.equal(svgPath([], { width: 1, height: 1, t0: 0, t1: 1, yMax: 1 }), "");
});

test("niceMax and formatting", () => {
  assert.equal(niceMax(0), 1);
  assert.equal(niceMax(3), 5);
  assert.equal(niceMax(0.03), 0.05);
  assert.equal(niceMax(1000), 1000);
  assert.equal(niceMax(1001), 2000);
  assert.equal(formatUptime(42), "42s");
  assert.equal(formatUptime(429), "7m 09s");
  assert.equal(formatUptime(3 * 3600 + 120), "3h 02m");
  assert.equal(formatUptime(2 * 86400 + 3600), "2d 1h");
  assert.equal(formatUptime(null), "–");
  assert.equal(formatBytes(52428800), "50 MiB");
  assert.equal(formatBytes(1536), "1.5 KiB");
  assert.equal(formatSeconds(0.0123), "12.3 ms");
  assert.equal(formatSeconds(2.5), "2.50 s");
});
