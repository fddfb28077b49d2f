"""The node's relay: one reader that XREADs every followed message stream at once.

Connections subscribe to message ids; the reader pushes decoded entries up through
`Subscriber.on_entries` and never knows about WebSockets. One blocking Redis
connection serves the whole node. New subscriptions wake the reader through a
per-node wake stream, so a new key is read at once, not after the block timeout.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

from services.common.keys import DONE_ENTRY_ID, Keys, chunk_entry_id
from services.common.streams import StreamEntry, decode_entry
from services.ws_gateway.metrics import GatewayMetrics

log = logging.getLogger(__name__)

BLOCK_MS = 5_000
COUNT_PER_STREAM = 512
#: A followed stream with no entry for this long is checked for a missing generator.
STALL_AFTER_S = 2.0


class Subscriber(Protocol):
    def on_entries(self, message_id: str, entries: list[StreamEntry]) -> None: ...


class Relay:
    def __init__(
        self,
        redis: Redis,
        blocking_redis: Redis,
        keys: Keys,
        node_id: str,
        metrics: GatewayMetrics,
        on_stall: Callable[[str], Awaitable[None]],
        stall_check_interval: float,
    ) -> None:
        self._r = redis
        self._br = blocking_redis
        self._k = keys
        self._wake_key = keys.node_wake(node_id)
        self._metrics = metrics
        self._on_stall = on_stall
        self._stall_interval = stall_check_interval
        self._subs: dict[str, set[Subscriber]] = {}
        self._pos: dict[str, str] = {}
        self._key_to_mid: dict[str, str] = {}
        self._active_at: dict[str, float] = {}

    @property
    def followed(self) -> int:
        return len(self._subs)

    async def subscribe(self, message_id: str, sub: Subscriber, after_seq: int) -> None:
        """Follow a stream from after `after_seq` (a new key) or from where the reader is."""
        subs = self._subs.setdefault(message_id, set())
        subs.add(sub)
        if message_id not in self._pos:
            self._pos[message_id] = chunk_entry_id(after_seq)
            self._key_to_mid[self._k.message_stream(message_id)] = message_id
            self._active_at[message_id] = time.monotonic()
            await self._r.xadd(self._wake_key, {"k": message_id}, maxlen=16, approximate=True)

    def unsubscribe(self, message_id: str, sub: Subscriber) -> None:
        subs = self._subs.get(message_id)
        if subs is None:
            return
        subs.discard(sub)
        if not subs:
            del self._subs[message_id]
            self._pos.pop(message_id, None)
            self._active_at.pop(message_id, None)
            self._key_to_mid.pop(self._k.message_stream(message_id), None)

    async def run(self) -> None:
        """Read forever; Redis errors are logged and retried with backoff."""
        backoff = 0.1
        while True:
            try:
                await self._read_once()
                backoff = 0.1
            except RedisError as exc:
                log.warning("relay read failed", extra={"detail": str(exc)})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    async def _read_once(self) -> None:
        streams: dict[str, str] = {self._wake_key: "$"}
        for mid, pos in self._pos.items():
            if pos != DONE_ENTRY_ID:
                streams[self._k.message_stream(mid)] = pos
        reply = await self._br.xread(streams, count=COUNT_PER_STREAM, block=BLOCK_MS)
        self._metrics.reader_batches.inc()
        now = time.monotonic()
        for key, raw_entries in reply or []:
            found = self._key_to_mid.get(key)
            if found is None or found not in self._pos or not raw_entries:
                continue
            mid = found
            self._pos[mid] = raw_entries[-1][0]
            self._active_at[mid] = now
            entries = [decode_entry(eid, fields) for eid, fields in raw_entries]
            for sub in list(self._subs.get(mid, ())):
                sub.on_entries(mid, entries)

    async def watch_stalls(self) -> None:
        """Hand streams nobody is generating to `on_stall` (it decides what to do)."""
        while True:
            await asyncio.sleep(self._stall_interval)
            now = time.monotonic()
            stalled = [
                mid
                for mid, at in self._active_at.items()
                if now - at > STALL_AFTER_S and self._pos.get(mid) != DONE_ENTRY_ID
            ]
            for mid in stalled:
                self._active_at[mid] = now
                try:
                    await self._on_stall(mid)
                except RedisError as exc:
                    log.warning("stall check failed", extra={"detail": str(exc)})
