"""Session records: Redis (L2, SESSION_TTL after the last activity) behind an
in-process L1 cache.

The owner check runs on every connect, so the record is cached in process; a node
that changes a record publishes its id and every node drops its L1 copy. An open by
the owner refreshes the TTL of the record and of everything the session stores, in
one script, so the owner record never expires before the session's data. A session
created by that script gets its `session.opened` event in the event outbox in the
same step (see services/common/event_outbox.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from redis.asyncio import Redis

from services.common.clock import now_iso
from services.common.errors import storage_op
from services.common.event_outbox import OutboxWriter, outbox_max
from services.common.events import EventType
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
        self,
        redis: Redis,
        keys: Keys,
        *,
        session_ttl: int,
        l1_max: int,
        l1_ttl: float,
        node_id: str = "",
        outbox_max: int = 0,
    ) -> None:
        """`node_id` goes into the events; `outbox_max` bounds the event outbox (0: no
        events are written)."""
        self._r = redis
        self._k = keys
        self._events = OutboxWriter(keys, node_id, outbox_max)
        self._ttl = session_ttl
        self._l1: L1Cache[SessionRecord] = L1Cache(l1_max, l1_ttl, time.monotonic)
        self._open = SESSION_OPEN.bind(redis)

    @classmethod
    def from_settings(cls, redis: Redis, settings: Settings) -> SessionStore:
        keys = Keys(settings.redis_key_prefix)
        return cls(
            redis,
            keys,
            session_ttl=settings.session_ttl,
            l1_max=settings.cache_l1_max_size,
            l1_ttl=settings.cache_l1_expire_write,
            node_id=settings.node_id,
            outbox_max=outbox_max(settings),
        )

    async def open(self, session_id: str, user_id: str) -> tuple[SessionRecord, bool]:
        """Create or rejoin a session; returns (record, created). Raises Forbidden, or
        StorageError when Redis fails.

        An L1 hit answers without Redis (a reconnect storm after a node dies costs no
        round trips); `last_seen` and the TTLs are then refreshed when the L1 entry
        expires. Another user's open changes nothing in Redis.
        """
        cached = self._l1.get(session_id)
        if cached is not None:
            if cached.owner != user_id:
                raise Forbidden(session_id)
            return cached, False
        now = now_iso()
        owner, created_at, created = await self._open(
            keys={
                "session": self._k.session(session_id),
                "user_sessions": self._k.user_sessions(user_id),
                "history": self._k.session_history(session_id),
                "session_messages": self._k.session_messages(session_id),
                **self._events.script_keys(),
            },
            args={
                "user_id": user_id,
                "now_iso": now,
                "ttl_s": self._ttl,
                "session_id": session_id,
                # Written only if the script creates the session.
                **self._events.script_args(
                    EventType.SESSION_OPENED, session_id, now, user_id=user_id
                ),
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
