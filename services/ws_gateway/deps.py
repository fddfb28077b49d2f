"""`GET /status/deps`: Redis and Kafka as this gateway sees them, for the status page.

Every probe has a deadline (`DEPS_TIMEOUT_S`), so a dead dependency shows `down` at
once instead of holding the page's request. Redis: `INFO` (version, role, uptime,
clients, memory). Kafka: whether a TCP connection to a bootstrap server opens,
whether this node's event producer is connected, and the event outbox's length in
Redis (events waiting for Kafka). The row-building is pure; `DepsProbe` does the I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from fastapi import APIRouter, Request
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from services.common.errors import StorageError
from services.common.event_outbox import EventOutbox, OutboxStats, total_stats

DEPS_PATH = "/status/deps"
#: The longest any one probe may take.
DEPS_TIMEOUT_S = 1.0

Health = Literal["up", "degraded", "down", "disabled"]

#: The INFO fields the status page shows, under the names it shows them.
REDIS_FIELDS = {
    "redis_version": "version",
    "role": "role",
    "uptime_in_seconds": "uptime_s",
    "connected_clients": "connected_clients",
    "used_memory": "used_memory",
}


class Producer(Protocol):
    """What the probe asks of the event drainer."""

    @property
    def connected(self) -> bool: ...


def merged_cluster_info(info: Mapping[str, Any]) -> Mapping[str, Any]:
    """A Redis Cluster client's INFO is one reply per node (`host:port` -> fields):
    as one row, the cluster's version, `cluster (N primaries, M replicas)`, the
    shortest uptime, and clients and memory summed. A single node's reply is kept."""
    nodes = [v for v in info.values() if isinstance(v, Mapping)]
    if not nodes or len(nodes) != len(info):
        return info
    primaries = sum(1 for n in nodes if n.get("role") == "master")
    return {
        "redis_version": nodes[0].get("redis_version"),
        "role": f"cluster ({primaries} primaries, {len(nodes) - primaries} replicas)",
        "uptime_in_seconds": min(int(n.get("uptime_in_seconds", 0)) for n in nodes),
        "connected_clients": sum(int(n.get("connected_clients", 0)) for n in nodes),
        "used_memory": sum(int(n.get("used_memory", 0)) for n in nodes),
    }


def redis_row(info: Mapping[str, Any]) -> dict[str, Any]:
    """The status page's Redis row from an INFO reply (of a node, or of every node of a
    cluster): `up`, with the fields it shows."""
    info = merged_cluster_info(info)
    row: dict[str, Any] = {"status": "up"}
    for field, name in REDIS_FIELDS.items():
        row[name] = info.get(field)
    return row


def down_row(error: str) -> dict[str, Any]:
    return {"status": "down", "error": error}


def kafka_health(*, enabled: bool, reachable: bool, connected: bool) -> Health:
    """`down` when no broker answers; `degraded` when one does but this node's producer
    is not connected (events wait in the outbox)."""
    if not enabled:
        return "disabled"
    if not reachable:
        return "down"
    return "up" if connected else "degraded"


def bootstrap_addresses(servers: str) -> list[tuple[str, int]]:
    """`host:port,host:port` (KAFKA_BOOTSTRAP_SERVERS) as pairs; port 9092 if none."""
    found = []
    for item in servers.split(","):
        item = item.strip()
        if not item:
            continue
        host, sep, port = item.rpartition(":")
        if not sep or not port.isdigit():
            host, port = item, "9092"
        found.append((host.strip("[]"), int(port)))
    return found


async def tcp_reachable(host: str, port: int) -> bool:
    """Whether a TCP connection to host:port opens (then it is closed)."""
    try:
        _, writer = await asyncio.open_connection(host, port)
    except OSError:
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


@dataclass(frozen=True)
class DepsProbe:
    """The gateway's view of its dependencies. `producer` is None and `outboxes` empty
    with KAFKA_ENABLED=false."""

    redis: Redis
    bootstrap_servers: str
    producer: Producer | None
    outboxes: Sequence[EventOutbox]
    timeout: float = DEPS_TIMEOUT_S
    reachable: Callable[[str, int], Awaitable[bool]] = tcp_reachable

    async def report(self) -> dict[str, Any]:
        redis, kafka = await asyncio.gather(self.redis_status(), self.kafka_status())
        return {"redis": redis, "kafka": kafka}

    async def redis_status(self) -> dict[str, Any]:
        try:
            async with asyncio.timeout(self.timeout):
                if isinstance(self.redis, RedisCluster):  # every node's, summed up
                    info = await self.redis.info(target_nodes=RedisCluster.ALL_NODES)
                else:
                    info = await self.redis.info()
        except TimeoutError:
            return down_row(f"no answer within {self.timeout}s")
        except (RedisError, OSError) as exc:
            return down_row(str(exc) or type(exc).__name__)
        return redis_row(info)

    async def kafka_status(self) -> dict[str, Any]:
        enabled = self.producer is not None
        reachable, stats = False, None
        if enabled:
            reachable, stats = await asyncio.gather(self._broker_reachable(), self._outbox())
        connected = self.producer is not None and self.producer.connected
        return {
            "status": kafka_health(enabled=enabled, reachable=reachable, connected=connected),
            "bootstrap": self.bootstrap_servers,
            "broker_reachable": reachable,
            "producer_connected": connected,
            "outbox_length": stats.length if stats else None,
            "outbox_dropped": stats.dropped if stats else None,
        }

    async def _broker_reachable(self) -> bool:
        for host, port in bootstrap_addresses(self.bootstrap_servers):
            try:
                async with asyncio.timeout(self.timeout):
                    if await self.reachable(host, port):
                        return True
            except TimeoutError:
                continue
        return False

    async def _outbox(self) -> OutboxStats | None:
        """Every bucket's outbox, summed."""
        if not self.outboxes:
            return None
        try:
            async with asyncio.timeout(self.timeout):
                return await total_stats(self.outboxes)
        except (StorageError, TimeoutError):
            return None


def deps_router() -> APIRouter:
    """`GET /status/deps`; the lifespan yields the `DepsProbe` as `deps`."""
    router = APIRouter()

    @router.get(DEPS_PATH)
    async def deps(request: Request) -> dict[str, Any]:
        probe: DepsProbe = request.state.deps
        return await probe.report()

    return router
