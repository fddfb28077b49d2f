"""Building the Redis client at the edge, with a retry policy for transient errors."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from services.common.settings import Settings

#: Connections one client may open to Redis; past it, a command waits for a free one
#: (up to POOL_WAIT_S) instead of failing: under load the node slows down, it does not
#: drop answers (redis-py's default pool raises MaxConnectionsError at once).
MAX_CONNECTIONS = 512
POOL_WAIT_S = 10.0


def redis_from_settings(
    settings: Settings, *, blocking: bool = False, max_connections: int = MAX_CONNECTIONS
) -> Redis:
    """A client for REDIS_URL; `blocking` gives one without a socket timeout, for XREAD BLOCK.

    With REDIS_SENTINELS set, the client finds the primary of REDIS_SENTINEL_MASTER
    through those Sentinels instead (REDIS_URL then gives only the password and the db):
    every new connection asks them, and a connection to a primary that was demoted
    fails, so the next one reaches the new primary (docs/redis-ha.md).

    The blocking client does not retry by itself: its one user, the relay, retries with
    its own backoff and must see every lost connection (Redis may have come back with
    less data; see `ws_gateway/audit.py`)."""
    retry = Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=0 if blocking else 3)
    options: dict[str, Any] = {
        "decode_responses": True,
        "retry": retry,
        "retry_on_error": [RedisConnectionError, RedisTimeoutError],
        "socket_connect_timeout": 2.0,
        "socket_timeout": None if blocking else 5.0,
        "health_check_interval": 30,
    }
    if settings.redis_mode == "cluster":
        return _cluster_client(settings, options, max_connections)
    sentinels = sentinel_addresses(settings.redis_sentinels)
    if not sentinels:
        pool = BlockingConnectionPool.from_url(
            settings.redis_url, max_connections=max_connections, timeout=POOL_WAIT_S, **options
        )
        return Redis.from_pool(pool)  # the client owns the pool: aclose closes it
    if not settings.redis_sentinel_master:
        raise ValueError("REDIS_SENTINELS is set but REDIS_SENTINEL_MASTER is empty")
    url = urlsplit(settings.redis_url)
    db = url.path.lstrip("/")
    sentinel = Sentinel(
        sentinels,
        # Asking a Sentinel must never hang a caller: a stopped one is skipped.
        sentinel_kwargs={"socket_connect_timeout": 1.0, "socket_timeout": 1.0},
    )
    return sentinel.master_for(
        settings.redis_sentinel_master,
        redis_class=_SentinelRedis,
        username=url.username or None,
        password=url.password or None,
        db=int(db) if db else 0,
        # redis-py has no waiting pool for Sentinel: past this, a command fails (and is
        # retried by its caller).
        max_connections=max_connections,
        **options,
    )


def _cluster_client(settings: Settings, options: dict[str, Any], max_connections: int) -> Any:
    """REDIS_MODE=cluster: a Redis Cluster client seeded with REDIS_URL's node and those
    of REDIS_CLUSTER_NODES; it learns the others (and which holds each slot) from the
    first that answers, and follows MOVED and failovers.

    It is typed Any: the node code calls it like a `Redis`, which it is not, although it
    answers every command the node uses (each names keys of one slot, keys.py)."""
    url = urlsplit(settings.redis_url)
    if url.path.strip("/") not in ("", "0"):
        raise ValueError("REDIS_MODE=cluster: Redis Cluster has only db 0 (REDIS_URL .../0)")
    seeds = [(url.hostname or "127.0.0.1", url.port or 6379)]
    seeds += host_ports(settings.redis_cluster_nodes, "REDIS_CLUSTER_NODES")
    return RedisCluster(
        # Any one of them that answers tells the client the whole cluster: a node that
        # starts while the first is down (killed, failed over) still finds it.
        startup_nodes=[ClusterNode(host, port) for host, port in dict.fromkeys(seeds)],
        username=url.username or None,
        password=url.password or None,
        # Per node. redis-py's cluster client has no waiting pool: past this a command
        # fails (MaxConnectionsError) instead of waiting as the standalone client does.
        max_connections=max_connections,
        # A primary that died is replaced by its replica within the cluster's node
        # timeout: the client retries (refreshing the slot map) for that long.
        cluster_error_retry_attempts=10,
        **options,
    )


class _SentinelRedis(Redis):  # type: ignore[misc]  # redis is Any to mypy (pyproject)
    """A client of the primary that also closes its Sentinel clients on `aclose`."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        manager = getattr(self.connection_pool, "sentinel_manager", None)
        if manager is not None:
            await manager.aclose()


def sentinel_addresses(value: str) -> list[tuple[str, int]]:
    """REDIS_SENTINELS, `host:port,host:port` -> [(host, port), ...]; ValueError on a
    malformed entry."""
    return host_ports(value, "REDIS_SENTINELS")


def host_ports(value: str, setting: str) -> list[tuple[str, int]]:
    """`host:port,host:port` -> [(host, port), ...]; ValueError naming `setting` on a
    malformed entry."""
    addresses = []
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        host, sep, port = item.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"{setting} entries are host:port, not {item!r}")
        addresses.append((host.strip("[]"), int(port)))
    return addresses
