"""Building the Redis client at the edge, with a retry policy for transient errors."""

from __future__ import annotations

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from services.common.settings import Settings


def redis_from_settings(settings: Settings, *, blocking: bool = False) -> Redis:
    """A client for REDIS_URL; `blocking` gives one without a socket timeout, for XREAD BLOCK."""
    retry = Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=3)
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
