"""Building the Redis client at the edge, with a retry policy for transient errors."""

from __future__ import annotations

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from services.common.settings import Settings


def redis_from_settings(settings: Settings, *, blocking: bool = False) -> Redis:
    """A client for REDIS_URL; `blocking` gives one without a socket timeout, for XREAD BLOCK.

    The blocking client does not retry by itself: its one user, the relay, retries with
    its own backoff and must see every lost connection (Redis may have come back with
    less data; see `ws_gateway/audit.py`)."""
    retry = Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=0 if blocking else 3)
    return Redis.from_url(
        settings.redis_url,
        decode_responses=True,
        retry=retry,
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        socket_connect_timeout=2.0,
        socket_timeout=None if blocking else 5.0,
        health_check_interval=30,
        max_connections=512,
    )
