"""Draining the event outbox to Kafka: every gateway and worker runs one `EventDrainer`.

The scripts that change state write the event reporting the change into the Redis
outbox in the same step (event_outbox.py), so an event exists if and only if its
change happened, and it outlives a restart of any node and an outage of Kafka (up to
KAFKA_BUFFER_MAX events; past that the scripts count instead of adding, exported as
`kafka_events_dropped`).

There is one outbox per key bucket (one with a single Redis; REDIS_BUCKETS in Redis
Cluster, see keys.py). Each node is one consumer, named by its node id, of the
consumer group of every bucket's outbox; with one outbox it blocks on it, with
several it polls them in turn and rests POLL_IDLE_S when none had anything. It first
sends its own pending entries (read before a restart, or reclaimed), then new ones,
in batches of up to BATCH_MAX: every record of a batch goes to the producer, then
all are awaited (acks=all), and only then are the entries acknowledged and deleted.
On a Kafka error the producer is closed and, after a backoff, the same pending
entries are sent again. Every RECLAIM_EVERY_S a node takes over the entries left
pending for more than RECLAIM_IDLE_MS (their node died mid-batch). So delivery is at
least once, and consumers dedupe by `event_id` (see events.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from prometheus_client import CollectorRegistry, Counter, Gauge

from services.common.errors import StorageError
from services.common.event_outbox import EVENT_FIELD, EventOutbox, OutboxEntry, total_stats
from services.common.settings import Settings
from services.common.tasks import raise_if_cancelling

log = logging.getLogger(__name__)

#: Events per read and per send.
BATCH_MAX = 500
#: How long a read waits for new events (one outbox).
BLOCK_MS = 1_000
#: With several outboxes (Redis Cluster), the rest after a round that found none.
POLL_IDLE_S = 0.25
#: Entries pending this long with any consumer are taken over (a live drainer acks or
#: re-reads its own well within it: a send is bounded by SEND_TIMEOUT_S).
RECLAIM_IDLE_MS = 30_000
RECLAIM_EVERY_S = 10.0
#: How often the pending and dropped gauges are read from Redis.
STATS_EVERY_S = 2.0
SEND_TIMEOUT_S = 15.0
BACKOFF_S = 0.25
MAX_BACKOFF_S = 5.0


class Producer(Protocol):
    """The part of AIOKafkaProducer the drainer uses."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def send(
        self, topic: str, value: bytes | None = None, key: bytes | None = None
    ) -> asyncio.Future[Any]: ...


def build_producer(settings: Settings) -> Producer:
    producer: Producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        acks="all",
        enable_idempotence=settings.kafka_idempotence,
        client_id=settings.node_id,
        request_timeout_ms=5000,
        linger_ms=5,
    )
    return producer


@dataclass
class _Bucket:
    """A drainer's state for one outbox."""

    outbox: EventOutbox
    group_ready: bool = False
    own_pending: bool = True
    """Read this consumer's pending entries (id 0) before new ones (>)."""


