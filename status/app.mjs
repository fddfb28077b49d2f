// The status page's shell: reads /cluster.json, scrapes every node through nginx
// (/node/<name>/health, /node/<name>/metrics, /node/<gateway>/deps) every
// INTERVAL_MS, and draws the tables and plots. The arithmetic is in metrics.mjs.
import {
  History,
  addBuckets,
  formatBytes,
  formatNumber,
  formatSeconds,
  formatUptime,
  gatewayStats,
  healthOf,
  niceMax,
  parsePrometheus,
  quantile,
  sumOf,
  svgPath,
  workerStats,
} from "./metrics.mjs";

const INTERVAL_MS = 2500;
/** A node that does not answer within this is shown down. */
const TIMEOUT_MS = 2000;
const WINDOW_S = 300;
const SVG = "http://www.w3.org/2000/svg";
const PLOT = { width: 600, height: 100 };

const PLOTS = [
  { key: "connections", title: "connections (all gateways)", format: (v) => formatNumber(v) },
  { key: "chunksPerS", title: "chunks/s sent", format: (v) => formatNumber(v, 1) },
  { key: "delayP95", title: "chunk delay p95", format: formatSeconds },
  { key: "tokensPerS", title: "worker tokens/s", format: (v) => formatNumber(v, 1) },
  { key: "inFlight", title: "generations in flight", format: (v) => formatNumber(v) },
];

const state = {
  cluster: null,
  scrapes: new Map(), // node name -> {at, samples}: the previous scrape
  history: new Map(PLOTS.map((p) => [p.key, new History(WINDOW_S)])),
};

async function fetchWithin(url) {
  try {
    const response = await fetch(url, { cache: "no-store", signal: AbortSignal.timeout(TIMEOUT_MS) });
    return { status: response.status, text: await response.text() };
  } catch {
    return { status: 0, text: "" };
  }
}

function json(text) {
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}

async function scrapeNode(node, at) {
  const [health, metrics] = await Promise.all([
    fetchWithin(`/node/${node.name}/health`),
    fetchWithin(`/node/${node.name}/metrics`),
  ]);
  const scrape = metrics.status === 200 ? { at, samples: parsePrometheus(metrics.text) } : null;
  const prev = state.scrapes.get(node.name) ?? null;
  if (scrape) state.scrapes.set(node.name, scrape);
  else state.scrapes.delete(node.name);
  const statsOf = node.kind === "gateway" ? gatewayStats : workerStats;
  return {
    node,
    health: node.down ? "removed" : healthOf(health.status, json(health.text)),
    forbidden: metrics.status === 403,
    stats: scrape ? statsOf(prev, scrape) : null,
  };
}

/** The first gateway that answers its deps probe. */
async function scrapeDeps(gateways) {
  for (const gateway of gateways) {
    const reply = await fetchWithin(`/node/${gateway.name}/deps`);
    if (reply.status === 200) return { via: gateway.name, ...json(reply.text) };
    if (reply.status === 403) return { forbidden: true };
  }
  return null;
}

// --- drawing -----------------------------------------------------------------------

function cell(row, field, text, health) {
  const td = row.querySelector(`[data-f="${field}"]`);
  td.textContent = text;
  if (health) td.className = `health ${health}`;
}

function addRow(tbody, name, fields) {
  const tr = document.createElement("tr");
  tr.dataset.node = name;
  const first = document.createElement("td");
  first.textContent = name;
  tr.append(first);
  for (const field of fields) {
    const td = document.createElement("td");
    td.dataset.f = field;
    td.textContent = "…";
    tr.append(td);
  }
  tbody.append(tr);
}

function drawNode({ node, health, stats }) {
  const row = document.querySelector(`tr[data-node="${node.name}"]`);
  cell(row, "health", health, health);
  const s = stats ?? {};
  cell(row, "uptime", formatUptime(s.uptime));
  cell(row, "cpu", s.cpu === null || s.cpu === undefined ? "–" : `${(s.cpu * 100).toFixed(0)}%`);
  cell(row, "memory", formatBytes(s.memory));
  if (node.kind === "gateway") {
    cell(row, "connections", formatNumber(s.connections));
    cell(row, "streaming", formatNumber(s.streaming));
    cell(row, "chunksPerS", formatNumber(s.chunksPerS, 1));
    cell(row, "delayP50", formatSeconds(s.delayP50));
    cell(row, "delayP95", formatSeconds(s.delayP95));
  } else {
    cell(row, "inFlight", formatNumber(s.inFlight));
    cell(row, "tokensPerS", formatNumber(s.tokensPerS, 1));
  }
}

