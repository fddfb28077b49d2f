"""The chunk-cache record format: how a message's Redis Stream entries encode chunks
and the final record, and how they decode back. Pure; no I/O.

Entry ids: chunk `seq` is `0-<seq>`; the final record is `1-0` (see `keys`).
"""

from __future__ import annotations

from dataclasses import dataclass

from services.common.keys import DONE_ENTRY_ID, seq_of_entry_id
from services.common.protocol import ErrorCode, FinishReason, Usage

Fields = dict[str, str]


@dataclass(frozen=True, slots=True)
class ChunkEntry:
    seq: int
    delta: str
    written_ms: int
    """Wall-clock ms when the worker wrote it (for the chunk delay histogram)."""


@dataclass(frozen=True, slots=True)
class DoneEntry:
    last_seq: int
    finish_reason: FinishReason
    usage: Usage
    error: ErrorCode | None = None
    """Set when the answer ended because no worker could finish it."""


StreamEntry = ChunkEntry | DoneEntry


def chunk_fields(delta: str, written_ms: int) -> Fields:
    return {"d": delta, "t": str(written_ms)}


def done_fields(
    last_seq: int, reason: FinishReason, usage: Usage, error: ErrorCode | None = None
) -> Fields:
    fields = {
        "last_seq": str(last_seq),
        "finish_reason": reason.value,
        "prompt_tokens": str(usage.prompt_tokens),
        "completion_tokens": str(usage.completion_tokens),
    }
    if error is not None:
        fields["error"] = error.value
    return fields


def decode_entry(entry_id: str, fields: Fields) -> StreamEntry:
    """Decode one stream entry; raises ValueError for an entry of unknown shape."""
    try:
        return _decode(entry_id, fields)
    except KeyError as exc:
        raise ValueError(f"stream entry {entry_id} lacks field {exc}") from exc


def _decode(entry_id: str, fields: Fields) -> StreamEntry:
    if entry_id == DONE_ENTRY_ID:
        error = fields.get("error")
        return DoneEntry(
            last_seq=int(fields["last_seq"]),
            finish_reason=FinishReason(fields["finish_reason"]),
            usage=Usage(
                prompt_tokens=int(fields.get("prompt_tokens", 0)),
                completion_tokens=int(fields.get("completion_tokens", 0)),
            ),
            error=ErrorCode(error) if error else None,
        )
    return ChunkEntry(
        seq=seq_of_entry_id(entry_id), delta=fields["d"], written_ms=int(fields.get("t", 0))
    )
