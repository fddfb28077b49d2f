// The status page's pure core: Prometheus text in, numbers out. No DOM, no fetch,
// no clock: app.mjs passes everything in, and metrics.test.mjs (node --test status/)
// checks it.

/** One sample: a series name, its labels, and a value (NaN and ±Inf included). */
export function parsePrometheus(text) {
  const samples = [];
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (!line || line.startsWith("#")) continue;
    const sample = parseLine(line);
    if (sample) samples.push(sample);
  }
  return samples;
}

const NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*/;

function parseLine(line) {
  const name = NAME.exec(line);
  if (!name) return null;
  let rest = line.slice(name[0].length);
  const labels = {};
  if (rest.startsWith("{")) {
    const end = parseLabels(rest, labels);
    if (end < 0) return null;
    rest = rest.slice(end);
  }
  const fields = rest.trim().split(/\s+/);
  const value = parseValue(fields[0]);
  if (value === null) return null;
  return { name: name[0], labels, value };
}

/** Fills `labels` from `{a="x",b="y"}` at the start of `text`; returns the index after
 * the closing brace, or -1 if it is malformed. Values may hold \\, \" and \n. */
function parseLabels(text, labels) {
  let i = 1;
  while (i < text.length) {
    while (text[i] === " " || text[i] === ",") i++;
    if (text[i] === "}") return i + 1;
    const name = /^[a-zA-Z_][a-zA-Z0-9_]*/.exec(text.slice(i));
    if (!name) return -1;
    i += name[0].length;
    if (text[i] !== "=" || text[i + 1] !== '"') return -1;
    i += 2;
    let value = "";
    while (i < text.length && text[i] !== '"') {
      if (text[i] === "\\" && i + 1 < text.length) {
        const next = text[i + 1];
        value += next === "n" ? "\n" : next;
        i += 2;
      } else {
        value += text[i++];
      }
    }
    if (i >= text.length) return -1;
    labels[name[0]] = value;
    i++;
  }
  return -1;
}

function parseValue(text) {
  if (text === undefined || text === "") return null;
  if (text === "+Inf" || text === "Inf") return Infinity;
  if (text === "-Inf") return -Infinity;
  if (text === "NaN") return NaN;
  const value = Number(text);
  return Number.isNaN(value) ? null : value;
}

/** The sum of every series named `name` (over all its labels), or null if none. */
export function total(samples, name) {
  let sum = null;
  for (const s of samples) {
    if (s.name === name) sum = (sum ?? 0) + s.value;
  }
  return sum;
}

/** A histogram's cumulative buckets, summed over its other labels, by `le` ascending
 * (the last is +Inf): [{le, count}]. Empty if the histogram is not there. */
export function buckets(samples, name) {
  const byLe = new Map();
  for (const s of samples) {
    if (s.name !== `${name}_bucket` || s.labels.le === undefined) continue;
    const le = parseValue(s.labels.le);
    if (le === null) continue;
    byLe.set(le, (byLe.get(le) ?? 0) + s.value);
  }
  return [...byLe.entries()].sort((a, b) => a[0] - b[0]).map(([le, count]) => ({ le, count }));
}

/** Adds bucket lists (several nodes' histograms) bucket by bucket; lists with other
 * bounds are skipped. */
export function addBuckets(lists) {
  const present = lists.filter((l) => l.length);
  if (!present.length) return [];
  const [first] = present;
  const sum = first.map((b) => ({ le: b.le, count: 0 }));
  for (const list of present) {
    if (list.length !== first.length || list.some((b, i) => b.le !== first[i].le)) continue;
    list.forEach((b, i) => {
      sum[i].count += b.count;
    });
  }
  return sum;
}

/** What a histogram counted between two scrapes (`cur` minus `prev`, bucket by
 * bucket). A process restarted in between (a count went down) counted `cur` since. */
export function bucketDeltas(prev, cur) {
  if (!prev || prev.length !== cur.length || prev.some((b, i) => b.le !== cur[i].le)) {
    return cur;
  }
  const deltas = cur.map((b, i) => ({ le: b.le, count: b.count - prev[i].count }));
  return deltas.some((b) => b.count < 0) ? cur : deltas;
}

/** The q-quantile of cumulative buckets, as Prometheus's histogram_quantile: linear
 * within the bucket the rank falls in (from 0 for the first), the highest finite bound
 * if it falls in +Inf; null if nothing was counted. */
export function quantile(q, cumulative) {
  if (!cumulative.length) return null;
  const count = cumulative[cumulative.length - 1].count;
  if (!(count > 0)) return null;
  const rank = q * count;
  let i = cumulative.findIndex((b) => b.count >= rank);
  if (i < 0) i = cumulative.length - 1;
  const bucket = cumulative[i];
  if (bucket.le === Infinity) {
    return cumulative.length > 1 ? cumulative[cumulative.length - 2].le : null;
  }
  const lower = i === 0 ? 0 : cumulative[i - 1].le;
  const below = i === 0 ? 0 : cumulative[i - 1].count;
  const inBucket = bucket.count - below;
  if (inBucket <= 0) return bucket.le;
  return lower + (bucket.le - lower) * ((rank - below) / inBucket);
}

/** Per-second rate of a counter between two readings `seconds` apart; a counter that
 * went down (its process restarted) counted `cur` since. null when unknown. */
