"""What a record of `chat.events` adds to its user's usage (pure: no I/O).

Only `message.completed` carries usage (`data.usage`: prompt_tokens,
completion_tokens; events.py, message_store.py); every other type adds nothing. An
event of a type this code does not know is ignored too, so the producers can add
types without breaking the consumer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.common.events import EventType


class BadEvent(ValueError):
    """A record that is not a chat event, or a `message.completed` without a user or
    with malformed usage: skipped (and counted), never retried."""


@dataclass(frozen=True, slots=True)
class UsageDelta:
    """What one event adds to one user's totals (and one answer)."""

    event_id: str
    user_id: str
    prompt_tokens: int
    completion_tokens: int


class UsageTotals(BaseModel):
    """A user's usage so far: tokens, and answers counted (`GET /usage/{user_id}`)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    answers: int = 0

    @classmethod
    def from_hash(cls, fields: Mapping[str, str]) -> UsageTotals:
        """From the totals hash (empty for a user with none); raises ValueError if a
        field is not an integer."""
        return cls(**{name: int(fields.get(name, 0)) for name in cls.model_fields})


class _Envelope(BaseModel):
    """The fields of a chat event every type has (others are ignored)."""

    model_config = ConfigDict(extra="ignore")

    event_id: str = Field(min_length=1)
    type: str
    user_id: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)


class _Usage(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    prompt_tokens: int = Field(default=0, ge=0)
    completion_tokens: int = Field(default=0, ge=0)


def delta_of(value: bytes | None) -> UsageDelta | None:
    """The usage one record's value adds, or None for an event that carries none.

    Raises BadEvent (its message names what is wrong, never the record's content)."""
    if value is None:
        raise BadEvent("a record without a value")
    try:
        event = _Envelope.model_validate_json(value)
    except ValidationError as exc:
        raise BadEvent(f"not a chat event: {_where(exc)}") from None
    if event.type != EventType.MESSAGE_COMPLETED:
        return None
    if not event.user_id:
        raise BadEvent(f"{event.type} {event.event_id} names no user")
    try:
        usage = _Usage.model_validate(event.data.get("usage", {}))
    except ValidationError as exc:
        raise BadEvent(f"{event.type} {event.event_id}: bad usage: {_where(exc)}") from None
    return UsageDelta(event.event_id, event.user_id, usage.prompt_tokens, usage.completion_tokens)


def _where(exc: ValidationError) -> str:
    """The fields a validation error is about and why, without the input's values."""
    return "; ".join(
        f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['type']}"
        for e in exc.errors(include_input=False, include_url=False)
    )


class _Record(Protocol):
    @property
    def offset(self) -> int: ...


P = TypeVar("P")


def next_offsets(batch: Mapping[P, Sequence[_Record]]) -> dict[P, int]:
    """The offsets to commit once every record of `batch` is processed: per partition,
    one past its last record (Kafka's committed offset is the next one to read)."""
    return {tp: max(r.offset for r in records) + 1 for tp, records in batch.items() if records}
