"""The consumer loop: `chat.events` in, usage totals in Redis out.

One aiokafka consumer of group `usage`, offsets committed by hand: a poll's records
are counted one by one (accounting.py turns each into a delta, the store adds it
once), and only then are their offsets committed. A crash between counting and
committing delivers those records again, and the store, which remembers counted event
ids, changes nothing for them; so is a duplicate the producers sent (at least once).

Redis failing holds the loop on the record it is at, retrying with backoff, so
nothing is committed past an event that was not counted. A malformed record is
logged, counted and skipped. A failed commit is logged and the loop goes on (a later
commit covers it; until then a restart reads those records again, harmlessly).
Kafka errors while polling end `run`; the node's TaskSupervisor starts it again, and
the new consumer resumes from the committed offsets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError
from prometheus_client import CollectorRegistry, Counter

from services.common.errors import StorageError
from services.common.tasks import raise_if_cancelling
from services.usage.accounting import BadEvent, UsageDelta, delta_of, next_offsets
from services.usage.settings import UsageSettings

log = logging.getLogger(__name__)

#: How long a poll waits for records.
POLL_MS = 1_000
BACKOFF_S = 0.1
MAX_BACKOFF_S = 5.0
#: Longest wait for the consumer to leave its group on the way out.
STOP_TIMEOUT_S = 5.0


class Consumer(Protocol):
    """The part of AIOKafkaConsumer the loop uses."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> Mapping[TopicPartition, Sequence[ConsumerRecord[Any, Any]]]: ...

    async def commit(self, offsets: Mapping[TopicPartition, int] | None = None) -> None: ...


class Ledger(Protocol):
    """Where deltas go (UsageStore)."""

    def record(self, delta: UsageDelta) -> Awaitable[bool]: ...


def build_consumer(settings: UsageSettings) -> Consumer:
    """A consumer of the topic in the group, committing by hand, from the earliest
    offset when the group has none (a new group counts the topic's whole history)."""
    consumer: Consumer = AIOKafkaConsumer(
        settings.kafka_topic,
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=settings.group_id,
        client_id=settings.node_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    return consumer


class UsageConsumer:
    """Counts `chat.events` into the ledger; `run` is a loop for a TaskSupervisor."""

    def __init__(
        self,
        ledger: Ledger,
        consumer_factory: Callable[[], Consumer],
        registry: CollectorRegistry,
        *,
        batch_max: int = 500,
        poll_ms: int = POLL_MS,
        max_backoff_s: float = MAX_BACKOFF_S,
    ) -> None:
        self._ledger = ledger
        self._new_consumer = consumer_factory
        self._batch_max = batch_max
        self._poll_ms = poll_ms
        self._max_backoff = max_backoff_s
        self.handled = 0
        """Records this process has finished with (counted, duplicate, ignored or bad)."""
        self.committed: dict[TopicPartition, int] = {}
        """The offsets this process committed last, per partition."""
        self.events = Counter(
            "usage_events",
            "Records of chat.events by outcome: counted, duplicate (counted before), "
            "ignored (no usage), malformed (skipped)",
            ["outcome"],
            registry=registry,
        )
        self.commit_failures = Counter(
            "usage_commit_failures", "Offset commits Kafka refused", registry=registry
        )

    async def run(self) -> None:
        """Consume until cancelled; Kafka errors while starting or polling end it."""
        consumer = self._new_consumer()
        try:
            await consumer.start()
            log.info("usage consumer started")
            while True:
                await self.consume_once(consumer)
        finally:
            with contextlib.suppress(KafkaError, OSError, TimeoutError):
                async with asyncio.timeout(STOP_TIMEOUT_S):
                    await consumer.stop()

    async def consume_once(self, consumer: Consumer) -> int:
        """One poll: count its records, then commit their offsets. Returns how many."""
        batch = await consumer.getmany(timeout_ms=self._poll_ms, max_records=self._batch_max)
        handled = 0
        for records in batch.values():
            for record in records:
                await self._handle(record)
                handled += 1
        offsets = next_offsets(batch)
        if offsets:
            try:
                await consumer.commit(offsets)
            except KafkaError as exc:
                self.commit_failures.inc()
                log.warning(
                    "offset commit failed; those records may be read again (and skipped)",
                    extra={"detail": repr(exc)},
                )
            else:
                self.committed.update(offsets)
        self.handled += handled
        return handled

    async def _handle(self, record: ConsumerRecord[Any, Any]) -> None:
        value = record.value
        try:
            delta = delta_of(value if isinstance(value, bytes) else None)
        except BadEvent as exc:
            self.events.labels("malformed").inc()
            log.error(
                "skipped a malformed record",
                extra={"detail": f"{record.topic}/{record.partition}@{record.offset}: {exc}"},
            )
            return
        if delta is None:
            self.events.labels("ignored").inc()
            return
        counted = await self._record(delta)
        self.events.labels("counted" if counted else "duplicate").inc()

    async def _record(self, delta: UsageDelta) -> bool:
        """The ledger's answer, retried with backoff while Redis fails."""
        backoff = min(BACKOFF_S, self._max_backoff)
        while True:
            try:
                return await self._ledger.record(delta)
            except StorageError as exc:
                raise_if_cancelling()
                log.warning("redis unavailable; retrying the event", extra={"detail": str(exc)})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._max_backoff)
