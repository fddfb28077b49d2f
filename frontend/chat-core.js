// Protocol logic of the chat client (shared/protocol.md), kept free of the DOM
// and of sockets so that `node --test frontend/` can check it.

export const BACKOFF_BASE_MS = 250;
export const BACKOFF_CAP_MS = 10_000;
export const PING_INTERVAL_MS = 20_000;

// 1009: our frame was too large, 4401: bad token, 4403: someone else's session.
// Reconnecting would only repeat the failure.
const NO_RETRY_CLOSE_CODES = new Set([1009, 4401, 4403]);
const RESTART_CLOSE_CODE = 1012;

// Out-of-order chunks kept while waiting for a gap to fill; beyond this we rely
// on `resume` from our contiguous position instead of growing memory.
const MAX_BUFFERED_CHUNKS = 1000;

// --- reconnect backoff --------------------------------------------------------

/** Upper bound of the delay before reconnect attempt `attempt` (0-based). */
export function backoffCeiling(attempt) {
  return Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** Math.max(0, attempt));
}

/** "Full jitter": uniform in [0, ceiling), so a restarted node's clients spread out. */
export function backoffDelay(attempt, random = Math.random) {
  return Math.floor(random() * backoffCeiling(attempt));
}

/** Milliseconds to wait before reconnecting after `closeCode`, or null for never. */
export function reconnectDelay(closeCode, attempt, random = Math.random) {
  if (NO_RETRY_CLOSE_CODES.has(closeCode)) return null;
  if (closeCode === RESTART_CLOSE_CODE) return 0; // the node is draining; others are up
  return backoffDelay(attempt, random);
}

const CLOSE_REASONS = {
  1000: "closed",
  1001: "server going away",
  1006: "connection lost",
  1009: "message too large",
  1012: "server restarting",
  1013: "server overloaded",
  4008: "fell behind the stream",
  4401: "token rejected - set a valid token",
  4403: "this session belongs to another user",
};

export function describeClose(code) {
  return CLOSE_REASONS[code] ?? `closed (${code})`;
}

// --- per-message stream bookkeeping ----------------------------------------------

/** State of one answer: its text is exactly the deltas of seq 1..lastSeq. */
export function createStream(messageId) {
  return {
    messageId,
    lastSeq: 0, // highest seq applied; everything below it is applied too
    text: "",
    buffered: new Map(), // seq -> delta, received ahead of a gap
    doneLastSeq: null, // from `done`
    finishReason: null,
    settled: false, // text came from `history`: final, chunks no longer apply
  };
}

/** A finished message known only from `history`. */
export function createSettledStream(messageId, text) {
  const stream = createStream(messageId);
  stream.text = text;
  stream.settled = true;
  return stream;
}

/**
 * Apply one chunk; returns the text appended to the stream ("" when the chunk is
 * a duplicate or waits for an earlier one). Resume and live delivery may overlap
 * after a reconnect, so duplicates are normal, not an error.
 */
export function applyChunk(stream, seq, delta) {
  if (stream.settled || !Number.isInteger(seq) || seq <= stream.lastSeq) return "";
  if (seq > stream.lastSeq + 1) {
    if (stream.buffered.size < MAX_BUFFERED_CHUNKS) stream.buffered.set(seq, delta);
    return "";
  }
  let appended = delta;
  stream.lastSeq = seq;
  while (stream.buffered.has(stream.lastSeq + 1)) {
    stream.lastSeq += 1;
    appended += stream.buffered.get(stream.lastSeq);
    stream.buffered.delete(stream.lastSeq);
  }
  stream.text += appended;
  return appended;
}

/** Record `done`; returns whether every chunk up to its last_seq is applied. */
export function applyDone(stream, lastSeq, finishReason) {
  stream.doneLastSeq = lastSeq;
  stream.finishReason = finishReason;
  return isComplete(stream);
}

export function isComplete(stream) {
  return stream.settled || (stream.doneLastSeq !== null && stream.lastSeq >= stream.doneLastSeq);
}

/** The `after_seq` to resume from: the contiguous prefix we hold, not buffered chunks. */
export function resumePoint(stream) {
  return stream.lastSeq;
}

/**
 * The `resume` frames to send after a `welcome`: every stream we hold that is not
 * complete, and every stream the server lists as unfinished that we do not hold
 * complete. `streams` is a Map message_id -> stream; `welcomeStreams` is the
 * welcome's `streams` list.
 */
export function resumeRequests(streams, welcomeStreams = []) {
  const requests = new Map();
  for (const stream of streams.values()) {
    if (!isComplete(stream)) requests.set(stream.messageId, resumePoint(stream));
  }
  for (const info of welcomeStreams) {
    if (info.status === "done" || requests.has(info.message_id)) continue;
    const local = streams.get(info.message_id);
    if (local && isComplete(local)) continue;
    requests.set(info.message_id, local ? resumePoint(local) : 0);
  }
  return [...requests].map(([message_id, after_seq]) => ({ type: "resume", message_id, after_seq }));
}

// --- connection parameters ---------------------------------------------------------

/** Random id of [0-9a-f]; crypto.randomUUID needs a secure context, this does not. */
export function randomId(bytes = 12, cryptoImpl = globalThis.crypto) {
  const buf = cryptoImpl.getRandomValues(new Uint8Array(bytes));
  return Array.from(buf, (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * The gateway URL: nginx on :8080 of the host that served this page. It never holds
 * the token (URLs end up in access logs and proxies); chatProtocols carries it.
 */
export function chatUrl(loc, { sessionId, userId }) {
  const scheme = loc.protocol === "https:" ? "wss" : "ws";
  const params = new URLSearchParams({ session_id: sessionId });
  if (userId) params.set("user_id", userId);
  return `${scheme}://${loc.hostname}:8080/ws/chat?${params}`;
}

// A subprotocol is an RFC 7230 token: visible ASCII except separators. JWTs
// (base64url and dots) and `dev-token` are.
const SUBPROTOCOL_TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;

/**
 * The WebSocket subprotocols that carry the token: `new WebSocket(url, ["bearer",
 * token])` sends `Sec-WebSocket-Protocol: bearer, <token>`, which the gateway reads
 * (and answers with `bearer`). Throws for a token that cannot travel this way (the
 * browser would throw a SyntaxError instead).
 */
export function chatProtocols(token) {
  if (typeof token !== "string" || !SUBPROTOCOL_TOKEN.test(token) || token === "bearer") {
    throw new Error("the token has characters a WebSocket subprotocol cannot carry");
  }
  return ["bearer", token];
}
