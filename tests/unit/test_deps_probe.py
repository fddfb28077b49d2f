"""`/status/deps`: the Redis and Kafka rows of the status page, and their deadlines."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from services.common.errors import StorageError
from services.common.event_outbox import OutboxStats
from services.ws_gateway.deps import (
    DepsProbe,
    bootstrap_addresses,
    kafka_health,
    redis_row,
)

pytestmark = pytest.mark.unit

INFO = {
    "redis_version": "7.2.4",
    "role": "master",
    "uptime_in_seconds": 3600,
    "connected_clients": 12,
    "used_memory": 1048576,
    "maxmemory": 0,
}


class FakeRedis:
    def __init__(self, info: dict[str, Any] | None = None, error: Exception | None = None):
        self._info, self._error = info, error

    async def info(self) -> dict[str, Any]:
        if self._error is not None:
            raise self._error
        if self._info is None:
            await asyncio.Event().wait()  # a Redis that never answers
        assert self._info is not None
        return self._info


class FakeProducer:
    def __init__(self, connected: bool) -> None:
        self.connected = connected


class FakeOutbox:
    def __init__(self, stats: OutboxStats | None) -> None:
        self._stats = stats

    async def stats(self) -> OutboxStats:
        if self._stats is None:
            raise StorageError("redis down")
        return self._stats


#: The bootstrap servers of the fakes: the first never answers, the second is up.
SERVERS = "dead:9092,broker:9092"


async def only_broker(host: str, port: int) -> bool:
    """A network where `broker:9092` answers and every other address never does."""
    if (host, port) == ("broker", 9092):
        return True
    await asyncio.Event().wait()
    return False


async def nothing(host: str, port: int) -> bool:
    """A network where every address refuses."""
    return False


def probe(
    redis: FakeRedis, producer: Any = None, outbox: Any = None, reachable: Any = only_broker
) -> DepsProbe:
    return DepsProbe(
        redis,  # type: ignore[arg-type]
        SERVERS,
        producer,
        [] if outbox is None else [outbox],
        timeout=0.05,
        reachable=reachable,
    )


def test_redis_row_takes_the_fields_the_page_shows() -> None:
    assert redis_row(INFO) == {
        "status": "up",
        "version": "7.2.4",
        "role": "master",
        "uptime_s": 3600,
        "connected_clients": 12,
        "used_memory": 1048576,
    }


def test_kafka_health() -> None:
    assert kafka_health(enabled=False, reachable=False, connected=False) == "disabled"
    assert kafka_health(enabled=True, reachable=False, connected=False) == "down"
    assert kafka_health(enabled=True, reachable=True, connected=False) == "degraded"
    assert kafka_health(enabled=True, reachable=True, connected=True) == "up"


def test_bootstrap_addresses() -> None:
    assert bootstrap_addresses("kafka:9092, 10.0.0.2:19092,,broker") == [
        ("kafka", 9092),
        ("10.0.0.2", 19092),
        ("broker", 9092),
    ]
    assert bootstrap_addresses("[::1]:9092") == [("::1", 9092)]


async def test_everything_up() -> None:
    report = await probe(
        FakeRedis(INFO), FakeProducer(True), FakeOutbox(OutboxStats(5, 1))
    ).report()
    assert report["redis"]["status"] == "up"
    assert report["redis"]["uptime_s"] == 3600
    assert report["kafka"] == {
        "status": "up",
        "bootstrap": SERVERS,
        "broker_reachable": True,
        "producer_connected": True,
        "outbox_length": 5,
        "outbox_dropped": 1,
    }


async def test_a_silent_redis_and_a_dead_broker_are_down_within_the_deadline() -> None:
    started = time.monotonic()
    report = await probe(FakeRedis(None), FakeProducer(False), FakeOutbox(None), nothing).report()
    assert time.monotonic() - started < 1.0
    assert report["redis"]["status"] == "down"
    assert "0.05s" in report["redis"]["error"]
    kafka = report["kafka"]
    assert (kafka["status"], kafka["broker_reachable"], kafka["outbox_length"]) == (
        "down",
        False,
        None,
    )


async def test_a_redis_error_is_down_with_its_reason() -> None:
    report = await probe(
        FakeRedis(error=RedisConnectionError("connection refused")),
        FakeProducer(False),
        FakeOutbox(OutboxStats(0, 0)),
    ).report()
    assert report["redis"] == {"status": "down", "error": "connection refused"}
    assert report["kafka"]["status"] == "degraded"  # reachable, producer not connected


async def test_kafka_disabled_is_not_probed() -> None:
    report = await probe(FakeRedis(INFO), reachable=nothing).report()
    assert report["kafka"]["status"] == "disabled"
    assert report["kafka"]["outbox_length"] is None


def test_a_cluster_shows_as_one_row() -> None:
    node = {"redis_version": "7.0.15", "uptime_in_seconds": 50, "connected_clients": 4}
    info = {
        "127.0.0.1:7001": {**node, "role": "master", "used_memory": 100},
        "127.0.0.1:7002": {**node, "role": "master", "used_memory": 100, "uptime_in_seconds": 9},
        "127.0.0.1:7003": {**node, "role": "slave", "used_memory": 50},
    }
    row = redis_row(info)
    assert row == {
        "status": "up",
        "version": "7.0.15",
        "role": "cluster (2 primaries, 1 replicas)",
        "uptime_s": 9,
        "connected_clients": 12,
        "used_memory": 250,
    }
