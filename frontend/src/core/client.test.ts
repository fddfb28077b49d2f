import { describe, expect, it } from "vitest";

import { BACKOFF_BASE_MS, BACKOFF_CAP_MS, backoffCeiling, backoffDelay, closeDecision } from "./backoff";
import { ChatClient, noticeText, waitingText, type Clock, type SocketLike } from "./client";
import { applyChunk, applyDone, createStream, isComplete } from "./stream";

// --- fakes ------------------------------------------------------------------------

class FakeSocket implements SocketLike {
  readyState = 0;
  onopen: ((ev: unknown) => void) | null = null;
  onmessage: ((ev: { data: unknown }) => void) | null = null;
  onclose: ((ev: { code: number; reason: string }) => void) | null = null;
  onerror: ((ev: unknown) => void) | null = null;
  sent: Record<string, unknown>[] = [];
  closedWith: number | null = null;

  constructor(
    readonly url: string,
    readonly protocols: string[],
  ) {}

  send(data: string): void {
    this.sent.push(JSON.parse(data) as Record<string, unknown>);
  }
  close(code = 1000): void {
    this.closedWith = code;
  }
  // server side
  open(): void {
    this.readyState = 1;
    this.onopen?.({});
  }
  frame(f: Record<string, unknown>): void {
    this.onmessage?.({ data: JSON.stringify(f) });
  }
  welcome(streams: unknown[] = [], nodeId = "gateway-1"): void {
    this.open();
    this.frame({ type: "welcome", protocol: 1, session_id: "s1", user_id: "alice", node_id: nodeId, streams });
  }
  serverClose(code: number, reason = ""): void {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }
  ofType(type: string): Record<string, unknown>[] {
    return this.sent.filter((f) => f.type === type);
  }
}

class FakeClock implements Clock {
  t = 1_000_000;
  private timers = new Map<number, { at: number; fn: () => void }>();
  private seq = 0;
  now(): number {
    return this.t;
  }
  setTimeout(fn: () => void, ms: number): unknown {
    const id = ++this.seq;
    this.timers.set(id, { at: this.t + ms, fn });
    return id;
  }
  clearTimeout(h: unknown): void {
    this.timers.delete(h as number);
  }
  advance(ms: number): void {
    const end = this.t + ms;
    for (;;) {
      let next: [number, { at: number; fn: () => void }] | null = null;
      for (const e of this.timers) if (e[1].at <= end && (!next || e[1].at < next[1].at)) next = e;
      if (!next) break;
      this.timers.delete(next[0]);
      this.t = next[1].at;
      next[1].fn();
    }
    this.t = end;
  }
}

function setup(opts: { random?: number; history?: { message_id: string; role: "user" | "assistant"; text: string }[] } = {}) {
  const sockets: FakeSocket[] = [];
  const clock = new FakeClock();
  let ids = 0;
  const client = new ChatClient({
    url: "ws://h/ws/chat?session_id=s1",
    token: "tok",
    sessionId: "s1",
    socket: (url, protocols) => {
      const s = new FakeSocket(url, protocols);
      sockets.push(s);
      return s;
    },
    clock,
    random: () => opts.random ?? 0.5,
    newId: () => `c${++ids}`,
    history: opts.history ?? [],
  });
  client.connect();
  const last = (): FakeSocket => sockets[sockets.length - 1]!;
  const snap = () => client.getSnapshot();
  const msg = (id: string) => snap().messages.find((m) => m.messageId === id);
  return { client, clock, sockets, last, snap, msg };
}

// --- stream bookkeeping ---------------------------------------------------------------

