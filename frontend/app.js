// Browser shell of the chat client: the WebSocket, the DOM and localStorage.
// Protocol decisions live in chat-core.js and transcript.js.

import {
  applyChunk,
  applyDone,
  chatProtocols,
  chatUrl,
  createStream,
  describeClose,
  isComplete,
  PING_INTERVAL_MS,
  randomId,
  reconnectDelay,
  resumePoint,
  resumeRequests,
} from "./chat-core.js";
import { assistantEntry, insertAfter, mergeHistory, noticeEntry, userEntry } from "./transcript.js";

const $ = (id) => document.getElementById(id);
const ui = {
  status: $("status"),
  log: $("log"),
  form: $("composer"),
  input: $("prompt"),
  stop: $("stop"),
  sessionId: $("session-id"),
  userId: $("user-id"),
  token: $("token"),
  apply: $("apply"),
  newSession: $("new-session"),
};

const stored = (key, fallback) => localStorage.getItem(key) ?? fallback;
const config = {
  sessionId: stored("chat.sessionId", null) ?? randomId(),
  userId: stored("chat.userId", "dev"),
  token: stored("chat.token", "dev-token"),
};
localStorage.setItem("chat.sessionId", config.sessionId);

// Conversation state; kept across reconnects, reset by "New session".
let entries = [];
const streams = new Map(); // message_id -> stream (chat-core)
const unacked = new Map(); // client_msg_id -> text; re-sent after a reconnect

// Connection state.
let ws = null;
let generation = 0; // bumps on every connect so stale socket callbacks are ignored
let attempt = 0;
let welcomed = false;
let pingTimer = null;
let retryTimer = null;
let resentChats = new Set(); // client_msg_ids re-sent on this connection
let resumed = new Set(); // message_ids we asked to resume on this connection

// --- socket ----------------------------------------------------------------------

function connect() {
  clearTimeout(retryTimer);
  retryTimer = null;
  const gen = ++generation;
  welcomed = false;
  setStatus("connecting", "Connecting...");
  let protocols;
  try {
    protocols = chatProtocols(config.token); // the token goes here, never in the URL
  } catch (err) {
    ws = null;
    setStatus("failed", `Not connected: ${err.message}.`);
    return;
  }
  ws = new WebSocket(chatUrl(location, config), protocols);
  ws.onmessage = (ev) => gen === generation && onFrame(JSON.parse(ev.data));
  ws.onclose = (ev) => gen === generation && onClose(ev.code);
}

function send(frame) {
  if (ws?.readyState !== WebSocket.OPEN) return false;
  ws.send(JSON.stringify(frame));
  return true;
}

function reconnectNow() {
  generation++; // the old socket's close must not schedule a second reconnect
  ws?.close(1000);
  stopPing();
  attempt = 0;
  connect();
}

function onClose(code) {
  welcomed = false;
  stopPing();
  const delay = reconnectDelay(code, attempt);
  if (delay === null) {
    setStatus("failed", `Disconnected: ${describeClose(code)}.`);
    return;
  }
  attempt++;
  setStatus("connecting", `${describeClose(code)}; reconnecting in ${(delay / 1000).toFixed(1)} s`);
  retryTimer = setTimeout(connect, delay);
}

function startPing() {
  stopPing();
  pingTimer = setInterval(() => send({ type: "ping", ts: Date.now() }), PING_INTERVAL_MS);
}

function stopPing() {
  clearInterval(pingTimer);
  pingTimer = null;
}

// --- server frames ------------------------------------------------------------------

const handlers = {
  welcome(f) {
    welcomed = true;
    attempt = 0;
    resentChats = new Set();
    resumed = new Set();
    startPing();
    setStatus("connected", `Connected to ${f.node_id} as ${f.user_id}`);
    // Answers already under way are only sent if we ask; give them an entry now
    // so that `history` (which may arrive first) does not settle them.
    for (const info of f.streams ?? []) {
      if (info.status !== "done" && !streams.has(info.message_id)) ensureAnswer(info.message_id);
    }
    send({ type: "history", limit: 50 });
    for (const frame of resumeRequests(streams, f.streams)) {
      resumed.add(frame.message_id);
      send(frame);
    }
    for (const [clientMsgId, text] of unacked) {
      resentChats.add(clientMsgId);
      send({ type: "chat", text, client_msg_id: clientMsgId });
    }
  },

  ack(f) {
    unacked.delete(f.client_msg_id);
    const prompt = entries.find((e) => e.clientMsgId === f.client_msg_id);
    if (prompt) prompt.status = "sent";
    const stream = ensureAnswer(f.message_id, prompt?.key);
    // A retried chat whose answer was already running is not pushed to us again.
    if (resentChats.has(f.client_msg_id) && !resumed.has(f.message_id) && !isComplete(stream)) {
      resume(stream);
    }
  },

  chunk(f) {
    if (applyChunk(ensureAnswer(f.message_id), f.seq, f.delta)) render();
  },

  done(f) {
    const stream = ensureAnswer(f.message_id);
    if (stream.settled) return;
    // Done with chunks still missing (should not happen): fetch the rest.
    if (!applyDone(stream, f.last_seq, f.finish_reason)) resume(stream);
    render();
  },

  history(f) {
    entries = mergeHistory(entries, f.messages ?? [], streams);
    render();
  },

  error(f) {
    const text = errorText(f);
    const prompt = f.client_msg_id && entries.find((e) => e.clientMsgId === f.client_msg_id);
    const answer = f.message_id && entries.find((e) => e.key === f.message_id);
    if (prompt) {
      unacked.delete(f.client_msg_id); // the server refused it; do not retry
      prompt.status = "error";
      prompt.error = text;
    } else if (answer) {
      answer.error = text;
      if (f.code === "stream_expired" || f.code === "not_found") {
        // The stream cannot be resumed any more; its final text may be in history.
        answer.stream.settled = true;
        send({ type: "history", limit: 50 });
      }
    } else {
      entries.push(noticeEntry(randomId(4), text));
    }
    render();
  },

  pong() {},
};

