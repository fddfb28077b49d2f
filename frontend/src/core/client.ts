// The protocol client as a DOM-free state machine (docs/protocol.md §8). The socket
// constructor, the clock, the timers and the randomness are injected, so tests drive
// it with a fake socket and a fake clock.

import { closeDecision } from "./backoff";
import { closeMessage, errorMessage } from "./errors";
import {
  parseServerFrame,
  userTurnId,
  type AckFrame,
  type ChatFrame,
  type ChunkFrame,
  type ClientFrame,
  type DoneFrame,
  type ErrorFrame,
  type HistoryItem,
  type WelcomeFrame,
} from "./protocol";
import { applyChunk, applyDone, createStream, isComplete, type StreamState } from "./stream";

// --- injected environment ------------------------------------------------------------

/** A handler type checked bivariantly, so the DOM's WebSocket (MessageEvent, ...) fits. */
type Handler<E> = { bivarianceHack(ev: E): void }["bivarianceHack"];

/** The part of the browser's WebSocket this client uses. */
export interface SocketLike {
  readonly readyState: number;
  onopen: Handler<unknown> | null;
  onmessage: Handler<{ data: unknown }> | null;
  onclose: Handler<{ code: number; reason: string }> | null;
  onerror: Handler<unknown> | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}
export type SocketFactory = (url: string, protocols: string[]) => SocketLike;

export interface Clock {
  now(): number;
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

const OPEN = 1;

export const PING_INTERVAL_MS = 25_000;
/** No frame at all for this long while open: the connection is dead; reconnect. */
export const SILENCE_LIMIT_MS = 60_000;
export const SLOW_FIRST_CHUNK_MS = 3_000;
export const VERY_SLOW_FIRST_CHUNK_MS = 10_000;
export const HISTORY_LIMIT = 200;
const MAX_INTERNAL_RETRIES = 3;

// --- state the UI reads ---------------------------------------------------------------

export type ConnectionState = "connecting" | "open" | "reconnecting" | "offline" | "refused";
export type MessageStatus = "pending" | "streaming" | "done" | "stopped" | "error";

/** What went wrong with (or is delaying) one message; text made by `noticeText`. */
export interface MessageNotice {
  code: string;
  /** Epoch ms of an automatic retry (busy / rate_limited with retry_after). */
  retryAt?: number | null;
  /** busy with a message_id: waiting for that answer. */
  runningAnswer?: boolean;
  serverMessage?: string | null;
}

export interface ChatMessage {
  /** Stable key: the message id, or `c:<client_msg_id>` for a prompt not yet acked. */
  key: string;
  messageId: string | null;
  role: "user" | "assistant";
  /** Raw Markdown source. */
  text: string;
  status: MessageStatus;
  lastSeq: number;
  clientMsgId: string | null;
  finishReason: string | null;
  /** Epoch ms since an answer waits for its first chunk (null once it has one). */
  waitingSince: number | null;
  notice: MessageNotice | null;
}

export interface GlobalNotice {
  id: number;
  text: string;
}

export interface ChatSnapshot {
  sessionId: string;
  userId: string | null;
  nodeId: string | null;
  connection: ConnectionState;
  /** Epoch ms of the next reconnect attempt while `reconnecting`. */
  reconnectAt: number | null;
  closeCode: number | null;
  /** Human text for the last close (offline / refused / reconnecting). */
  closeText: string | null;
  /** The server's close reason for 4401. */
  refusalReason: string | null;
  messages: readonly ChatMessage[];
  notices: readonly GlobalNotice[];
  /** An answer is running or a prompt waits for its ack: no new prompt now. */
  busy: boolean;
}

export interface ChatClientOptions {
  url: string;
  token: string;
  sessionId: string;
  userId?: string | null;
  socket: SocketFactory;
  clock: Clock;
  random: () => number;
  /** A new unique client_msg_id. */
  newId: () => string;
  /** History to start from (e.g. loaded over REST), oldest first. */
  history?: readonly HistoryItem[];
}

interface PendingChat {
  frame: ChatFrame;
  userKey: string;
  sends: number;
  retryAt: number | null;
  retryTimer: unknown;
  /** busy with message_id: sent again after that answer's done. */
  waitFor: string | null;
  cancelOnAck: boolean;
  internalRetries: number;
}

/** Text for a message's notice at time `now` (the countdowns tick). */
export function noticeText(notice: MessageNotice, now: number): string {
  switch (notice.code) {
    case "finish_error":
      return "The answer ended with an error.";
    case "length":
      return "The answer was cut off at the model's length limit.";
    case "not_sent":
      return "Not sent.";
    default: {
      const retryInS = notice.retryAt != null ? Math.max(0, (notice.retryAt - now) / 1000) : null;
      return errorMessage(notice.code, {
        retryInS,
        runningAnswer: notice.runningAnswer ?? false,
        serverMessage: notice.serverMessage ?? null,
      });
    }
  }
}

/** The text a pending answer shows instead of nothing, once its first chunk is late. */
export function waitingText(message: ChatMessage, now: number): string | null {
  if (message.role !== "assistant" || message.status !== "pending" || message.waitingSince === null) return null;
  const waited = now - message.waitingSince;
  if (waited >= VERY_SLOW_FIRST_CHUNK_MS) return "Still waiting for an AI worker…";
  if (waited >= SLOW_FIRST_CHUNK_MS) return "The model is taking long…";
  return null;
}

export class ChatClient {
  private readonly opts: ChatClientOptions;
  private messages: ChatMessage[] = [];
  private readonly streams = new Map<string, StreamState>();
  private readonly pending = new Map<string, PendingChat>();
  /** Messages resumed on the current connection (a second resume is pointless). */
  private readonly resumed = new Set<string>();
  private readonly expired = new Set<string>();
  private readonly replayRetries = new Map<string, number>();
  private readonly historyAsked = new Set<string>();

