"""Helpers shared by the Redis integration tests: waiting on conditions with a
deadline (never a fixed sleep), and a client that can reach no server."""

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