class EventDrainer:
    """Sends the outboxes to Kafka as consumer `consumer` (default: the node id)."""

    def __init__(
        self,
        outbox: EventOutbox | Sequence[EventOutbox],
        settings: Settings,
        registry: CollectorRegistry,
        *,
        consumer: str | None = None,
        producer_factory: Callable[[], Producer] | None = None,
        batch_max: int = BATCH_MAX,
        block_ms: int = BLOCK_MS,
        reclaim_idle_ms: int = RECLAIM_IDLE_MS,
        reclaim_every_s: float = RECLAIM_EVERY_S,
        stats_every_s: float = STATS_EVERY_S,
        max_backoff_s: float = MAX_BACKOFF_S,
    ) -> None:
        outboxes = [outbox] if isinstance(outbox, EventOutbox) else list(outbox)
        if not outboxes:
            raise ValueError("an EventDrainer needs at least one outbox")
        self._buckets = [_Bucket(o) for o in outboxes]
        self._topic = settings.kafka_topic
        self.consumer = consumer or settings.node_id
        self._new_producer = producer_factory or partial(build_producer, settings)
        self._batch_max = batch_max
        self._block_ms = block_ms
        self._reclaim_idle_ms = reclaim_idle_ms
        self._reclaim_every = reclaim_every_s
        self._stats_every = stats_every_s
        self._max_backoff = max_backoff_s
        self._backoff = BACKOFF_S
        self._producer: Producer | None = None
        self._kafka_down_logged = False
        self._next_reclaim = 0.0
        self._next_stats = 0.0
        self._dropped_seen: int | None = None
        self.sent = Counter(
            "kafka_events_sent",
            "Events Kafka acknowledged (an event sent again after a failure counts again)",
            registry=registry,
        )
        self.pending = Gauge(
            "kafka_events_pending",
            "Events in the Redis outbox not yet acknowledged by Kafka (all nodes)",
            registry=registry,
        )
        self.dropped = Gauge(
            "kafka_events_dropped",
            "Events never written because the outbox was full (KAFKA_BUFFER_MAX; all nodes)",
            registry=registry,
        )

    @property
    def connected(self) -> bool:
        return self._producer is not None

    async def run(self) -> None:
        """Drain forever (a loop of the node's TaskSupervisor). Kafka and Redis failures
        are logged and retried here with backoff; the producer is closed on the way out."""
        redis_backoff = BACKOFF_S
        try:
            while True:
                try:
                    await self.drain_once()
                    redis_backoff = BACKOFF_S
                except StorageError as exc:
                    raise_if_cancelling()
                    # Redis may have lost the group with its data: create it again, and
                    # look at this consumer's pending entries first.
                    for bucket in self._buckets:
                        bucket.group_ready = False
                    log.warning("event outbox unavailable", extra={"detail": str(exc)})
                    await asyncio.sleep(redis_backoff)
                    redis_backoff = min(redis_backoff * 2, self._max_backoff)
        finally:
            await self.close()

    async def close(self) -> None:
        """Close the producer (the pending entries stay in Redis)."""
        producer, self._producer = self._producer, None
        if producer is not None:
            await _stop(producer)

    async def drain_once(self) -> int:
        """One round: the gauges and a reclaim when due, then one batch read and sent
        from each outbox. Returns how many events Kafka took; raises StorageError when
        Redis fails."""
        now = time.monotonic()
        for bucket in self._buckets:
            if not bucket.group_ready:
                await bucket.outbox.ensure_group()
                bucket.group_ready = True
                bucket.own_pending = True
        if now >= self._next_stats:
            await self.refresh_stats()
            self._next_stats = now + self._stats_every
        if self._producer is None and not await self._connect():
            await self._back_off()
            return 0
        reclaim = now >= self._next_reclaim
        if reclaim:
            self._next_reclaim = now + self._reclaim_every
        # One outbox: block on it. Several: poll each, rest when none had anything.
        block_ms = self._block_ms if len(self._buckets) == 1 else None
        delivered = 0
        for bucket in self._buckets:
            sent = await self._drain_bucket(bucket, reclaim, block_ms)
            if sent is None:
                return delivered
            delivered += sent
        if delivered == 0 and block_ms is None:
            await asyncio.sleep(POLL_IDLE_S)
        return delivered

    async def _drain_bucket(
        self, bucket: _Bucket, reclaim: bool, block_ms: int | None
    ) -> int | None:
        """One batch of one outbox; None when Kafka failed (after the backoff)."""
        outbox = bucket.outbox
        if reclaim:
            claimed = await outbox.reclaim(
                self.consumer, min_idle_ms=self._reclaim_idle_ms, count=self._batch_max
            )
            if claimed:
                log.warning("took over events left pending", extra={"detail": claimed})
                bucket.own_pending = True
        if bucket.own_pending:
            batch = await outbox.read(self.consumer, count=self._batch_max, pending=True)
            if not batch:
                bucket.own_pending = False
                return 0
        else:
            batch = await outbox.read(
                self.consumer, count=self._batch_max, pending=False, block_ms=block_ms
            )
            if not batch:
                return 0
        delivered = await self._send(batch)
        if delivered is None:
            bucket.own_pending = True  # the same entries, after the backoff
            await self._back_off()
            return None
        await outbox.ack([entry.entry_id for entry in batch])
        self.sent.inc(delivered)
        self._backoff = BACKOFF_S
        return delivered

    async def refresh_stats(self) -> None:
        """Set the pending and dropped gauges from Redis; log when events were dropped."""
        totals = await total_stats([bucket.outbox for bucket in self._buckets])
        length, dropped = totals.length, totals.dropped
        self.pending.set(length)
        self.dropped.set(dropped)
        seen, self._dropped_seen = self._dropped_seen, dropped
        if seen is not None and dropped > seen:
            log.error(
                "event outbox full: events dropped",
                extra={"detail": f"{dropped - seen} more, {dropped} in all"},
            )
        elif seen is None and dropped:
            log.warning("events dropped so far (outbox full)", extra={"detail": dropped})

    async def _connect(self) -> bool:
        producer = self._new_producer()
        try:
            await producer.start()
        except (KafkaError, OSError) as exc:
            await _stop(producer)
            if not self._kafka_down_logged:
                self._kafka_down_logged = True
                log.warning(
                    "kafka unavailable; events wait in the redis outbox",
                    extra={"detail": str(exc)},
                )
            return False
        except BaseException:
            await _stop(producer)
            raise
        self._producer = producer
        self._kafka_down_logged = False
        log.info("kafka producer connected")
        return True

    async def _send(self, batch: list[OutboxEntry]) -> int | None:
        """Send every record of the batch, then wait for all; the count sent, or None
        if Kafka failed (the producer is then closed)."""
        producer = self._producer
        assert producer is not None
        records = [r for r in map(_record, batch) if r is not None]
        futures: list[asyncio.Future[Any]] = []
        try:
            async with asyncio.timeout(SEND_TIMEOUT_S):
                for key, value in records:
                    futures.append(await producer.send(self._topic, value=value, key=key))
                await asyncio.gather(*futures)
        except (KafkaError, OSError, TimeoutError) as exc:
            _discard(futures)
            log.warning(
                "kafka send failed; the batch stays pending and is sent again",
                extra={"detail": f"{len(records)} events: {exc!r}"},
            )
            await self.close()
            return None
        return len(records)

    async def _back_off(self) -> None:
        await asyncio.sleep(self._backoff)
        self._backoff = min(self._backoff * 2, self._max_backoff)


