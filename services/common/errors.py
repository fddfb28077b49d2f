"""The project's storage exception, and the one place redis-py's errors become it.

Stores raise `StorageError` for any failure of the storage layer, so handlers and
orchestration code never import redis-py (as httpx maps httpcore's errors to its own).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

from redis.exceptions import RedisError

P = ParamSpec("P")
T = TypeVar("T")


class StorageError(Exception):
    """Redis failed or could not be reached; the operation may or may not have happened."""


def storage_op(fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """Decorate a store method so redis-py's errors leave it as `StorageError`."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await fn(*args, **kwargs)
        except RedisError as exc:
            raise StorageError(f"{fn.__name__}: {exc}") from exc

    return wrapper
