"""Session records: Redis (L2, idle TTL) behind an in-process L1 cache.

The owner check runs on every connect, so the record is cached in process; a node
that changes a record publishes its id and every node drops its L1 copy.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from redis.asyncio import Redis

from services.common.clock import now_iso
from services.common.errors import storage_op
from services.common.keys import Keys
from services.common.scripts import SESSION_OPEN
from services.common.settings import Settings
from services.ws_gateway.l1cache import L1Cache


@dataclass(frozen=True, slots=True)
class SessionRecord:
    session_id: str
    owner: str
    created_at: str


class Forbidden(Exception):
    """The session belongs to another user (close 4403)."""


class SessionStore:
    def __init__(
        self, redis: Redis, keys: Keys, *, l2_ttl: int, l1_max: int, l1_ttl: float
    ) -> None:
        self._r = redis
        self._k = keys
        self._ttl = l2_ttl
        self._l1: L1Cache[SessionRecord] = L1Cache(l1_max, l1_ttl, time.monotonic)
        self._open = SESSION_OPEN.bind(redis)

    @classmethod
    def from_settings(cls, redis: Redis, settings: Settings) -> SessionStore:
        keys = Keys(settings.redis_key_prefix)
        l1_max, l1_ttl = settings.cache_l1_max_size, settings.cache_l1_expire_write
        return cls(redis, keys, l2_ttl=settings.cache_l2_ttl, l1_max=l1_max, l1_ttl=l1_ttl)

    async def open(self, session_id: str, user_id: str) -> tuple[SessionRecord, bool]:
        """Create or rejoin a session; returns (record, created). Raises Forbidden, or
        StorageError when Redis fails.

        An L1 hit answers without Redis (a reconnect storm after a node dies costs no
        round trips); `last_seen` is then refreshed when the L1 entry expires.
        """
        cached = self._l1.get(session_id)
        if cached is not None:
            if cached.owner != user_id:
                raise Forbidden(session_id)
            return cached, False
        owner, created_at, created = await self._open(
            keys={
                "session": self._k.session(session_id),
                "sessions_active": self._k.sessions_active(),
                "user_sessions": self._k.user_sessions(user_id),
            },
            args={
                "user_id": user_id,
                "now_iso": now_iso(),
                "ttl_s": self._ttl,
                "session_id": session_id,
            },
        )
        record = SessionRecord(session_id, owner, created_at)
        self._l1.put(session_id, record)
        if owner != user_id:
            raise Forbidden(session_id)
        return record, bool(created)

    def invalidate(self, session_id: str) -> None:
        self._l1.invalidate(session_id)

    @storage_op
    async def owner(self, session_id: str) -> str | None:
        """The session's owner, or None when there is no such session (L1 first)."""
        cached = self._l1.get(session_id)
        if cached is not None:
            return cached.owner
        owner = await self._r.hget(self._k.session(session_id), "owner")
        return str(owner) if owner is not None else None
