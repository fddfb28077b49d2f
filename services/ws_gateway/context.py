"""What a connection needs from its node, built once in the lifespan."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.message_store import MessageStore
from services.common.overload import Admission, LoopLag
from services.common.settings import Settings
from services.ws_gateway.driver import Driver
from services.ws_gateway.hub import Hub
from services.ws_gateway.metrics import GatewayMetrics
from services.ws_gateway.notifier import Notifier
from services.ws_gateway.relay import Relay
from services.ws_gateway.sessions import SessionStore


@dataclass
class NodeContext:
    settings: Settings
    store: MessageStore
    sessions: SessionStore
    hub: Hub
    relay: Relay
    driver: Driver
    notifier: Notifier
    metrics: GatewayMetrics
    admission: Admission
    lag: LoopLag
