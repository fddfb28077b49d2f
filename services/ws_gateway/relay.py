"""The node's relay: the Redis reader that XREADs every followed message stream.

It asks the hub which streams to read and where from, blocks on all of them (and on
the node's wake stream) with one connection, decodes what arrives and hands it back
to the hub. In Redis Cluster one XREAD may name keys of one slot only, so there is a
reader (a *lane*) per key bucket in use, each with its own wake stream in its bucket;
with one bucket (a single Redis) one lane reads everything. It knows nothing of
WebSockets. A new stream wakes its lane's reader through the node's wake stream of
that bucket, so its first entries are read at once, not after the block timeout. An
entry that cannot be decoded is logged, counted and skipped: it must not stop a
reader.
"""

from __future__ import annotations

import asyncio
import logging
import time
from asyncio import FIRST_COMPLETED
from collections.abc import Callable
from dataclasses import dataclass

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


@dataclass(eq=False)
class _Lane:
    """A reader of one key bucket's streams (or of all, with one bucket)."""

    bucket: int
    wake_key: str
    wake_position: str = "0-0"
    """The last wake entry read. Reading from "$" instead would miss a wake-up written
    between listing the streams and blocking (a 5 s delay)."""
    task: asyncio.Task[None] | None = None


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
        self._node_id = node_id
        self._lanes: dict[int, _Lane] = {0: _Lane(0, keys.node_wake(node_id, 0))}
        self._new_lane = asyncio.Event()
        self._hub = hub
        self._metrics = metrics
        self._on_reconnect = on_reconnect
        """Called when Redis answers again after a failed read (it may have lost data)."""
        self._batch_s = batch_s

    async def follow(
        self, message_id: str, member: Member, after_seq: int, key: str | None = None
    ) -> None:
        """Follow a stream: a new one from after `after_seq`, else from where the reader
        is. Raises StorageError if the reader could not be woken. `key` is the stream's
        Redis key when it is not the message's chunk stream (a durable stream's data,
        whose id carries its bucket as a message id does)."""
        key = key or self._k.message_stream(message_id)
        if self._hub.follow(message_id, key, member, after_seq, time.monotonic()):
            wake_key = self._lane(self._k.bucket_of_message(message_id)).wake_key
            try:
                async with self._r.pipeline(transaction=True) as pipe:
                    pipe.xadd(wake_key, {"k": message_id}, maxlen=16, approximate=True)
                    pipe.expire(wake_key, WAKE_TTL_S)
                    await pipe.execute()
            except RedisError as exc:
                raise StorageError(f"waking the relay: {exc}") from exc

    def unfollow(self, message_id: str, member: Member) -> None:
        self._hub.unfollow(message_id, member)

    def _lane(self, bucket: int) -> _Lane:
        """The lane of a bucket, made (and its reader started by `run`) on first use."""
        lane = self._lanes.get(bucket)
        if lane is None:
            lane = self._lanes[bucket] = _Lane(bucket, self._k.node_wake(self._node_id, bucket))
            self._new_lane.set()
        return lane

    async def run(self) -> None:
        """Run a reader per lane until cancelled (one lane with one bucket); a lane's
        unexpected error ends the run (its supervisor starts it again)."""
        waiter: asyncio.Task[bool] | None = None
        try:
            while True:
                self._new_lane.clear()
                for lane in self._lanes.values():
                    if lane.task is None or lane.task.done():
                        lane.task = asyncio.create_task(
                            self._read_lane(lane), name=f"relay-lane-{lane.bucket}"
                        )
                waiter = asyncio.create_task(self._new_lane.wait())
                lanes = [lane.task for lane in self._lanes.values() if lane.task is not None]
                done, _ = await asyncio.wait([waiter, *lanes], return_when=FIRST_COMPLETED)
                waiter.cancel()
                for task in lanes:
                    if task in done:
                        task.result()  # raises what ended the lane
        finally:
            tasks = [lane.task for lane in self._lanes.values() if lane.task is not None]
            if waiter is not None:
                tasks.append(waiter)  # type: ignore[arg-type]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _read_lane(self, lane: _Lane) -> None:
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
                if await self.read_once(lane=lane) and self._batch_s > 0:
                    await asyncio.sleep(self._batch_s)
                backoff = 0.1
            except RedisError as exc:
                raise_if_cancelling()
                failed = True
                log.warning("relay read failed", extra={"detail": str(exc)})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    async def read_once(self, block_ms: int = BLOCK_MS, lane: _Lane | None = None) -> int:
        """One XREAD over every followed stream of the lane (default: bucket 0's, all
        of them with one bucket) and its wake stream; returns how many stream entries
        it delivered."""
        lane = lane or self._lanes[0]
        split = self._k.buckets > 1
        reading = {
            s.key: s
            for s in self._hub.to_read()
            if not split or self._k.bucket_of_message(s.message_id) == lane.bucket
        }
        streams = {
            lane.wake_key: lane.wake_position,
            **{key: s.position for key, s in reading.items()},
        }
        reply = await self._br.xread(streams, count=COUNT_PER_STREAM, block=block_ms)
        self._metrics.reader_batches.inc()
        now = time.monotonic()
        delivered = 0
        for key, raw_entries in reply or []:
            if key == lane.wake_key and raw_entries:
                lane.wake_position = raw_entries[-1][0]
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