def _record(entry: OutboxEntry) -> tuple[bytes, bytes] | None:
    """(key, value) of an outbox entry: the session id and the event's JSON as stored.
    None for an entry deleted while pending, or (logged) a malformed one: either is
    acknowledged all the same, never retried."""
    if entry.deleted:
        return None
    try:
        if entry.event_json is None:
            raise KeyError(EVENT_FIELD)
        session_id = json.loads(entry.event_json)["session_id"]
        if not isinstance(session_id, str):
            raise TypeError(f"session_id is {type(session_id).__name__}")
    except (ValueError, KeyError, TypeError) as exc:
        log.error(
            "skipped a malformed outbox entry",
            extra={"detail": f"{entry.entry_id}: {exc!r}"},
        )
        return None
    return session_id.encode(), entry.event_json.encode()


def _discard(futures: list[asyncio.Future[Any]]) -> None:
    """Cancel the sends still waiting and mark the failed ones' errors as seen."""
    for future in futures:
        if not future.done():
            future.cancel()
        elif not future.cancelled():
            future.exception()


#: Longest wait for a producer to close: its flush must never hold up a shutdown (what
#: it did not send stays pending in the Redis outbox).
PRODUCER_CLOSE_S = 2.0


async def _stop(producer: Producer) -> None:
    with contextlib.suppress(KafkaError, OSError, TimeoutError):
        async with asyncio.timeout(PRODUCER_CLOSE_S):
            await producer.stop()
