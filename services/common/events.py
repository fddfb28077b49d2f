"""Kafka event schemas (topic `chat.events`, keyed by session_id)."""

from __future__ import annotations

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


class ChatEvent(BaseModel):
    """One lifecycle event; consumers ignore fields they do not know."""

    type: EventType
    session_id: str
    node_id: str
    user_id: str | None = None
    message_id: str | None = None
    at: str = Field(default_factory=now_iso)
    data: dict[str, Any] = Field(default_factory=dict)

    def key(self) -> bytes:
        return self.session_id.encode()

    def value(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()
