"""Publishing chat events to Kafka without ever blocking chat.

Events go into a bounded buffer; one task sends them. While Kafka is down the buffer
fills; past KAFKA_BUFFER_MAX the oldest events are dropped, counted and logged.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from prometheus_client import CollectorRegistry, Counter, Gauge

from services.common.events import ChatEvent
from services.common.settings import Settings
from services.common.tasks import cancel_and_wait

log = logging.getLogger(__name__)


class EventPublisher:
    """Owns one producer and a sender task; `publish` never waits on Kafka."""

    def __init__(
        self, settings: Settings, registry: CollectorRegistry, *, enabled: bool | None = None
    ) -> None:
        self._settings = settings
        self._enabled = settings.kafka_enabled if enabled is None else enabled
        self._buffer: collections.deque[ChatEvent] = collections.deque()
        self._max = settings.kafka_buffer_max
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._producer: AIOKafkaProducer | None = None
        self.connected = False
        self.sent = Counter("kafka_events_sent", "Events delivered to Kafka", registry=registry)
        self.dropped = Counter(
            "kafka_events_dropped",
            "Events dropped because the buffer overflowed",
            registry=registry,
        )
        self.buffered = Gauge("kafka_events_buffered", "Events waiting", registry=registry)

    def publish(self, event: ChatEvent) -> None:
        if not self._enabled:
            return
        if len(self._buffer) >= self._max:
            self._buffer.popleft()
            self.dropped.inc()
            log.warning("kafka buffer full, dropped oldest event", extra={"event": event.type})
        self._buffer.append(event)
        self.buffered.set(len(self._buffer))
        self._wake.set()

    async def start(self) -> None:
        if self._enabled:
            self._task = asyncio.create_task(self._run(), name="kafka-publisher")

    async def stop(self, flush_timeout: float = 2.0) -> None:
        """Try to flush what is buffered within `flush_timeout`, then stop."""
        if self._task is None:
            return
        if self.connected and self._buffer:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(flush_timeout):
                    while self._buffer and self.connected:
                        self._wake.set()
                        await asyncio.sleep(0.05)
        await cancel_and_wait(self._task)
        await self._close_producer()

    async def _close_producer(self) -> None:
        if self._producer is not None:
            with contextlib.suppress(KafkaError, OSError):
                await self._producer.stop()
            self._producer = None
            self.connected = False

    async def _connect(self) -> AIOKafkaProducer:
        producer = AIOKafkaProducer(
            bootstrap_servers=self._settings.kafka_bootstrap_servers,
            acks="all",
            enable_idempotence=self._settings.kafka_idempotence,
            client_id=self._settings.node_id,
            request_timeout_ms=5000,
            linger_ms=5,
        )
        try:
            await producer.start()
        except BaseException:
            with contextlib.suppress(KafkaError, OSError):
                await producer.stop()
            raise
        return producer

    async def _run(self) -> None:
        backoff = 0.25
        while True:
            if self._producer is None:
                try:
                    self._producer = await self._connect()
                    self.connected = True
                    backoff = 0.25
                    log.info("kafka producer connected")
                except (KafkaError, OSError) as exc:
                    log.warning("kafka unavailable, buffering events", extra={"detail": str(exc)})
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 10.0)
                    continue
            if not self._buffer:
                self._wake.clear()
                await self._wake.wait()
                continue
            event = self._buffer[0]
            try:
                await self._producer.send_and_wait(
                    self._settings.kafka_topic, value=event.value(), key=event.key()
                )
            except (KafkaError, OSError) as exc:
                log.warning("kafka send failed, will retry", extra={"detail": str(exc)})
                await self._close_producer()
                continue
            if self._buffer and self._buffer[0] is event:
                self._buffer.popleft()
            self.sent.inc()
            self.buffered.set(len(self._buffer))
