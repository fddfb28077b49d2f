"""`/health` and `/ready` of both services, served by real uvicorn against real Redis.

`/ready` must reflect reality: Redis reachable and, on the gateway, every supervised
loop running. A relay reader that keeps crashing turns it false until it runs again.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from services.ai_worker.app import create_app as create_worker
from services.common.settings import Settings
from services.common.tasks import cancel_and_wait
from services.ws_gateway.app import create_app as create_gateway
from services.ws_gateway.relay import Relay
from tests.conftest import free_ports
from tests.integration.conftest import RedisServer
from tests.integration.redis_helpers import eventually

pytestmark = pytest.mark.integration


def settings_for(redis_url: str, node_id: str) -> Settings:
    return Settings(
        node_id=node_id,
        redis_url=redis_url,
        redis_key_prefix=f"{node_id}:",
        kafka_enabled=False,
        log_level="WARNING",
    )


class Served:
    """An app under a real uvicorn server on a free loopback port, in this event loop."""

    def __init__(self, app: FastAPI) -> None:
        port = free_ports(1)[0]
        self.url = f"http://127.0.0.1:{port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on")
        self.server = uvicorn.Server(config)
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Served:
        self.task = asyncio.create_task(self.server.serve())
        await eventually(lambda: self.server.started, 10, "uvicorn to start")
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        if self.task is not None:
            try:
                async with asyncio.timeout(10):
                    await self.task
            except TimeoutError:
                await cancel_and_wait(self.task)

    async def get(self, path: str) -> httpx.Response:
        async with httpx.AsyncClient(base_url=self.url, timeout=5) as client:
            return await client.get(path)


def redis_url(server: RedisServer) -> str:
    return f"redis://{server.host}:{server.port}/0"


async def test_both_services_are_healthy_and_ready_with_redis(redis_server: RedisServer) -> None:
    url = redis_url(redis_server)
    async with (
        Served(create_gateway(settings_for(url, "gw-ops"))) as gateway,
        Served(create_worker(settings_for(url, "wk-ops"))) as worker,
    ):
        for node, name in ((gateway, "gw-ops"), (worker, "wk-ops")):
            health = await node.get("/health")
            assert health.status_code == 200, health.text
            assert health.json()["node_id"] == name
            ready = await node.get("/ready")
            assert ready.status_code == 200, ready.text
            assert ready.json() == {"status": "ready", "node_id": name}


async def test_not_ready_without_redis() -> None:
    dead = f"redis://127.0.0.1:{free_ports(1)[0]}/0"
    async with (
        Served(create_gateway(settings_for(dead, "gw-dead"))) as gateway,
        Served(create_worker(settings_for(dead, "wk-dead"))) as worker,
    ):
        probes = [(node, path) for node in (gateway, worker) for path in ("/health", "/ready")]
        # At once: each waits out the Redis client's retries.
        replies = await asyncio.gather(*(node.get(path) for node, path in probes))
        for (_, path), resp in zip(probes, replies, strict=True):
            assert resp.status_code == 503, (path, resp.text)
            assert "redis unreachable" in resp.json()["reason"]


async def test_a_crashing_relay_reader_turns_ready_false_until_it_runs_again(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Inject a bug into the relay's read: the supervisor restarts the loop with backoff
    and /ready says which loop is down; once reads work again, /ready is back."""
    broken = asyncio.Event()
    broken.set()
    real_read_once = Relay.read_once

    async def read_once(self: Relay, block_ms: int = 5_000, lane: Any = None) -> None:
        if broken.is_set():
            raise RuntimeError("injected relay bug")
        await real_read_once(self, block_ms=200, lane=lane)

    monkeypatch.setattr(Relay, "read_once", read_once)
    async with Served(create_gateway(settings_for(redis_url(redis_server), "gw-crash"))) as gw:

        async def reason() -> str | None:
            resp = await gw.get("/ready")
            return resp.json()["reason"] if resp.status_code == 503 else None

        down = await eventually(reason, 10, "/ready to report the relay reader down")
        assert "relay-reader restarting" in down
        broken.clear()
        await eventually(
            lambda: _ready(gw), 15, "/ready to recover once the relay reader runs again"
        )


async def _ready(node: Served) -> bool:
    return (await node.get("/ready")).status_code == 200