describe("stream", () => {
  it("drops duplicate chunks and fills gaps in order", () => {
    const s = createStream("m1");
    expect(applyChunk(s, 1, "a")).toBe("a");
    expect(applyChunk(s, 1, "a")).toBe("");
    expect(applyChunk(s, 3, "c")).toBe("");
    expect(s.lastSeq).toBe(1);
    expect(applyChunk(s, 2, "b")).toBe("bc");
    expect(s.lastSeq).toBe(3);
    expect(applyDone(s, 3, "stop")).toBe(true);
    expect(isComplete(s)).toBe(true);
  });
  it("is not complete while chunks below done's last_seq are missing", () => {
    const s = createStream("m1");
    applyChunk(s, 1, "a");
    expect(applyDone(s, 2, "stop")).toBe(false);
  });
});

// --- backoff and close codes ----------------------------------------------------------

describe("backoff", () => {
  it("starts at 0.25 s, doubles, and is capped at 10 s", () => {
    expect(backoffCeiling(0)).toBe(BACKOFF_BASE_MS);
    expect(backoffCeiling(1)).toBe(500);
    expect(backoffCeiling(3)).toBe(2000);
    expect(backoffCeiling(6)).toBe(BACKOFF_CAP_MS);
    expect(backoffCeiling(100)).toBe(BACKOFF_CAP_MS);
  });
  it("uses full jitter within [0, ceiling)", () => {
    expect(backoffDelay(5, () => 0)).toBe(0);
    expect(backoffDelay(5, () => 0.999999)).toBeLessThan(backoffCeiling(5));
    expect(backoffDelay(5, () => 0.5)).toBe(backoffCeiling(5) / 2);
    for (let a = 0; a < 20; a++) {
      const d = backoffDelay(a, Math.random);
      expect(d).toBeGreaterThanOrEqual(0);
      expect(d).toBeLessThan(backoffCeiling(a));
    }
  });
  it("decides by close code", () => {
    const r = () => 0.5;
    expect(closeDecision(4401, 0, r)).toEqual({ kind: "refused" });
    for (const code of [4403, 1008, 1009]) expect(closeDecision(code, 0, r)).toEqual({ kind: "never" });
    expect(closeDecision(1012, 5, r)).toEqual({ kind: "reconnect", delayMs: 0 });
    for (const code of [1001, 1006, 1011, 1013, 4008]) {
      expect(closeDecision(code, 2, r)).toEqual({ kind: "reconnect", delayMs: 500 });
    }
  });
});

// --- the state machine -------------------------------------------------------------------