export function rate(prev, cur, seconds) {
  if (prev === null || prev === undefined || cur === null || cur === undefined) return null;
  if (!(seconds > 0)) return null;
  const increase = cur >= prev ? cur - prev : cur;
  return increase / seconds;
}

/** A node's health from its /health answer: `up` (200, status ok), `degraded` (it
 * answers but cannot reach its storage: 503 from the node), `down` otherwise. */
export function healthOf(httpStatus, body) {
  if (httpStatus === 200 && body && body.status === "ok") return "up";
  if (httpStatus === 503 && body && body.status === "error") return "degraded";
  return "down";
}

/** What one scrape of a node says, from its samples; `prev` is the node's previous
 * scrape ({at, samples}, or null), `at` this one's time in seconds. Rates and latency
 * quantiles are over the interval between the two. */
export function gatewayStats(prev, cur) {
  const dt = prev ? cur.at - prev.at : 0;
  const delay = bucketDeltas(
    prev && buckets(prev.samples, "gateway_chunk_delay_seconds"),
    buckets(cur.samples, "gateway_chunk_delay_seconds"),
  );
  return {
    ...processStats(prev, cur),
    connections: total(cur.samples, "gateway_connections_open"),
    streaming: total(cur.samples, "gateway_answers_streaming"),
    chunksPerS: rate(
      prev && total(prev.samples, "gateway_chunks_sent_total"),
      total(cur.samples, "gateway_chunks_sent_total"),
      dt,
    ),
    delayBuckets: prev ? delay : [],
    delayP50: prev ? quantile(0.5, delay) : null,
    delayP95: prev ? quantile(0.95, delay) : null,
  };
}

export function workerStats(prev, cur) {
  const dt = prev ? cur.at - prev.at : 0;
  return {
    ...processStats(prev, cur),
    inFlight: total(cur.samples, "worker_generations_in_flight"),
    tokensPerS: rate(
      prev && total(prev.samples, "worker_tokens_written_total"),
      total(cur.samples, "worker_tokens_written_total"),
      dt,
    ),
  };
}

function processStats(prev, cur) {
  const started = total(cur.samples, "process_start_time_seconds");
  return {
    uptime: started === null ? null : Math.max(0, cur.at - started),
    cpu: rate(
      prev && total(prev.samples, "process_cpu_seconds_total"),
      total(cur.samples, "process_cpu_seconds_total"),
      prev ? cur.at - prev.at : 0,
    ),
    memory: total(cur.samples, "process_resident_memory_bytes"),
  };
}

/** Sums a field over stats objects, skipping nulls; null if all are null. */
export function sumOf(stats, field) {
  let sum = null;
  for (const s of stats) {
    if (s && s[field] !== null && s[field] !== undefined) sum = (sum ?? 0) + s[field];
  }
  return sum;
}

/** A time series of the last `windowS` seconds: [{t, v}], oldest first. */
export class History {
  constructor(windowS) {
    this.windowS = windowS;
    this.points = [];
  }

  push(t, v) {
    this.points.push({ t, v });
    while (this.points.length && this.points[0].t < t - this.windowS) this.points.shift();
  }
}

/** A round upper bound for a plot's y axis: 1, 2 or 5 times a power of ten. */
export function niceMax(v) {
  if (!(v > 0) || !Number.isFinite(v)) return 1;
  const power = 10 ** Math.floor(Math.log10(v));
  for (const step of [1, 2, 5, 10]) {
    if (v <= step * power) return step * power;
  }
  return 10 * power;
}

/** An SVG path for `points` on a `width` x `height` plot of the times t0..t1 and the
 * values 0..yMax (y grows downwards); a null value breaks the line. */
export function svgPath(points, { width, height, t0, t1, yMax }) {
  const span = t1 - t0 || 1;
  let path = "";
  let pen = "M";
  for (const { t, v } of points) {
    if (v === null || v === undefined || !Number.isFinite(v)) {
      pen = "M";
      continue;
    }
    const x = ((t - t0) / span) * width;
    const y = height - (Math.min(v, yMax) / yMax) * height;
    path += `${pen}${x.toFixed(1)} ${y.toFixed(1)} `;
    pen = "L";
  }
  return path.trim();
}

/** 3d 4h, 5h 02m, 7m 09s, 42s. */
export function formatUptime(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "–";
  const s = Math.floor(seconds);
  const d = Math.floor(s / 86400);
  const h = Math.floor((s % 86400) / 3600);
  const m = Math.floor((s % 3600) / 60);
  const pad = (n) => String(n).padStart(2, "0");
  if (d) return `${d}d ${h}h`;
  if (h) return `${h}h ${pad(m)}m`;
  if (m) return `${m}m ${pad(s % 60)}s`;
  return `${s}s`;
}

export function formatBytes(n) {
  if (n === null || n === undefined || !Number.isFinite(n)) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return `${n < 10 && i ? n.toFixed(1) : Math.round(n)} ${units[i]}`;
}

/** Seconds as ms below one second: 0.0123 -> "12.3 ms", 2.5 -> "2.50 s". */
export function formatSeconds(s) {
  if (s === null || s === undefined || !Number.isFinite(s)) return "–";
  if (s < 1) return `${(s * 1000).toFixed(s < 0.01 ? 2 : 1)} ms`;
  return `${s.toFixed(2)} s`;
}

export function formatNumber(v, digits = 0) {
  if (v === null || v === undefined || !Number.isFinite(v)) return "–";
  return v.toFixed(digits);
}