function drawDeps(deps) {
  const redis = document.querySelector('tr[data-dep="redis"]');
  const kafka = document.querySelector('tr[data-dep="kafka"]');
  if (!deps || deps.forbidden) {
    const why = deps ? "served to loopback clients only" : "no gateway answered";
    for (const row of [redis, kafka]) {
      cell(row, "health", deps ? "unknown" : "down", deps ? "disabled" : "down");
      cell(row, "details", why);
    }
    return;
  }
  const r = deps.redis;
  cell(redis, "health", r.status, r.status);
  cell(redis, "uptime", formatUptime(r.uptime_s));
  cell(
    redis,
    "details",
    r.status === "up"
      ? `${r.role}, version ${r.version}, ${r.connected_clients} clients, ` +
          `${formatBytes(r.used_memory)} used (via ${deps.via})`
      : `${r.error} (via ${deps.via})`,
  );
  const k = deps.kafka;
  cell(kafka, "health", k.status, k.status);
  const outbox =
    k.outbox_length === null ? "outbox unknown" : `${k.outbox_length} events in the outbox`;
  const dropped = k.outbox_dropped ? `, ${k.outbox_dropped} dropped` : "";
  cell(
    kafka,
    "details",
    k.status === "disabled"
      ? "KAFKA_ENABLED=false"
      : `${k.bootstrap}: broker ${k.broker_reachable ? "reachable" : "unreachable"}, ` +
          `producer ${k.producer_connected ? "connected" : "not connected"}, ${outbox}${dropped}`,
  );
}

function buildPlots() {
  const box = document.getElementById("plots");
  for (const plot of PLOTS) {
    const div = document.createElement("div");
    div.className = "plot";
    const h3 = document.createElement("h3");
    const title = document.createElement("span");
    title.textContent = plot.title;
    const now = document.createElement("span");
    now.className = "now";
    now.textContent = "–";
    h3.append(title, now);
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("viewBox", `0 0 ${PLOT.width} ${PLOT.height}`);
    svg.setAttribute("preserveAspectRatio", "none");
    for (const y of [0, PLOT.height / 2, PLOT.height]) {
      const line = document.createElementNS(SVG, "line");
      line.setAttribute("class", "grid");
      line.setAttribute("x1", "0");
      line.setAttribute("x2", String(PLOT.width));
      line.setAttribute("y1", String(y));
      line.setAttribute("y2", String(y));
      svg.append(line);
    }
    const path = document.createElementNS(SVG, "path");
    svg.append(path);
    const axis = document.createElement("div");
    axis.className = "axis";
    const left = document.createElement("span");
    left.textContent = "−5 min";
    const top = document.createElement("span");
    top.className = "max";
    axis.append(left, top);
    div.append(h3, svg, axis);
    box.append(div);
    plot.elements = { now, path, top };
  }
}

function drawPlots(at) {
  for (const plot of PLOTS) {
    const points = state.history.get(plot.key).points;
    const values = points.map((p) => p.v).filter((v) => v !== null && Number.isFinite(v));
    const yMax = niceMax(Math.max(0, ...values));
    const last = points.at(-1);
    plot.elements.now.textContent = last ? plot.format(last.v) : "–";
    plot.elements.top.textContent = `max ${plot.format(yMax)}`;
    plot.elements.path.setAttribute(
      "d",
      svgPath(points, { ...PLOT, t0: at - WINDOW_S, t1: at, yMax }),
    );
  }
}

// --- the loop ------------------------------------------------------------------------

async function tick() {
  const { gateways, workers } = state.cluster;
  const at = Date.now() / 1000;
  const [nodes, deps] = await Promise.all([
    Promise.all([...gateways, ...workers].map((n) => scrapeNode(n, at))),
    scrapeDeps(gateways.filter((g) => !g.down)),
  ]);
  nodes.forEach(drawNode);
  drawDeps(deps);
  const gw = nodes.filter((n) => n.node.kind === "gateway").map((n) => n.stats);
  const wk = nodes.filter((n) => n.node.kind === "worker").map((n) => n.stats);
  const delay = addBuckets(gw.map((s) => (s ? s.delayBuckets : [])));
  const totals = {
    connections: sumOf(gw, "connections"),
    chunksPerS: sumOf(gw, "chunksPerS"),
    delayP95: quantile(0.95, delay),
    tokensPerS: sumOf(wk, "tokensPerS"),
    inFlight: sumOf(wk, "inFlight"),
  };
  for (const plot of PLOTS) state.history.get(plot.key).push(at, totals[plot.key]);
  drawPlots(at);
  const note = document.getElementById("note");
  note.hidden = !nodes.some((n) => n.forbidden);
  note.textContent = "Node metrics are served to loopback clients only: open this page on the host.";
  document.getElementById("updated").textContent = `scraped ${new Date(at * 1000).toLocaleTimeString()}`;
}

async function loop() {
  try {
    await tick();
  } catch (error) {
    document.getElementById("updated").textContent = `scrape failed: ${error}`;
  }
  setTimeout(loop, INTERVAL_MS);
}

async function main() {
  const reply = await fetchWithin("/cluster.json");
  const cluster = json(reply.text);
  if (!cluster) {
    document.getElementById("summary").textContent = "could not read /cluster.json";
    return;
  }
  state.cluster = cluster;
  document.getElementById("summary").textContent =
    `${cluster.gateways.length} gateways, ${cluster.workers.length} workers, ` +
    `sticky ${cluster.sticky} (${cluster.mode})`;
  const gatewayFields = [
    "health", "uptime", "connections", "streaming", "chunksPerS",
    "delayP50", "delayP95", "cpu", "memory",
  ];
  const workerFields = ["health", "uptime", "inFlight", "tokensPerS", "cpu", "memory"];
  const gatewayRows = document.querySelector("#gateways tbody");
  const workerRows = document.querySelector("#workers tbody");
  for (const g of cluster.gateways) addRow(gatewayRows, g.name, gatewayFields);
  for (const w of cluster.workers) addRow(workerRows, w.name, workerFields);
  buildPlots();
  await loop();
}

main();
