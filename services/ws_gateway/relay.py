"""The node's relay: the one Redis reader that XREADs every followed message stream.

It asks the hub which streams to read and where from, blocks on all of them (and on
the node's wake stream) with one connection, decodes what arrives and hands it back
to the hub. It knows nothing of WebSockets. A new stream wakes the reader through
the per-node wake stream, so its first entries are read at once, not after the block
timeout. An entry that cannot be decoded is logged, counted and skipped: it must not
stop the node's only reader.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from redis.asyncio import Redis
from redis.exceptions import RedisError

from services.common.errors import StorageError
from services.common.keys import Keys
from services.common.streams import StreamEntry, decode_entry
from services.common.tasks import raise_if_cancelling
from services.ws_gateway.hub import FollowedStream, Hub, Member
from services.ws_gateway.metrics import GatewayMetrics

log = logging.getLogger(__name__)

BLOCK_MS = 5_000
COUNT_PER_STREAM = 512
#: The wake stream's TTL, refreshed by each wake-up: the stream of a node that is gone
#: for good does not stay in Redis (a live node's reader does not need it to exist).
WAKE_TTL_S = 3_600


class Relay:
    def __init__(
        self,
        redis: Redis,
        blocking_redis: Redis,
        keys: Keys,
        node_id: str,
        hub: Hub,
        metrics: GatewayMetrics,
        on_reconnect: Callable[[], None] | None = None,
        batch_s: float = 0.0,
    ) -> None:
        """`batch_s`: after a read that brought entries, wait this long before the next
        one, so that under load one XREAD (naming every followed stream) brings many
        entries instead of one or two."""
        self._r = redis
        self._br = blocking_redis
        self._k = keys
        self._wake_key = keys.node_wake(node_id)
        self._hub = hub
        self._metrics = metrics
        self._on_reconnect = on_reconnect
        """Called when Redis answers again after a failed read (it may have lost data)."""
        self._batch_s = batch_s
        self._wake_position = "0-0"
        """The last wake entry read. Reading from "$" instead would miss a wake-up
        written between listing the streams and blocking (a 5 s delay)."""

    async def follow(self, message_id: str, member: Member, after_seq: int) -> None:
        """Follow a stream: a new one from after `after_seq`, else from where the reader
        is. Raises StorageError if the reader could not be woken."""
        key = self._k.message_stream(message_id)
        if self._hub.follow(message_id, key, member, after_seq, time.monotonic()):
            try:
                async with self._r.pipeline(transaction=True) as pipe:
                    pipe.xadd(self._wake_key, {"k": message_id}, maxlen=16, approximate=True)
                    pipe.expire(self._wake_key, WAKE_TTL_S)
                    await pipe.execute()
            except RedisError as exc:
                raise StorageError(f"waking the relay: {exc}") from exc

    def unfollow(self, message_id: str, member: Member) -> None:
        self._hub.unfollow(message_id, member)

    async def run(self) -> None:
        """Read forever; Redis errors are logged and retried with backoff. Once Redis
        answers again after a failure, `on_reconnect` is told before the next read."""
        backoff = 0.1
        failed = False
        while True:
            raise_if_cancelling()
            try:
                if failed:
                    await self._br.ping()
                    failed = False
                    log.warning("relay reconnected to redis")
                    if self._on_reconnect is not None:
                        self._on_reconnect()
                if await self.read_once() and self._batch_s > 0:
                    await asyncio.sleep(self._batch_s)
                backoff = 0.1
            except RedisError as exc:
                raise_if_cancelling()
                failed = True
                log.warning("relay read failed", extra={"detail": str(exc)})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    async def read_once(self, block_ms: int = BLOCK_MS) -> int:
        """One XREAD over every followed stream and the wake stream; returns how many
        stream entries it delivered."""
        reading = {s.key: s for s in self._hub.to_read()}
        streams = {
            self._wake_key: self._wake_position,
            **{key: s.position for key, s in reading.items()},
        }
        reply = await self._br.xread(streams, count=COUNT_PER_STREAM, block=block_ms)
        self._metrics.reader_batches.inc()
        now = time.monotonic()
        delivered = 0
        for key, raw_entries in reply or []:
            if key == self._wake_key and raw_entries:
                self._wake_position = raw_entries[-1][0]
                continue
            stream = reading.get(key)
            if stream is None or not raw_entries:
                continue
            delivered += len(raw_entries)
            self._hub.deliver(stream, raw_entries[-1][0], self._decode(stream, raw_entries), now)
        return delivered

    def _decode(
        self, stream: FollowedStream, raw: list[tuple[str, dict[str, str]]]
    ) -> list[StreamEntry]:
        entries: list[StreamEntry] = []
        for entry_id, fields in raw:
            try:
                entries.append(decode_entry(entry_id, fields))
            except ValueError as exc:
                self._metrics.malformed_entries.inc()
                log.error(
                    "skipped a malformed stream entry",
                    extra={"message_id": stream.message_id, "detail": str(exc)},
                )
        return entries