describe("ChatClient", () => {
  it("sends the token in the bearer subprotocol, not in the URL", () => {
    const { last } = setup();
    expect(last().protocols).toEqual(["bearer", "tok"]);
    expect(last().url).not.toContain("tok");
  });

  it("is connecting until welcome, then open with the node id", () => {
    const { last, snap } = setup();
    expect(snap().connection).toBe("connecting");
    last().welcome([], "gateway-2");
    expect(snap().connection).toBe("open");
    expect(snap().nodeId).toBe("gateway-2");
    expect(snap().userId).toBe("alice");
  });

  it("streams an answer, dropping duplicate and out-of-turn seqs", () => {
    const { client, last, msg, snap } = setup();
    last().welcome();
    client.sendChat("hi");
    const chat = last().ofType("chat")[0]!;
    expect(chat.client_msg_id).toBe("c1");
    last().frame({ type: "ack", client_msg_id: "c1", message_id: "m_1" });
    expect(msg("m_1")?.status).toBe("pending");
    expect(msg("u_1")?.status).toBe("done");
    last().frame({ type: "chunk", message_id: "m_1", seq: 1, delta: "Hel" });
    last().frame({ type: "chunk", message_id: "m_1", seq: 1, delta: "Hel" });
    last().frame({ type: "chunk", message_id: "m_1", seq: 3, delta: "!" });
    expect(msg("m_1")?.text).toBe("Hel");
    last().frame({ type: "chunk", message_id: "m_1", seq: 2, delta: "lo" });
    expect(msg("m_1")?.text).toBe("Hello!");
    expect(msg("m_1")?.status).toBe("streaming");
    expect(snap().busy).toBe(true);
    last().frame({ type: "done", message_id: "m_1", last_seq: 3, finish_reason: "stop" });
    expect(msg("m_1")?.status).toBe("done");
    expect(msg("m_1")?.lastSeq).toBe(3);
    expect(snap().busy).toBe(false);
    // the user turn comes right before its answer
    expect(snap().messages.map((m) => m.key)).toEqual(["u_1", "m_1"]);
  });

  it("resumes unfinished streams after a reconnect with after_seq = our last seq", () => {
    const { client, clock, last, sockets, msg } = setup();
    last().welcome();
    client.sendChat("hi");
    last().frame({ type: "ack", client_msg_id: "c1", message_id: "m_1" });
    last().frame({ type: "chunk", message_id: "m_1", seq: 1, delta: "a" });
    last().frame({ type: "chunk", message_id: "m_1", seq: 2, delta: "b" });
    last().serverClose(1006);
    expect(client.getSnapshot().connection).toBe("reconnecting");
    clock.advance(BACKOFF_BASE_MS);
    expect(sockets.length).toBe(2);
    last().welcome([{ message_id: "m_1", last_seq: 4, status: "streaming" }]);
    expect(last().ofType("resume")).toEqual([{ type: "resume", message_id: "m_1", after_seq: 2 }]);
    // overlap between replay and live push: duplicates are dropped
    for (const [seq, delta] of [[2, "b"], [3, "c"], [3, "c"], [4, "d"]] as const) {
      last().frame({ type: "chunk", message_id: "m_1", seq, delta });
    }
    last().frame({ type: "done", message_id: "m_1", last_seq: 4, finish_reason: "stop" });
    expect(msg("m_1")?.text).toBe("abcd");
    expect(msg("m_1")?.status).toBe("done");
  });

  it("resumes from 0 the answers welcome lists that it does not know (reload)", () => {
    const history = [{ message_id: "u_9", role: "user" as const, text: "q" }];
    const { last, msg, snap } = setup({ history });
    last().welcome([{ message_id: "m_9", last_seq: 5, status: "streaming" }]);
    expect(last().ofType("resume")).toEqual([{ type: "resume", message_id: "m_9", after_seq: 0 }]);
    expect(snap().messages.map((m) => m.key)).toEqual(["u_9", "m_9"]);
    last().frame({ type: "chunk", message_id: "m_9", seq: 1, delta: "x" });
    expect(msg("m_9")?.text).toBe("x");
  });

  it("does not resume finished answers it already has from history", () => {
    const history = [
      { message_id: "u_1", role: "user" as const, text: "q" },
      { message_id: "m_1", role: "assistant" as const, text: "done text" },
    ];
    const { last, msg } = setup({ history });
    last().welcome([{ message_id: "m_1", last_seq: 3, status: "done" }]);
    expect(last().ofType("resume")).toEqual([]);
    expect(msg("m_1")?.text).toBe("done text");
  });

  it("re-sends an unacked chat with the same client_msg_id after a reconnect, then resumes", () => {
    const { client, clock, last, sockets } = setup();
    last().welcome();
    client.sendChat("hello");
    const first = sockets[0]!.ofType("chat");
    expect(first).toHaveLength(1);
    last().serverClose(1012);
    expect(client.getSnapshot().reconnectAt).toBe(clock.now());
    clock.advance(0);
    expect(sockets.length).toBe(2);
    last().welcome();
    const again = last().ofType("chat");
    expect(again).toEqual([{ type: "chat", text: "hello", client_msg_id: first[0]!.client_msg_id }]);
    // the first send had been accepted: the ack names the running answer; resume it
    last().frame({ type: "ack", client_msg_id: "c1", message_id: "m_1" });
    expect(last().ofType("resume")).toEqual([{ type: "resume", message_id: "m_1", after_seq: 0 }]);
  });

  it("on busy with retry_after counts down, then re-sends the same frame", () => {
    const { client, clock, last, snap } = setup();
    last().welcome();
    client.sendChat("q");
    last().frame({ type: "error", code: "busy", message: "full", client_msg_id: "c1", retry_after: 3 });
    const user = () => snap().messages[0]!;
    expect(user().status).toBe("pending");
    expect(noticeText(user().notice!, clock.now())).toBe("The service is busy. Retrying in 3 s…");
    clock.advance(1000);
    expect(noticeText(user().notice!, clock.now())).toBe("The service is busy. Retrying in 2 s…");
    expect(last().ofType("chat")).toHaveLength(1);
    clock.advance(2000);
    const chats = last().ofType("chat");
    expect(chats).toHaveLength(2);
    expect(chats[1]).toEqual(chats[0]);
  });

  it("on rate_limited waits retry_after and re-sends", () => {
    const { client, clock, last } = setup();
    last().welcome();
    client.sendChat("q");
    last().frame({ type: "error", code: "rate_limited", client_msg_id: "c1", retry_after: 1.5 });
    clock.advance(1499);
    expect(last().ofType("chat")).toHaveLength(1);
    clock.advance(1);
    expect(last().ofType("chat")).toHaveLength(2);
  });

  it("on busy with a message_id waits for that answer's done, then sends", () => {
    const { client, last, snap } = setup();
    last().welcome();
    client.sendChat("q");
    last().frame({ type: "error", code: "busy", client_msg_id: "c1", message_id: "m_other" });
    expect(last().ofType("resume")).toEqual([{ type: "resume", message_id: "m_other", after_seq: 0 }]);
    expect(snap().messages.find((m) => m.key === "c:c1")?.notice?.runningAnswer).toBe(true);
    expect(last().ofType("chat")).toHaveLength(1);
    last().frame({ type: "chunk", message_id: "m_other", seq: 1, delta: "x" });
    last().frame({ type: "done", message_id: "m_other", last_seq: 1, finish_reason: "stop" });
    expect(last().ofType("chat")).toHaveLength(2);
  });

  it("never reconnects after 4401 and reports the reason", () => {
    const { clock, last, sockets, snap } = setup();
    last().serverClose(4401, "token expired");
    clock.advance(60_000);
    expect(sockets.length).toBe(1);
    expect(snap().connection).toBe("refused");
    expect(snap().closeText).toBe("Your sign-in was refused: token expired. Enter a valid token.");
  });

  it.each([4403, 1008, 1009])("never reconnects after %i", (code) => {
    const { clock, last, sockets, snap } = setup();
    last().serverClose(code);
    clock.advance(60_000);
    expect(sockets.length).toBe(1);
    expect(snap().connection).toBe("offline");
  });

  it("backs off with growing ceilings and exposes the deadline; retryNow skips it", () => {
    const { client, clock, last, sockets, snap } = setup({ random: 0.999 });
    const delays: number[] = [];
    for (let i = 0; i < 7; i++) {
      last().serverClose(1006);
      delays.push(snap().reconnectAt! - clock.now());
      clock.advance(snap().reconnectAt! - clock.now());
    }
    expect(delays).toEqual([249, 499, 999, 1998, 3996, 7992, 9990]);
    expect(sockets.length).toBe(8);
    last().serverClose(1006);
    expect(snap().connection).toBe("reconnecting");
    client.retryNow();
    expect(sockets.length).toBe(9);
    expect(snap().connection).toBe("connecting");
    last().welcome();
    last().serverClose(1006);
    expect(snap().reconnectAt! - clock.now()).toBe(249); // attempt reset by welcome
  });

  it("cancel sends cancel for the running answer; done cancelled marks it stopped", () => {
    const { client, last, msg } = setup();
    last().welcome();
    client.sendChat("q");
    last().frame({ type: "ack", client_msg_id: "c1", message_id: "m_1" });
    last().frame({ type: "chunk", message_id: "m_1", seq: 1, delta: "part" });
    client.cancel();
    expect(last().ofType("cancel")).toEqual([{ type: "cancel", message_id: "m_1" }]);
    last().frame({ type: "done", message_id: "m_1", last_seq: 1, finish_reason: "cancelled" });
    expect(msg("m_1")?.status).toBe("stopped");
    expect(msg("m_1")?.text).toBe("part");
  });

  it("stream_expired fetches history and takes the text from it", () => {
    const { client, clock, last, sockets, msg } = setup();
    last().welcome();
    client.sendChat("q");
    last().frame({ type: "ack", client_msg_id: "c1", message_id: "m_1" });
    last().frame({ type: "chunk", message_id: "m_1", seq: 1, delta: "ab" });
    last().serverClose(1006);
    clock.advance(10_000);
    expect(sockets.length).toBe(2);
    last().welcome([]);
    expect(last().ofType("resume")).toEqual([{ type: "resume", message_id: "m_1", after_seq: 1 }]);
    last().frame({ type: "error", code: "stream_expired", message_id: "m_1" });
    expect(last().ofType("history")).toHaveLength(1);
    last().frame({
      type: "history",
      session_id: "s1",
      messages: [
        { message_id: "u_1", role: "user", text: "q" },
        { message_id: "m_1", role: "assistant", text: "abcdef" },
      ],
    });
    expect(msg("m_1")?.text).toBe("abcdef");
    expect(msg("m_1")?.status).toBe("done");
    expect(client.getSnapshot().messages).toHaveLength(2);
  });

  it("upstream_unavailable shows a human notice and ends in error", () => {
    const { client, clock, last, msg } = setup();
    last().welcome();
    client.sendChat("q");
    last().frame({ type: "ack", client_msg_id: "c1", message_id: "m_1" });
    last().frame({ type: "error", code: "upstream_unavailable", message_id: "m_1" });
    last().frame({ type: "done", message_id: "m_1", last_seq: 0, finish_reason: "error" });
    expect(msg("m_1")?.status).toBe("error");
    expect(noticeText(msg("m_1")!.notice!, clock.now())).toBe("No AI worker could finish this answer. Try again.");
  });

  it("shows slow-first-chunk texts after 3 s and 10 s", () => {
    const { client, clock, last, msg } = setup();
    last().welcome();
    client.sendChat("q");
    last().frame({ type: "ack", client_msg_id: "c1", message_id: "m_1" });
    expect(waitingText(msg("m_1")!, clock.now())).toBeNull();
    clock.advance(3000);
    expect(waitingText(msg("m_1")!, clock.now())).toBe("The model is taking long…");
    clock.advance(7000);
    expect(waitingText(msg("m_1")!, clock.now())).toBe("Still waiting for an AI worker…");
    last().frame({ type: "chunk", message_id: "m_1", seq: 1, delta: "x" });
    expect(waitingText(msg("m_1")!, clock.now())).toBeNull();
  });

  it("a bad_request for a chat marks it failed and does not retry", () => {
    const { client, clock, last, snap } = setup();
    last().welcome();
    client.sendChat("q");
    last().frame({ type: "error", code: "bad_request", message: "too long", client_msg_id: "c1" });
    clock.advance(30_000);
    expect(last().ofType("chat")).toHaveLength(1);
    expect(snap().messages[0]!.status).toBe("error");
    expect(snap().busy).toBe(false);
  });

  it("reconnects when the socket stays silent past the keepalive limit", () => {
    const { clock, last, sockets, snap } = setup({ random: 0 });
    last().welcome();
    clock.advance(25_000);
    expect(last().ofType("ping")).toHaveLength(1);
    clock.advance(50_000);
    expect(sockets[0]!.closedWith).toBe(4000);
    expect(sockets.length).toBe(2);
    expect(snap().connection).toBe("connecting");
  });
});
