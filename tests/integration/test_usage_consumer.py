"""The usage consumer (services/usage) against a real Kafka-protocol broker (Tansu,
memory storage) and a real Redis: every message.completed is counted once into its
user's totals, duplicates (at-least-once delivery) change nothing, other events and
malformed records count nothing, and a restarted consumer resumes from the offsets
its group committed without counting anything twice. The HTTP API reports the totals.

Tansu refuses the idempotent producer, so the test produces without it (acks=all)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from prometheus_client import CollectorRegistry
from pydantic import SecretStr
from redis.asyncio import Redis

from services.common.events import ChatEvent, EventType
from services.common.protocol import Usage
from services.common.tasks import cancel_and_wait
from services.usage import consumer as consumer_module
from services.usage.accounting import UsageDelta, UsageTotals, delta_of
from services.usage.consumer import UsageConsumer, build_consumer
from services.usage.keys import UsageKeys
from services.usage.settings import UsageSettings
from services.usage.store import UsageStore
from tests.conftest import free_ports
from tests.integration.conftest import RedisServer
from tests.integration.redis_helpers import eventually
from tests.integration.test_kafka_events import Broker

pytestmark = pytest.mark.integration

PARTITIONS = 3
GROUP_TIMING = {"session_timeout_ms": 1000, "heartbeat_interval_ms": 300}
"""The consumer group's timing in these tests (aiokafka's defaults: 10 s and 3 s). Tansu
holds a JoinGroup for half the session timeout, and numbers a group's first generation
0, for which aiokafka sends no LeaveGroup when it stops: a restarted consumer waits for
its predecessor to expire, a session timeout. With the defaults a consumer starts in
5 s and a restart takes about 18 s; with these, a second or two."""


@pytest.fixture(autouse=True)
def quick_group(monkeypatch: pytest.MonkeyPatch) -> None:
    """build_consumer's consumers (in this process) get GROUP_TIMING; the rest of
    their configuration is build_consumer's own."""
    monkeypatch.setattr(
        consumer_module, "AIOKafkaConsumer", partial(AIOKafkaConsumer, **GROUP_TIMING)
    )


@pytest.fixture
def broker() -> Iterator[Broker]:
    b = Broker(free_ports(1)[0])
    b.start()
    yield b
    b.stop()


def completed(user_id: str, prompt: int, completion: int, session_id: str = "s1") -> ChatEvent:
    return ChatEvent(
        type=EventType.MESSAGE_COMPLETED,
        session_id=session_id,
        node_id="worker-1",
        user_id=user_id,
        message_id=f"m_00{uuid.uuid4().hex[:8]}",
        data={
            "finish_reason": "stop",
            "usage": Usage(prompt_tokens=prompt, completion_tokens=completion).model_dump(),
        },
    )


@dataclass
class Topic:
    """One test's topic (its own name) and consumer group, and where each record landed."""

    broker: Broker
    redis_server: RedisServer
    name: str = field(default_factory=lambda: f"chat.events.{uuid.uuid4().hex[:8]}")
    group: str = field(default_factory=lambda: f"usage-{uuid.uuid4().hex[:8]}")
    prefix: str = field(default_factory=lambda: f"t{uuid.uuid4().hex[:8]}:")

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.broker.port}"

    def settings(self) -> UsageSettings:
        return UsageSettings(  # type: ignore[call-arg]
            _env_file=None,
            redis_url=SecretStr(f"redis://127.0.0.1:{self.redis_server.port}/0"),
            redis_key_prefix=self.prefix,
            kafka_bootstrap_servers=self.bootstrap,
            kafka_topic=self.name,
            group_id=self.group,
            node_id="usage-test",
        )

    async def create(self) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            await admin.create_topics(
                [NewTopic(self.name, num_partitions=PARTITIONS, replication_factor=1)]
            )
        finally:
            await admin.close()

    async def produce(self, *values: bytes) -> dict[TopicPartition, int]:
        """Each value as the drainer sends it (keyed by its session), acks=all. Returns,
        per partition written, one past its last record: what a consumer that has
        counted them all has committed there."""
        ends: dict[TopicPartition, int] = {}
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all")
        await producer.start()
        try:
            for value in values:
                key = ChatEvent.model_validate_json(value).key() if value[:1] == b"{" else b"x"
                meta = await producer.send_and_wait(self.name, value=value, key=key)
                tp = TopicPartition(meta.topic, meta.partition)
                ends[tp] = max(ends.get(tp, 0), meta.offset + 1)
        finally:
            await producer.stop()
        return ends


@pytest.fixture
async def topic(broker: Broker, redis_server: RedisServer) -> AsyncIterator[Topic]:
    t = Topic(broker, redis_server)
    await t.create()
    yield t


@dataclass
class Running:
    usage: UsageConsumer
    registry: CollectorRegistry
    task: asyncio.Task[None]

    def outcome(self, name: str) -> float:
        return self.registry.get_sample_value("usage_events_total", {"outcome": name}) or 0


def start(topic: Topic, store: UsageStore) -> Running:
    """A consumer of the topic's group, run as the service's supervisor runs it."""
    registry = CollectorRegistry()
    usage = UsageConsumer(
        store, lambda: build_consumer(topic.settings()), registry, poll_ms=100, max_backoff_s=0.2
    )
    return Running(usage, registry, asyncio.create_task(usage.run(), name="usage-consumer"))


