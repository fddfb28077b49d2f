"""Kafka event schemas (topic `chat.events`, keyed by session_id).

Delivery is at least once. Each event is written to the Redis outbox in the same
script as the state change it reports (`event_outbox.py`), and every node drains the
outbox to Kafka (`kafka.py`). A node that dies after Kafka took a batch but before it
deleted it from the outbox leaves that batch to be sent again, so the topic can hold
an event twice, and events from different nodes are not ordered among themselves.

Consumers therefore dedupe by `event_id` (a random uuid4 hex, the same in every copy
of one event): remember the ids seen for longer than an outage may last and skip a
repeat. `at` is when the state changed; order by it where order matters.
"""

from __future__ import annotations

import uuid
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field

from services.common.clock import now_iso


class Topic(StrEnum):
    CHAT_EVENTS = "chat.events"


class EventType(StrEnum):
    SESSION_OPENED = "session.opened"
    MESSAGE_ACCEPTED = "message.accepted"
    MESSAGE_COMPLETED = "message.completed"


def new_event_id() -> str:
    return uuid.uuid4().hex


class ChatEvent(BaseModel):
    """One lifecycle event; consumers ignore fields they do not know."""

    event_id: str = Field(default_factory=new_event_id)
    """The same in every copy of this event: consumers dedupe by it."""
    type: EventType
    session_id: str
    node_id: str
    user_id: str | None = None
    message_id: str | None = None
    at: str = Field(default_factory=now_iso)
    data: dict[str, Any] = Field(default_factory=dict)

    def key(self) -> bytes:
        return self.session_id.encode()

    def to_json(self) -> str:
        """The record's value, as the outbox stores it and Kafka carries it."""
        return self.model_dump_json(exclude_none=True)

    def value(self) -> bytes:
        return self.to_json().encode()
