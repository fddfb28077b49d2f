// Per-answer bookkeeping: the text is exactly the deltas of seq 1..lastSeq.

/** Out-of-order chunks kept while a gap fills; past this, `resume` fills it instead. */
export const MAX_BUFFERED_CHUNKS = 1000;

export interface StreamState {
  readonly messageId: string;
  /** Highest seq applied; every seq below it is applied too. */
  lastSeq: number;
  /** seq -> delta received ahead of a gap. */
  buffered: Map<number, string>;
  /** last_seq of the `done`, once it arrived. */
  doneLastSeq: number | null;
  finishReason: string | null;
  /** The text came from history: it is final and chunks no longer apply. */
  settled: boolean;
}

export function createStream(messageId: string): StreamState {
  return { messageId, lastSeq: 0, buffered: new Map(), doneLastSeq: null, finishReason: null, settled: false };
}

/**
 * Apply one chunk and return the text it appends: "" for a duplicate (seq already
 * applied: a replay and a live push may overlap after a reconnect) or for a chunk
 * that waits for an earlier one.
 */
export function applyChunk(stream: StreamState, seq: number, delta: string): string {
  if (stream.settled || !Number.isInteger(seq) || seq <= stream.lastSeq) return "";
  if (seq > stream.lastSeq + 1) {
    if (stream.buffered.size < MAX_BUFFERED_CHUNKS) stream.buffered.set(seq, delta);
    return "";
  }
  let appended = delta;
  stream.lastSeq = seq;
  for (let next = stream.buffered.get(seq + 1); next !== undefined; next = stream.buffered.get(stream.lastSeq + 1)) {
    stream.buffered.delete(stream.lastSeq + 1);
    stream.lastSeq += 1;
    appended += next;
  }
  return appended;
}

/** Record `done`; returns whether every chunk up to its last_seq is applied. */
export function applyDone(stream: StreamState, lastSeq: number, finishReason: string): boolean {
  stream.doneLastSeq = lastSeq;
  stream.finishReason = finishReason;
  return isComplete(stream);
}

export function isComplete(stream: StreamState): boolean {
  return stream.settled || (stream.doneLastSeq !== null && stream.lastSeq >= stream.doneLastSeq);
}