  private ws: SocketLike | null = null;
  private generation = 0;
  private attempt = 0;
  private connection: ConnectionState = "connecting";
  private reconnectAt: number | null = null;
  private reconnectTimer: unknown = null;
  private pingTimer: unknown = null;
  private lastFrameAt = 0;
  private closeCode: number | null = null;
  private closeText: string | null = null;
  private refusalReason: string | null = null;
  private nodeId: string | null = null;
  private userId: string | null;
  private notices: GlobalNotice[] = [];
  private noticeSeq = 0;
  private disposed = false;

  private snapshot: ChatSnapshot;
  private readonly listeners = new Set<() => void>();

  constructor(opts: ChatClientOptions) {
    this.opts = opts;
    this.userId = opts.userId ?? null;
    if (opts.history) this.mergeHistory(opts.history);
    this.snapshot = this.buildSnapshot();
  }

  // --- public API ------------------------------------------------------------------

  subscribe(listener: () => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  getSnapshot(): ChatSnapshot {
    return this.snapshot;
  }

  connect(): void {
    if (this.disposed) return;
    this.clearReconnect();
    this.stopPing();
    const gen = ++this.generation;
    this.resumed.clear();
    this.connection = "connecting";
    let ws: SocketLike;
    try {
      // The token travels in the subprotocol, never in the URL (logs, proxies).
      ws = this.opts.socket(this.opts.url, ["bearer", this.opts.token]);
    } catch (err) {
      this.ws = null;
      this.connection = "refused";
      this.refusalReason = err instanceof Error ? err.message : String(err);
      this.closeText = closeMessage(4401, "this token cannot be sent to the server");
      this.emit();
      return;
    }
    this.ws = ws;
    ws.onmessage = (ev) => {
      if (gen === this.generation) this.onFrame(ev.data);
    };
    ws.onclose = (ev) => {
      if (gen === this.generation) this.onClose(ev.code, ev.reason ?? "");
    };
    ws.onerror = () => {}; // a close event follows
    ws.onopen = () => {};
    this.emit();
  }

  /** Skip the backoff wait (the banner's "Retry now", or the browser came back online). */
  retryNow(): void {
    if (this.connection === "reconnecting" || this.connection === "offline") {
      this.connect();
    }
  }

  /** Send a prompt; it is (re)sent with the same client_msg_id until acked. */
  sendChat(text: string): string {
    const clientMsgId = this.opts.newId();
    const userKey = `c:${clientMsgId}`;
    this.messages.push({
      key: userKey,
      messageId: null,
      role: "user",
      text,
      status: "pending",
      lastSeq: 0,
      clientMsgId,
      finishReason: null,
      waitingSince: null,
      notice: null,
    });
    const pc: PendingChat = {
      frame: { type: "chat", text, client_msg_id: clientMsgId },
      userKey,
      sends: 0,
      retryAt: null,
      retryTimer: null,
      waitFor: null,
      cancelOnAck: false,
      internalRetries: 0,
    };
    this.pending.set(clientMsgId, pc);
    this.trySendChat(pc);
    this.emit();
    return clientMsgId;
  }

  /** Stop every running answer; a prompt not yet accepted is cancelled on its ack. */
  cancel(): void {
    for (const m of this.messages) {
      if (m.role === "assistant" && m.messageId && (m.status === "pending" || m.status === "streaming")) {
        this.send({ type: "cancel", message_id: m.messageId });
      }
    }
    for (const [id, pc] of this.pending) {
      if (pc.retryAt !== null || pc.waitFor !== null) {
        // Not accepted and not in flight: just do not send it.
        this.opts.clock.clearTimeout(pc.retryTimer);
        this.pending.delete(id);
        this.patch(pc.userKey, { status: "stopped", notice: { code: "not_sent" } });
      } else {
        pc.cancelOnAck = true;
      }
    }
    this.emit();
  }

  dismissNotice(id: number): void {
    this.notices = this.notices.filter((n) => n.id !== id);
    this.emit();
  }

  /** Merge history (REST) into the transcript; history is the truth for finished answers. */
  applyHistory(items: readonly HistoryItem[]): void {
    this.mergeHistory(items);
    this.emit();
  }

  dispose(): void {
    this.disposed = true;
    this.generation++;
    this.clearReconnect();
    this.stopPing();
    for (const pc of this.pending.values()) this.opts.clock.clearTimeout(pc.retryTimer);
    const ws = this.ws;
    this.ws = null;
    if (ws) {
      try {
        ws.close(1000, "bye");
      } catch {
        /* already closed */
      }
    }
    this.listeners.clear();
  }

  // --- frames ----------------------------------------------------------------------

  private onFrame(data: unknown): void {
    this.lastFrameAt = this.opts.clock.now();
    const frame = parseServerFrame(data);
    if (!frame) return;
    switch (frame.type) {
      case "welcome":
        this.onWelcome(frame);
        break;
      case "ack":
        this.onAck(frame);
        break;
      case "chunk":
        this.onChunk(frame);
        break;
      case "done":
        this.onDone(frame);
        break;
      case "history":
        this.onHistory(frame.messages);
        break;
      case "error":
        this.onError(frame);
        break;
      case "pong":
        return;
    }
    this.emit();
  }

  private onWelcome(f: WelcomeFrame): void {
    this.connection = "open";
    this.attempt = 0;
    this.reconnectAt = null;
    this.closeCode = null;
    this.closeText = null;
    this.nodeId = f.node_id ?? null;
    this.userId = f.user_id ?? this.userId;
    this.startPing();
    const listed = new Set<string>();
    for (const s of f.streams ?? []) {
      listed.add(s.message_id);
      const local = this.streams.get(s.message_id);
      if (local && isComplete(local)) continue;
      // A finished answer we already show in full (from history) needs nothing.
      if (!local && this.findById(s.message_id)) continue;
      this.ensureAnswer(s.message_id);
      this.resume(s.message_id);
    }
    // Answers we were reading that the server no longer lists: ask; it will replay,
    // or say stream_expired / not_found.
    for (const stream of this.streams.values()) {
      if (!isComplete(stream) && !listed.has(stream.messageId)) this.resume(stream.messageId);
    }
    for (const pc of this.pending.values()) {
      if (pc.retryAt === null && pc.waitFor === null) this.trySendChat(pc);
    }
  }

  private onAck(f: AckFrame): void {
    const pc = f.client_msg_id ? this.pending.get(f.client_msg_id) : undefined;
    let afterKey: string | null = null;
    if (pc) {
      this.pending.delete(f.client_msg_id as string);
      this.opts.clock.clearTimeout(pc.retryTimer);
      const turnId = userTurnId(f.message_id);
      const user = this.findByKey(pc.userKey);
      if (user) {
        // Re-keyed by the server's id, so history later matches it.
        this.replace(pc.userKey, { ...user, key: turnId ?? user.key, messageId: turnId, status: "done", notice: null });
        afterKey = turnId ?? user.key;
      }
    }
    const answer = this.ensureAnswer(f.message_id, afterKey);
    if (pc?.cancelOnAck) this.send({ type: "cancel", message_id: f.message_id });
    // A chat sent more than once may have been accepted on an earlier connection: the
    // ack then names that answer, which is not pushed to us again. Resume it (if we
    // already follow it, the server ignores the resume).
    if (pc && pc.sends > 1 && !isComplete(answer)) this.resume(f.message_id);
  }

  private onChunk(f: ChunkFrame): void {
    const stream = this.ensureAnswer(f.message_id);
    const appended = applyChunk(stream, f.seq, f.delta);
    if (appended) {
      const m = this.findById(f.message_id);
      if (m) {
        this.replace(m.key, {
          ...m,
          text: m.text + appended,
          lastSeq: stream.lastSeq,
          status: m.status === "pending" ? "streaming" : m.status,
          waitingSince: null,
        });
      }
    }
    if (stream.doneLastSeq !== null && isComplete(stream)) this.finish(f.message_id);
  }

  private onDone(f: DoneFrame): void {
    const stream = this.ensureAnswer(f.message_id);
    if (applyDone(stream, f.last_seq, String(f.finish_reason))) {
      this.finish(f.message_id);
    } else {
      // Done with chunks still missing (should not happen): fetch the rest.
      this.resumed.delete(f.message_id);
      this.resume(f.message_id);
    }
  }

  private onHistory(items: readonly HistoryItem[]): void {
    this.mergeHistory(items);
    // An expired stream whose text is not in history either cannot be recovered.
    for (const id of this.expired) {
      const m = this.findById(id);
      if (m && (m.status === "pending" || m.status === "streaming")) {
        this.replace(m.key, { ...m, status: "error", waitingSince: null });
        const stream = this.streams.get(id);
        if (stream) stream.settled = true;
      }
    }
    this.expired.clear();
  }

  private onError(f: ErrorFrame): void {
    const code = f.code;
    const pc = f.client_msg_id ? this.pending.get(f.client_msg_id) : undefined;
    if (pc) {
      this.onChatRefused(pc, f);
      return;
    }
    const m = f.message_id ? this.findById(f.message_id) : undefined;
    if (!f.message_id || !m) {
      this.pushNotice(errorMessage(code, { serverMessage: f.message ?? null }));
      return;
    }
    const id = f.message_id;
    const stream = this.streams.get(id);
    switch (code) {
      case "stream_expired":
        this.expired.add(id);
        this.replace(m.key, { ...m, notice: { code } });
        this.send({ type: "history", limit: HISTORY_LIMIT });
        return;
      case "not_found":
        if (stream) stream.settled = true;
        this.replace(m.key, {
          ...m,
          status: m.status === "pending" || m.status === "streaming" ? "error" : m.status,
          waitingSince: null,
          notice: { code },
        });
        return;
      case "internal": {
        // "replay failed; resume again": the connection stopped following it.
        const tries = (this.replayRetries.get(id) ?? 0) + 1;
        this.replayRetries.set(id, tries);
        this.resumed.delete(id);
        if (tries <= MAX_INTERNAL_RETRIES && stream && !isComplete(stream)) {
          this.resume(id);
        } else {
          this.replace(m.key, { ...m, notice: { code } });
        }
        return;
      }
      default:
        // upstream_unavailable, state_lost, ...: a done with finish_reason error follows.
        this.replace(m.key, { ...m, notice: { code, serverMessage: f.message ?? null } });
    }
  }

  private onChatRefused(pc: PendingChat, f: ErrorFrame): void {
    const code = f.code;
    const clientMsgId = pc.frame.client_msg_id;
    if ((code === "busy" || code === "rate_limited") && typeof f.retry_after === "number") {
      const delay = Math.max(0, f.retry_after * 1000);
      pc.retryAt = this.opts.clock.now() + delay;
      this.patch(pc.userKey, { notice: { code, retryAt: pc.retryAt } });
      this.opts.clock.clearTimeout(pc.retryTimer);
      pc.retryTimer = this.opts.clock.setTimeout(() => {
        pc.retryAt = null;
        pc.retryTimer = null;
        if (this.pending.get(clientMsgId) !== pc) return;
        this.trySendChat(pc);
        this.emit();
      }, delay);
      return;
    }
    if (code === "busy" && f.message_id) {
      const running = f.message_id;
      pc.waitFor = running;
      this.patch(pc.userKey, { notice: { code, runningAnswer: true } });
      const stream = this.ensureAnswer(running);
      if (isComplete(stream)) {
        pc.waitFor = null;
        this.trySendChat(pc);
      } else {
        this.resume(running);
      }
      return;
    }
    if (code === "internal" && pc.internalRetries < MAX_INTERNAL_RETRIES) {
      pc.internalRetries += 1;
      const delay = 1000 * 2 ** (pc.internalRetries - 1);
      pc.retryAt = this.opts.clock.now() + delay;
      this.patch(pc.userKey, { notice: { code } });
      pc.retryTimer = this.opts.clock.setTimeout(() => {
        pc.retryAt = null;
        if (this.pending.get(clientMsgId) !== pc) return;
        this.trySendChat(pc);
        this.emit();
      }, delay);
      return;
    }
    this.pending.delete(clientMsgId);
    this.patch(pc.userKey, { status: "error", notice: { code, serverMessage: f.message ?? null } });
  }

  private onClose(code: number, reason: string): void {
    this.ws = null;
    this.stopPing();
    this.resumed.clear();
    this.closeCode = code;
    const decision = closeDecision(code, this.attempt, this.opts.random);
    if (decision.kind === "refused") {
      this.connection = "refused";
      this.refusalReason = reason || null;
      this.closeText = closeMessage(code, reason);
    } else if (decision.kind === "never") {
      this.connection = "offline";
      this.closeText = closeMessage(code, reason);
    } else {
      this.scheduleReconnect(decision.delayMs, closeMessage(code, reason));
    }
    this.emit();
  }

  private scheduleReconnect(delayMs: number, text: string): void {
    this.clearReconnect();
    this.attempt += 1;
    this.connection = "reconnecting";
    this.closeText = text;
    this.reconnectAt = this.opts.clock.now() + delayMs;
    this.reconnectTimer = this.opts.clock.setTimeout(() => {
      this.reconnectTimer = null;
      this.connect();
    }, delayMs);
  }

  // --- helpers -------------------------------------------------------------------------

  private send(frame: ClientFrame): boolean {
    const ws = this.ws;
    if (!ws || ws.readyState !== OPEN || this.connection !== "open") return false;
    ws.send(JSON.stringify(frame));
    return true;
  }

  private trySendChat(pc: PendingChat): void {
    if (this.send(pc.frame)) pc.sends += 1;
  }

  private resume(messageId: string): void {
    if (this.resumed.has(messageId)) return;
    const stream = this.streams.get(messageId);
    if (this.send({ type: "resume", message_id: messageId, after_seq: stream ? stream.lastSeq : 0 })) {
      this.resumed.add(messageId);
    }
  }

  /** The answer's stream, creating its message (after `afterKey`, or after its prompt). */
  private ensureAnswer(messageId: string, afterKey: string | null = null): StreamState {
    let stream = this.streams.get(messageId);
    if (!stream) {
      stream = createStream(messageId);
      this.streams.set(messageId, stream);
    }
    if (!this.findById(messageId)) {
      const message: ChatMessage = {
        key: messageId,
        messageId,
        role: "assistant",
        text: "",
        status: "pending",
        lastSeq: 0,
        clientMsgId: null,
        finishReason: null,
        waitingSince: this.opts.clock.now(),
        notice: null,
      };
      const turn = userTurnId(messageId);
      const anchor = afterKey ?? (turn && this.findById(turn) ? turn : null);
      const at = anchor ? this.messages.findIndex((m) => m.key === anchor) : -1;
      if (at >= 0) this.messages.splice(at + 1, 0, message);
      else this.messages.push(message);
      // Pushed an answer to a prompt we never saw (another tab): fetch the prompt.
      if (!afterKey && !(turn && this.findById(turn)) && !this.historyAsked.has(messageId)) {
        this.historyAsked.add(messageId);
        this.send({ type: "history", limit: HISTORY_LIMIT });
      }
    }
    return stream;
  }

  private finish(messageId: string): void {
    const stream = this.streams.get(messageId);
    const m = this.findById(messageId);
    if (!stream || !m) return;
    const reason = stream.finishReason;
    const status: MessageStatus = reason === "cancelled" ? "stopped" : reason === "error" ? "error" : "done";
    let notice = m.notice;
    if (reason === "error" && !notice) notice = { code: "finish_error" };
    if (reason === "length") notice = { code: "length" };
    this.replace(m.key, { ...m, status, finishReason: reason, waitingSince: null, notice });
    // Prompts that waited for this answer (busy with message_id) go now.
    for (const pc of this.pending.values()) {
      if (pc.waitFor === messageId) {
        pc.waitFor = null;
        this.patch(pc.userKey, { notice: null });
        this.trySendChat(pc);
      }
    }
  }

  private mergeHistory(items: readonly HistoryItem[]): void {
    const merged: ChatMessage[] = [];
    const seen = new Set<string>();
    for (const item of items) {
      if (seen.has(item.message_id)) continue;
      seen.add(item.message_id);
      const local = this.findById(item.message_id);
      if (item.role === "assistant") {
        // In history means finished: its text there is the truth.
        let stream = this.streams.get(item.message_id);
        if (!stream) {
          stream = createStream(item.message_id);
          this.streams.set(item.message_id, stream);
        }
        const wasComplete = isComplete(stream);
        stream.settled = true;
        if (local) {
          const keepStatus = wasComplete && local.status !== "pending" && local.status !== "streaming";
          const notice = local.notice?.code === "stream_expired" ? null : local.notice;
          merged.push({
            ...local,
            text: item.text,
            status: keepStatus ? local.status : "done",
            waitingSince: null,
            notice,
          });
          this.expired.delete(item.message_id);
        } else {
          merged.push(historyMessage(item));
        }
      } else {
        merged.push(local ?? historyMessage(item));
      }
    }
    // What only this tab has: prompts not acked yet, answers still running, failures.
    for (const m of this.messages) {
      if (m.messageId && seen.has(m.messageId)) continue;
      const keep = m.messageId === null || m.status === "pending" || m.status === "streaming" || m.status === "error";
      if (keep) merged.push(m);
    }
    this.messages = merged;
  }

  private findById(messageId: string): ChatMessage | undefined {
    return this.messages.find((m) => m.messageId === messageId);
  }

  private findByKey(key: string): ChatMessage | undefined {
    return this.messages.find((m) => m.key === key);
  }

  /** Messages are replaced, never mutated, so the UI can compare them by identity. */
  private replace(key: string, next: ChatMessage): void {
    const at = this.messages.findIndex((m) => m.key === key);
    if (at >= 0) this.messages[at] = next;
  }

  private patch(key: string, changes: Partial<ChatMessage>): void {
    const m = this.findByKey(key);
    if (m) this.replace(key, { ...m, ...changes });
  }

  private pushNotice(text: string): void {
    this.notices = [...this.notices, { id: ++this.noticeSeq, text }].slice(-5);
  }

  private startPing(): void {
    this.stopPing();
    this.lastFrameAt = this.opts.clock.now();
    const tick = (): void => {
      if (this.connection !== "open") return;
      if (this.opts.clock.now() - this.lastFrameAt > SILENCE_LIMIT_MS) {
        this.dropDeadConnection();
        return;
      }
      this.send({ type: "ping", ts: this.opts.clock.now() });
      this.pingTimer = this.opts.clock.setTimeout(tick, PING_INTERVAL_MS);
    };
    this.pingTimer = this.opts.clock.setTimeout(tick, PING_INTERVAL_MS);
  }

  private stopPing(): void {
    if (this.pingTimer !== null) this.opts.clock.clearTimeout(this.pingTimer);
    this.pingTimer = null;
  }

  /** The socket went silent: give up on it without waiting for a close handshake. */
  private dropDeadConnection(): void {
    const ws = this.ws;
    this.generation++; // its late close event must not schedule a second reconnect
    this.ws = null;
    try {
      ws?.close(4000, "keepalive timeout");
    } catch {
      /* ignore */
    }
    this.onClose(1006, "");
  }

  private clearReconnect(): void {
    if (this.reconnectTimer !== null) this.opts.clock.clearTimeout(this.reconnectTimer);
    this.reconnectTimer = null;
    this.reconnectAt = null;
  }

  private buildSnapshot(): ChatSnapshot {
    const busy =
      this.pending.size > 0 || this.messages.some((m) => m.role === "assistant" && (m.status === "pending" || m.status === "streaming"));
    return {
      sessionId: this.opts.sessionId,
      userId: this.userId,
      nodeId: this.nodeId,
      connection: this.connection,
      reconnectAt: this.reconnectAt,
      closeCode: this.closeCode,
      closeText: this.closeText,
      refusalReason: this.refusalReason,
      messages: this.messages.slice(),
      notices: this.notices,
      busy,
    };
  }

  private emit(): void {
    this.snapshot = this.buildSnapshot();
    for (const l of this.listeners) l();
  }
}

function historyMessage(item: HistoryItem): ChatMessage {
  return {
    key: item.message_id,
    messageId: item.message_id,
    role: item.role === "assistant" ? "assistant" : "user",
    text: item.text,
    status: "done",
    lastSeq: 0,
    clientMsgId: null,
    finishReason: null,
    waitingSince: null,
    notice: null,
  };
}
