"""The gateway-worker contract of `POST /v1/generate`, parsed on both ends.

The gateway posts a `GenerateRequest`; the worker answers with NDJSON, a line a
second: `progress` carrying the last seq written when it moved, else `heartbeat`;
then one last line whose event is an `Outcome`, as soon as it is known. A worker
that is shutting down answers 503 with `{"event": "draining"}`; one with no room for
a new answer answers 429 with `{"event": "busy"}` (see services/common/overload.py).
Chunks themselves never travel here: they go through the message's Redis stream.
"""

from __future__ import annotations

from enum import StrEnum, auto

from pydantic import BaseModel, Field, ValidationError

GENERATE_PATH = "/v1/generate"


class GenerateRequest(BaseModel):
    """Generate (or continue) `message_id`; idempotent per message id."""

    message_id: str = Field(min_length=1, max_length=128)
    new: bool = False
    """The answer has no chunk yet: a worker with no room may refuse it (429). One that
    has chunks is always taken, so admitted answers keep going when a worker dies."""


class EventKind(StrEnum):
    """The lines that are not an outcome (each value is the member's name in lower case,
    as with `Outcome`)."""

    PROGRESS = auto()
    """A chunk was written; `last_seq` is the last seq in the cache."""
    HEARTBEAT = auto()
    """Nothing new for a second; the call is alive."""
    DRAINING = auto()
    """The 503 body of a worker that is shutting down."""
    BUSY = auto()
    """The 429 body of a worker with no room for a new answer; `detail` says why."""


class Outcome(StrEnum):
    """How a generation ended, as the worker reports it."""

    DONE = auto()
    """The final record is written (by this worker or earlier)."""
    LEASED = auto()
    """Another worker holds the lease."""
    LOST = auto()
    """The lease was lost mid-answer; whoever holds it now continues."""
    FAILED = auto()
    """The provider failed; the lease is released so another try can continue."""
    HANDED_OVER = auto()
    """The worker is shutting down; the lease is released for another worker."""
    NOT_FOUND = auto()
    """No such message."""


class GenerateEvent(BaseModel):
    """One NDJSON line of the response (or the 503 body, `draining`, or 429, `busy`)."""

    event: EventKind | Outcome
    last_seq: int = 0
    detail: str = ""

    @property
    def outcome(self) -> Outcome | None:
        return self.event if isinstance(self.event, Outcome) else None

    def line(self) -> bytes:
        return self.model_dump_json(exclude_defaults=True).encode() + b"\n"


def progress_line(last_seq: int) -> bytes:
    return GenerateEvent(event=EventKind.PROGRESS, last_seq=last_seq).line()


def heartbeat_line() -> bytes:
    return GenerateEvent(event=EventKind.HEARTBEAT).line()


def outcome_line(outcome: Outcome, last_seq: int, detail: str = "") -> bytes:
    return GenerateEvent(event=outcome, last_seq=last_seq, detail=detail).line()


def parse_event(line: str | bytes) -> GenerateEvent:
    """Parse one line; raises ValueError for anything that is not a known event."""
    try:
        return GenerateEvent.model_validate_json(line)
    except ValidationError as exc:
        raise ValueError(f"not a generate event: {line[:200]!r}") from exc