async def test_each_event_counts_once_and_a_restart_resumes_from_the_committed_offsets(
    topic: Topic, redis: Redis
) -> None:
    keys = UsageKeys(topic.prefix)
    store = UsageStore(redis, keys, seen_ttl_s=3600)
    a1, a2 = completed("alice", 10, 100), completed("alice", 5, 50, session_id="s2")
    b1 = completed("bob", 1, 2)
    opened = ChatEvent(type=EventType.SESSION_OPENED, session_id="s1", node_id="g", user_id="alice")
    first = [a1.value(), opened.value(), a2.value(), a1.value(), b1.value(), b"not an event"]
    first_ends = await topic.produce(*first)

    running = start(topic, store)
    try:
        await eventually(
            lambda: running.usage.committed == first_ends, 30, "the consumer to commit all"
        )
    finally:
        await cancel_and_wait(running.task)
    assert running.usage.handled == len(first)
    assert await store.totals("alice") == UsageTotals(
        prompt_tokens=15, completion_tokens=150, answers=2
    )
    assert await store.totals("bob") == UsageTotals(prompt_tokens=1, completion_tokens=2, answers=1)
    assert await store.totals("carol") == UsageTotals()
    counts = {k: running.outcome(k) for k in ("counted", "duplicate", "ignored", "malformed")}
    assert counts == {"counted": 3, "duplicate": 1, "ignored": 1, "malformed": 1}
    # The processed ids expire (bounded), the totals do not.
    assert 0 < await redis.ttl(keys.seen("alice", a1.event_id)) <= 3600
    assert await redis.ttl(keys.totals("alice")) == -1

    # While it is down: one new event, and a copy of one it counted (a drainer that died
    # before acknowledging its batch sends it again).
    a3 = completed("alice", 1, 1)
    second = [a3.value(), b1.value()]
    second_ends = await topic.produce(*second)
    restarted = start(topic, store)
    try:
        await eventually(
            lambda: restarted.usage.committed == second_ends, 30, "the restart to commit all"
        )
    finally:
        await cancel_and_wait(restarted.task)
    # It read only what came after the committed offsets: none of the first batch again.
    assert restarted.usage.handled == len(second)
    assert restarted.outcome("counted") == 1 and restarted.outcome("duplicate") == 1
    assert await store.totals("alice") == UsageTotals(
        prompt_tokens=16, completion_tokens=151, answers=3
    )
    assert await store.totals("bob") == UsageTotals(prompt_tokens=1, completion_tokens=2, answers=1)


async def test_a_duplicate_after_its_record_was_counted_but_not_committed_changes_nothing(
    topic: Topic, redis: Redis
) -> None:
    """A consumer that died after counting and before committing: its group reads the
    record again, and the store, remembering the event id, leaves the totals alone."""
    store = UsageStore(redis, UsageKeys(topic.prefix), seen_ttl_s=3600)
    event = completed("dave", 3, 4)
    assert await store.record(_delta(event))  # counted, never committed
    ends = await topic.produce(event.value())
    running = start(topic, store)
    try:
        await eventually(lambda: running.usage.committed == ends, 30, "the commit")
    finally:
        await cancel_and_wait(running.task)
    assert running.outcome("duplicate") == 1 and running.outcome("counted") == 0
    assert await store.totals("dave") == UsageTotals(
        prompt_tokens=3, completion_tokens=4, answers=1
    )


def _delta(event: ChatEvent) -> UsageDelta:
    delta = delta_of(event.value())
    assert delta is not None
    return delta


async def test_the_service_counts_and_reports_over_http(topic: Topic) -> None:
    """`python -m services.usage`, configured by USAGE_* variables as compose does:
    its lifespan runs the consumer; GET /usage/{user_id} answers the totals, /health
    that Redis answers. Stopped by its pid (SIGTERM) at the end."""
    await topic.produce(completed("erin", 2, 20).value(), completed("erin", 3, 30).value())
    port = free_ports(1)[0]
    settings = topic.settings()
    env = {
        **os.environ,
        "USAGE_REDIS_URL": settings.redis_url.get_secret_value(),
        "USAGE_REDIS_KEY_PREFIX": settings.redis_key_prefix,
        "USAGE_KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "USAGE_KAFKA_TOPIC": settings.kafka_topic,
        "USAGE_GROUP_ID": settings.group_id,
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.usage",
        "--port",
        str(port),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base, timeout=5) as client:

            async def get(path: str) -> Any:
                try:
                    response = await client.get(path)
                except httpx.TransportError:
                    return None  # not listening yet
                return response.json()

            health = await eventually(lambda: get("/health"), 20, "the service to listen", 0.05)
            assert health["status"] == "ok" and health["service"] == "usage"
            want = {"prompt_tokens": 5, "completion_tokens": 50, "answers": 2}

            async def counted() -> bool:
                return bool(await get("/usage/erin") == want)

            await eventually(counted, 30, "erin's totals", 0.05)
            assert await get("/usage/nobody") == {
                "prompt_tokens": 0,
                "completion_tokens": 0,
                "answers": 0,
            }
            metrics = (await client.get("/metrics")).text
            assert 'usage_events_total{outcome="counted"} 2.0' in metrics
    finally:
        proc.terminate()
        async with asyncio.timeout(20):
            output, _ = await proc.communicate()
    log = output.decode(errors="replace")
    # uvicorn shuts down cleanly, then ends by the signal it was stopped with.
    assert proc.returncode in (0, -signal.SIGTERM), log[-2000:]
    assert "Application shutdown complete." in log
    assert "usage consumer started" in log
    assert settings.redis_url.get_secret_value() not in log
