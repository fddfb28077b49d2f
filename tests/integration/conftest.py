"""Fixtures for the Redis integration tests: one real redis-server per session.

`redis_server` starts the deploy's own redis process (deploy/supervisor.py's command
line: loopback only, no persistence) on a free port, waits for deploy/probes.py's
probe to pass, and kills it by its pid at the end. Every test gets its own client (`redis`) and its
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

from deploy.probes import probe
from deploy.spec import ClusterSpec
from deploy.supervisor import Binaries, build_processes
from services.common.keys import Keys
from tests.conftest import wait_for

MakeRedis = Callable[..., Redis]


@dataclass(frozen=True, slots=True)
class RedisServer:
    port: int
    host: str = "127.0.0.1"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    spec = ClusterSpec.on_free_ports(tmp_path_factory.mktemp("redis-run"), gateways=1, workers=1)
    bins = Binaries(nginx="nginx", redis_server="redis-server", tansu="tansu")
    (redis,) = [p for p in build_processes(spec, bins) if p.name == "redis"]
    (spec.run_dir / "redis").mkdir()  # its --dir
    proc = subprocess.Popen(redis.command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(
            lambda: proc.poll() is not None or probe(redis).ok,
            10,
            f"redis-server to answer on port {redis.port}",
            poll=0.01,
        )
        if proc.poll() is not None:
            pytest.fail(f"redis-server exited with {proc.returncode} (port {redis.port} taken?)")
        yield RedisServer(redis.port)
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