function onFrame(frame) {
  handlers[frame.type]?.(frame); // unknown types are ignored, as the protocol asks
}

function ensureAnswer(messageId, afterKey) {
  let stream = streams.get(messageId);
  if (!stream) {
    stream = createStream(messageId);
    streams.set(messageId, stream);
  }
  if (!entries.some((e) => e.key === messageId)) {
    insertAfter(entries, afterKey, assistantEntry(stream));
    render();
  }
  return stream;
}

function resume(stream) {
  resumed.add(stream.messageId);
  send({ type: "resume", message_id: stream.messageId, after_seq: resumePoint(stream) });
}

function errorText(f) {
  const retry = f.retry_after ? ` (try again in ${Math.ceil(f.retry_after)} s)` : "";
  return `${f.code}: ${f.message}${retry}`;
}

// --- user actions ---------------------------------------------------------------------

function submitPrompt(event) {
  event.preventDefault();
  const text = ui.input.value.trim();
  if (!text) return;
  const clientMsgId = randomId(8);
  unacked.set(clientMsgId, text);
  entries.push(userEntry(clientMsgId, text));
  ui.input.value = "";
  // Not connected yet: the welcome handler sends everything unacked.
  if (welcomed) send({ type: "chat", text, client_msg_id: clientMsgId });
  render();
}

function cancelStreaming() {
  for (const stream of streams.values()) {
    if (!isComplete(stream)) send({ type: "cancel", message_id: stream.messageId });
  }
}

function applySettings() {
  config.userId = ui.userId.value.trim();
  config.token = ui.token.value.trim() || "dev-token";
  localStorage.setItem("chat.userId", config.userId);
  localStorage.setItem("chat.token", config.token);
  reconnectNow();
}

function startNewSession() {
  config.sessionId = randomId();
  localStorage.setItem("chat.sessionId", config.sessionId);
  ui.sessionId.value = config.sessionId;
  entries = [];
  streams.clear();
  unacked.clear();
  render();
  reconnectNow();
}

// --- rendering ------------------------------------------------------------------------------

const elements = new Map(); // entry key -> element
let renderQueued = false;

// Chunks arrive faster than frames are painted; render at most once per frame.
function render() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => {
    renderQueued = false;
    paint();
  });
}

function paint() {
  const log = ui.log;
  const stickToBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 48;
  const live = new Set();
  entries.forEach((entry, index) => {
    live.add(entry.key);
    let el = elements.get(entry.key);
    if (!el) {
      el = createEntryElement(entry);
      elements.set(entry.key, el);
    }
    updateEntryElement(el, entry);
    if (log.children[index] !== el) log.insertBefore(el, log.children[index] ?? null);
  });
  for (const [key, el] of elements) {
    if (!live.has(key)) {
      el.remove();
      elements.delete(key);
    }
  }
  if (stickToBottom) log.scrollTop = log.scrollHeight;
  const streaming = [...streams.values()].some((s) => !isComplete(s));
  ui.stop.hidden = !streaming;
}

function createEntryElement(entry) {
  const el = document.createElement("article");
  el.className = `msg msg-${entry.role}`;
  el.append(document.createElement("div"), document.createElement("div"));
  el.firstChild.className = "body";
  el.lastChild.className = "meta";
  return el;
}

function updateEntryElement(el, entry) {
  const [body, meta] = el.children;
  const text = entry.role === "assistant" ? entry.stream.text : entry.text;
  if (body.textContent !== text) body.textContent = text;
  const streaming = entry.role === "assistant" && !isComplete(entry.stream) && !entry.error;
  el.classList.toggle("streaming", streaming);
  el.classList.toggle("failed", Boolean(entry.error));
  const note = metaText(entry);
  if (meta.textContent !== note) meta.textContent = note;
}

function metaText(entry) {
  if (entry.error) return entry.error;
  if (entry.role === "user") return entry.status === "pending" ? "sending..." : "";
  if (entry.role !== "assistant") return "";
  const reason = entry.stream.finishReason;
  if (reason && reason !== "stop" && isComplete(entry.stream)) return `(${reason})`;
  return "";
}

function setStatus(state, text) {
  ui.status.dataset.state = state;
  ui.status.textContent = text;
}

// --- start ----------------------------------------------------------------------------------------

ui.sessionId.value = config.sessionId;
ui.userId.value = config.userId;
ui.token.value = config.token;
ui.form.addEventListener("submit", submitPrompt);
ui.input.addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) {
    ev.preventDefault(); // send instead of inserting a newline
    ui.form.requestSubmit();
  }
});
ui.stop.addEventListener("click", cancelStreaming);
ui.apply.addEventListener("click", applySettings);
ui.newSession.addEventListener("click", startNewSession);
// Back online: waiting out a long backoff helps nobody.
window.addEventListener("online", () => retryTimer && connect());

render();
connect();
