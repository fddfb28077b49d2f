"""Helpers shared by the Redis integration tests: waiting on conditions with a
deadline (never a fixed sleep), a client that can reach no server, and the stores
with the tests' usual settings."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from services.common.keys import Keys
from services.common.message_store import FinishOutcome, MessageStore
from services.common.protocol import FinishReason, Usage
from services.ws_gateway.sessions import SessionStore
from tests.conftest import free_ports


async def eventually(
    condition: Callable[[], Any | Awaitable[Any]],
    timeout: float,
    what: str,
    poll: float = 0.005,
) -> Any:
    """Poll condition() (sync or async) until truthy and return it; fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(poll)


def unreachable_redis() -> Redis:
    """A client of a loopback port nobody listens on: it fails fast, without retries."""
    return Redis(
        host="127.0.0.1",
        port=free_ports(1)[0],
        decode_responses=True,
        socket_connect_timeout=0.5,
        socket_timeout=0.5,
        retry=Retry(NoBackoff(), 0),
    )


def make_message_store(redis: Redis, keys: Keys, **options: Any) -> MessageStore:
    """A MessageStore with short TTLs; `options` (any of its keyword arguments) override."""
    defaults: dict[str, Any] = {
        "stream_ttl": 600,
        "meta_ttl": 3600,
        "history_max": 50,
        "lease_ttl_ms": 30_000,
    }
    return MessageStore(redis, keys, **(defaults | options))


def make_session_store(redis: Redis, keys: Keys, session_ttl: int, **options: Any) -> SessionStore:
    """A SessionStore (a node of its own: an empty L1); `options` override the L1 bounds
    or add node_id and outbox_max."""
    defaults: dict[str, Any] = {"l1_max": 100, "l1_ttl": 60.0}
    return SessionStore(redis, keys, session_ttl=session_ttl, **(defaults | options))


async def finish(
    store: MessageStore,
    message_id: str,
    session_id: str = "s1",
    *,
    token: str = "",
    last_seq: int = 0,
    text: str = "",
    reason: FinishReason = FinishReason.STOP,
    usage: Usage | None = None,
) -> FinishOutcome:
    """`store.finish`, by default of a message nobody leases (token "") with no chunk,
    no text and no usage, as STOP."""
    return await store.finish(
        message_id,
        session_id,
        token=token,
        last_seq=last_seq,
        text=text,
        reason=reason,
        usage=usage or Usage(),
    )
