"""Chunk-cache entries for the pure tests: chunk n holds delta "d<n>" unless told
otherwise, and the final record stops with 2 prompt tokens and one token a chunk."""

from __future__ import annotations

from services.common.protocol import ErrorCode, FinishReason, Usage
from services.common.streams import ChunkEntry, DoneEntry, StreamEntry


def chunk(seq: int, delta: str | None = None) -> ChunkEntry:
    return ChunkEntry(seq=seq, delta=f"d{seq}" if delta is None else delta, written_ms=0)


def chunks(first: int, last: int) -> list[StreamEntry]:
    return [chunk(s) for s in range(first, last + 1)]


def done(last_seq: int, error: ErrorCode | None = None) -> DoneEntry:
    usage = Usage(prompt_tokens=2, completion_tokens=last_seq)
    return DoneEntry(last_seq=last_seq, finish_reason=FinishReason.STOP, usage=usage, error=error)
