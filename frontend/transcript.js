// The conversation shown on screen, as plain data (no DOM), so that merging the
// server's `history` with what only this tab knows is testable with node.
//
// An entry is one of
//   {key, role: "user", text, status: "pending" | "sent" | "error", clientMsgId?, error?}
//   {key, role: "assistant", stream, error?}      (stream from chat-core.js)
//   {key, role: "notice", text}
// User entries created here are keyed "c:<client_msg_id>"; everything from the
// server is keyed by its message_id.

import { createSettledStream, isComplete } from "./chat-core.js";

export function userEntry(clientMsgId, text) {
  return { key: `c:${clientMsgId}`, role: "user", text, status: "pending", clientMsgId };
}

export function assistantEntry(stream) {
  return { key: stream.messageId, role: "assistant", stream };
}

export function noticeEntry(key, text) {
  return { key: `n:${key}`, role: "notice", text };
}

/** Insert `entry` right after the entry keyed `afterKey`, or at the end. */
export function insertAfter(entries, afterKey, entry) {
  const at = entries.findIndex((e) => e.key === afterKey);
  if (at < 0) entries.push(entry);
  else entries.splice(at + 1, 0, entry);
}

/**
 * Rebuild the transcript from a `history` frame. History is the truth for
 * finished messages; entries only this tab has (unanswered prompts, answers still
 * streaming, notices) are kept after it, in their order. `streams` (message_id ->
 * stream) is updated so later chunks of settled messages are ignored.
 */
export function mergeHistory(entries, items, streams) {
  const merged = [];
  const historyKeys = new Set();
  const historyPrompts = new Map(); // text -> count, to drop our echo of a stored prompt
  for (const item of items) {
    historyKeys.add(item.message_id);
    if (item.role === "assistant") {
      let stream = streams.get(item.message_id);
      // An answer we are still receiving keeps its stream: history may list it
      // before it is done, and resume completes it.
      if (!stream || isComplete(stream)) {
        stream = createSettledStream(item.message_id, item.text);
        streams.set(item.message_id, stream);
      }
      merged.push(assistantEntry(stream));
    } else {
      merged.push({ key: item.message_id, role: "user", text: item.text, status: "sent" });
      historyPrompts.set(item.text, (historyPrompts.get(item.text) ?? 0) + 1);
    }
  }
  // Newest local entries first, so a repeated prompt matches its latest copy.
  const kept = [];
  for (const entry of [...entries].reverse()) {
    if (historyKeys.has(entry.key)) continue;
    if (entry.role === "user" && entry.status === "sent") {
      const seen = historyPrompts.get(entry.text) ?? 0;
      if (seen > 0) {
        historyPrompts.set(entry.text, seen - 1);
        continue;
      }
    }
    kept.push(entry);
  }
  return merged.concat(kept.reverse());
}
