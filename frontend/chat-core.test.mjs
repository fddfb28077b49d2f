// Run with: node --test frontend/
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  applyChunk,
  applyDone,
  backoffCeiling,
  backoffDelay,
  BACKOFF_BASE_MS,
  BACKOFF_CAP_MS,
  chatProtocols,
  chatUrl,
  createSettledStream,
  createStream,
  isComplete,
  randomId,
  reconnectDelay,
  resumePoint,
  resumeRequests,
} from "./chat-core.js";
import { mergeHistory, userEntry } from "./transcript.js";

const feed = (stream, chunks) => chunks.map(([seq, delta]) => applyChunk(stream, seq, delta));

test("chunks in order build the text", () => {
  const s = createStream("m1");
  assert.deepEqual(feed(s, [[1, "Hel"], [2, "lo"]]), ["Hel", "lo"]);
  assert.equal(s.text, "Hello");
  assert.equal(resumePoint(s), 2);
});

test("duplicate chunks are ignored", () => {
  const s = createStream("m1");
  feed(s, [[1, "a"], [2, "b"]]);
  assert.deepEqual(feed(s, [[1, "a"], [2, "b"], [2, "b"]]), ["", "", ""]);
  assert.equal(s.text, "ab");
  assert.equal(s.lastSeq, 2);
});

test("a chunk ahead of a gap waits for the gap to fill", () => {
  const s = createStream("m1");
  assert.deepEqual(feed(s, [[1, "a"], [3, "c"], [4, "d"], [3, "c"]]), ["a", "", "", ""]);
  assert.equal(s.text, "a");
  assert.equal(resumePoint(s), 1, "resume from the contiguous prefix, not the buffer");
  assert.equal(applyChunk(s, 2, "b"), "bcd");
  assert.equal(s.text, "abcd");
  assert.equal(resumePoint(s), 4);
  assert.equal(s.buffered.size, 0);
});

test("invalid seqs are ignored", () => {
  const s = createStream("m1");
  assert.deepEqual(feed(s, [[0, "x"], [-1, "x"], [1.5, "x"], ["1", "x"]]), ["", "", "", ""]);
  assert.equal(s.text, "");
});

test("done completes a stream only when every chunk is in", () => {
  const s = createStream("m1");
  feed(s, [[1, "a"], [3, "c"]]);
  assert.equal(applyDone(s, 3, "stop"), false);
  assert.equal(isComplete(s), false);
  applyChunk(s, 2, "b");
  assert.equal(isComplete(s), true);
  assert.equal(s.finishReason, "stop");
});

test("an empty cancelled answer is complete", () => {
  const s = createStream("m1");
  assert.equal(applyDone(s, 0, "cancelled"), true);
});

test("settled streams ignore chunks", () => {
  const s = createSettledStream("m1", "final");
  assert.equal(applyChunk(s, 1, "x"), "");
  assert.equal(s.text, "final");
  assert.equal(isComplete(s), true);
});

test("resume covers our unfinished streams and the welcome's unfinished ones", () => {
  const streaming = createStream("mine");
  feed(streaming, [[1, "a"], [2, "b"]]);
  const finished = createStream("finished");
  feed(finished, [[1, "x"]]);
  applyDone(finished, 1, "stop");
  const streams = new Map([
    ["mine", streaming],
    ["finished", finished],
  ]);
  const welcome = [
    { message_id: "mine", last_seq: 9, status: "streaming" },
    { message_id: "finished", last_seq: 1, status: "streaming" },
    { message_id: "other-tab", last_seq: 4, status: "streaming" },
    { message_id: "pending", last_seq: 0, status: "pending" },
    { message_id: "old", last_seq: 7, status: "done" },
  ];
  assert.deepEqual(resumeRequests(streams, welcome), [
    { type: "resume", message_id: "mine", after_seq: 2 },
    { type: "resume", message_id: "other-tab", after_seq: 0 },
    { type: "resume", message_id: "pending", after_seq: 0 },
  ]);
});

test("a stream we were following is resumed even if the welcome no longer lists it", () => {
  const s = createStream("gone");
  feed(s, [[1, "a"]]);
  assert.deepEqual(resumeRequests(new Map([["gone", s]]), []), [
    { type: "resume", message_id: "gone", after_seq: 1 },
  ]);
});

test("backoff grows from 0.25 s and is capped at 10 s", () => {
  assert.equal(backoffCeiling(0), BACKOFF_BASE_MS);
  assert.equal(backoffCeiling(1), 500);
  assert.equal(backoffCeiling(5), 8000);
  assert.equal(backoffCeiling(6), BACKOFF_CAP_MS);
  assert.equal(backoffCeiling(1000), BACKOFF_CAP_MS, "no overflow to Infinity/NaN");
});

