"""Fixtures for the Redis integration tests: one real redis-server per session.

`redis_server` starts `redis-server` on a free loopback port (no persistence) and
kills it by its pid at the end. Every test gets its own client (`redis`) and its
own random key prefix (`keys`), so tests never see each other's keys; `make_redis`
opens more clients (a blocking one for XREAD, a second node's) and closes them all.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from redis.asyncio import Redis

from deploy.probes import redis_ping
from services.common.keys import Keys
from tests.conftest import free_ports, wait_for

MakeRedis = Callable[..., Redis]


@dataclass(frozen=True, slots=True)
class RedisServer:
    port: int
    host: str = "127.0.0.1"


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    port = free_ports(1)[0]
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(
            lambda: proc.poll() is not None or redis_ping(port).ok,
            10,
            f"redis-server to answer on port {port}",
            poll=0.01,
        )
        if proc.poll() is not None:
            pytest.fail(f"redis-server exited with {proc.returncode} (port {port} taken?)")
        yield RedisServer(port)
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture
async def make_redis(redis_server: RedisServer) -> AsyncIterator[MakeRedis]:
    """make_redis(**client_kwargs) -> a new client of the session's server, closed at the end."""
    clients: list[Redis] = []

    def make(**kwargs: Any) -> Redis:
        client = Redis(
            host=redis_server.host, port=redis_server.port, decode_responses=True, **kwargs
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()


@pytest.fixture
async def redis(make_redis: MakeRedis) -> Redis:
    return make_redis()


@pytest.fixture
def keys() -> Keys:
    """A key builder with a prefix of this test's own."""
    return Keys(f"t{uuid.uuid4().hex[:8]}:")
