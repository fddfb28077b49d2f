"""What a connection needs from its node, built once in the lifespan."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from services.common.kafka import EventPublisher
from services.common.message_store import MessageStore
from services.common.settings import Settings
from services.ws_gateway.driver import Driver
from services.ws_gateway.metrics import GatewayMetrics
from services.ws_gateway.notifier import Notifier
from services.ws_gateway.relay import Relay
from services.ws_gateway.sessions import SessionStore


@dataclass
class NodeContext:
    settings: Settings
    store: MessageStore
    sessions: SessionStore
    relay: Relay
    driver: Driver
    notifier: Notifier
    publisher: EventPublisher
    metrics: GatewayMetrics
    hub: Hub


class Hub:
    """This node's connections by session, for pushing answers that start elsewhere."""

    def __init__(self) -> None:
        self._by_session: dict[str, set[SessionMember]] = {}

    def add(self, session_id: str, member: SessionMember) -> None:
        self._by_session.setdefault(session_id, set()).add(member)

    def remove(self, session_id: str, member: SessionMember) -> None:
        members = self._by_session.get(session_id)
        if members is not None:
            members.discard(member)
            if not members:
                del self._by_session[session_id]

    def message_started(self, session_id: str, message_id: str) -> None:
        for member in list(self._by_session.get(session_id, ())):
            member.push_new_message(message_id)

    def members(self) -> list[SessionMember]:
        return [m for members in self._by_session.values() for m in members]


class SessionMember(Protocol):
    """A connection as the hub sees it."""

    def push_new_message(self, message_id: str) -> None: ...