test("full jitter stays within [0, ceiling)", () => {
  for (let attempt = 0; attempt < 12; attempt++) {
    assert.equal(backoffDelay(attempt, () => 0), 0);
    const top = backoffDelay(attempt, () => 0.999999);
    assert.ok(top < backoffCeiling(attempt) && top >= backoffCeiling(attempt) - 1);
    for (let i = 0; i < 50; i++) {
      const d = backoffDelay(attempt);
      assert.ok(d >= 0 && d < backoffCeiling(attempt), `${d} at attempt ${attempt}`);
    }
  }
});

test("close codes decide whether and when to reconnect", () => {
  const half = () => 0.5;
  for (const code of [1009, 4401, 4403]) assert.equal(reconnectDelay(code, 0, half), null);
  assert.equal(reconnectDelay(1012, 7, half), 0);
  for (const code of [1001, 1006, 1013, 4008]) {
    assert.equal(reconnectDelay(code, 2, half), 500);
  }
});

test("connection URL goes to :8080 of the page's host", () => {
  const loc = { protocol: "http:", hostname: "chat.example" };
  assert.equal(
    chatUrl(loc, { sessionId: "s1", userId: "u 1" }),
    "ws://chat.example:8080/ws/chat?session_id=s1&user_id=u+1",
  );
  assert.match(chatUrl({ ...loc, protocol: "https:" }, { sessionId: "s" }), /^wss:/);
});

test("the token is never in the URL, even when the config holds one", () => {
  const loc = { protocol: "https:", hostname: "chat.example" };
  const secret = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl";
  const url = chatUrl(loc, { sessionId: "s1", token: secret, userId: "alice" });
  assert.ok(!url.includes(secret), url);
  assert.ok(!new URL(url).searchParams.has("token"), url);
  assert.equal(url, "wss://chat.example:8080/ws/chat?session_id=s1&user_id=alice");
});

test("the token travels in the bearer subprotocol", () => {
  // services/ws_gateway/auth.py token_from_subprotocols: ["bearer", TOKEN].
  const jwtLike = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2ln-bmF0_dXJl";
  assert.deepEqual(chatProtocols(jwtLike), ["bearer", jwtLike]);
  assert.deepEqual(chatProtocols("dev-token"), ["bearer", "dev-token"]);
});

test("the app opens its socket with the subprotocols, not a token URL", async () => {
  const { readFile } = await import("node:fs/promises");
  const app = await readFile(new URL("./app.js", import.meta.url), "utf8");
  const opens = app.match(/new WebSocket\([^;]*\)/g) ?? [];
  assert.deepEqual(opens, ["new WebSocket(chatUrl(location, config), protocols)"]);
  assert.match(app, /protocols = chatProtocols\(config\.token\)/);
  assert.doesNotMatch(app, /[?&]token=/);
});

test("a token a subprotocol cannot carry is refused before connecting", () => {
  for (const bad of ["", "has space", "a,b", "quote\"", "bearer", "caf\u00e9", undefined]) {
    assert.throws(() => chatProtocols(bad), /subprotocol/, String(bad));
  }
});

test("random ids are valid session ids", () => {
  const id = randomId();
  assert.match(id, /^[0-9a-f]{24}$/);
  assert.notEqual(id, randomId());
});

test("history replaces finished messages and keeps what only this tab has", () => {
  const streams = new Map();
  const live = createStream("a2");
  feed(live, [[1, "partial"]]);
  streams.set("a2", live);
  const echoed = { ...userEntry("c1", "hi"), status: "sent" };
  const unanswered = userEntry("c2", "still sending");
  const entries = [echoed, { key: "a2", role: "assistant", stream: live }, unanswered];
  const history = [
    { message_id: "u1", role: "user", text: "hi", created_at: "t" },
    { message_id: "a1", role: "assistant", text: "hello", created_at: "t" },
  ];
  const merged = mergeHistory(entries, history, streams);
  assert.deepEqual(
    merged.map((e) => e.key),
    ["u1", "a1", "a2", "c:c2"],
  );
  assert.equal(streams.get("a1").text, "hello");
  assert.equal(applyChunk(streams.get("a1"), 1, "dup"), "", "history text is final");
  assert.equal(merged[2].stream, live, "the live stream keeps receiving");
});

test("history does not settle an answer still streaming", () => {
  const live = createStream("a1");
  feed(live, [[1, "par"]]);
  const streams = new Map([["a1", live]]);
  const history = [{ message_id: "a1", role: "assistant", text: "par", created_at: "t" }];
  mergeHistory([], history, streams);
  assert.equal(streams.get("a1"), live);
  assert.equal(applyChunk(live, 2, "tial"), "tial");
});
