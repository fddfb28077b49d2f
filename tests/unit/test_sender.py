"""Sender: the connection's writer, with a fake socket and a fake clock."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import NamedTuple

import pytest
from prometheus_client import CollectorRegistry

from services.common.protocol import CloseCode, PongFrame, encode
from services.ws_gateway.metrics import GatewayMetrics
from services.ws_gateway.sender import Sender

pytestmark = pytest.mark.unit

LIMIT = 8
GRACE = 0.5
DEADLINE = 2.0
"""Seconds any awaited condition may take before the test fails (never a sleep)."""


@dataclass
class FakeClock:
    now: float = 100.0

    def __call__(self) -> float:
        return self.now


class FakeClient:
    """An async `send_text` that records what was written.

    `paused()` makes the next write block until `resume()` (a client that stopped
    reading); `entered` is set when a write is blocked that way."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self._open = asyncio.Event()
        self._open.set()
        self.entered = asyncio.Event()
        self._changed = asyncio.Condition()

    def pause(self) -> None:
        self._open.clear()
        self.entered.clear()

    def resume(self) -> None:
        self._open.set()

    async def __call__(self, text: str) -> None:
        if not self._open.is_set():
            self.entered.set()
            await self._open.wait()
        async with self._changed:
            self.sent.append(text)
            self._changed.notify_all()

    async def wait_sent(self, count: int) -> None:
        async with self._changed:
            await asyncio.wait_for(
                self._changed.wait_for(lambda: len(self.sent) >= count), DEADLINE
            )


def frame(i: int) -> PongFrame:
    return PongFrame(ts=i)


def texts(first: int, last: int) -> list[str]:
    return [encode(frame(i)) for i in range(first, last + 1)]


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def metrics(registry: CollectorRegistry) -> GatewayMetrics:
    return GatewayMetrics(registry)


def slow_closes(registry: CollectorRegistry) -> float:
    value = registry.get_sample_value("gateway_slow_consumer_closes_total")
    assert value is not None
    return value


def make_sender(metrics: GatewayMetrics, clock: FakeClock | None = None) -> Sender:
    return Sender(limit=LIMIT, grace=GRACE, metrics=metrics, clock=clock or FakeClock())


async def finish(task: asyncio.Task[None]) -> None:
    await asyncio.wait_for(task, DEADLINE)


async def yield_to_others(times: int = 5) -> None:
    """Let every ready task run (nothing is waited for)."""
    for _ in range(times):
        await asyncio.sleep(0)


async def test_frames_are_written_in_order(metrics: GatewayMetrics) -> None:
    sender = make_sender(metrics)
    client = FakeClient()
    for i in range(1, 4):
        sender.send(frame(i))
    run = asyncio.create_task(sender.run(client))
    await client.wait_sent(3)
    for i in range(4, 7):
        sender.send(frame(i))
    await client.wait_sent(6)
    assert client.sent == texts(1, 6)
    assert not run.done()
    sender.close(CloseCode.NORMAL)
    await finish(run)
    assert sender.close_code == CloseCode.NORMAL
    assert client.sent == texts(1, 6)


async def test_many_frames_keep_their_order_across_batches(metrics: GatewayMetrics) -> None:
    sender = Sender(limit=1000, grace=GRACE, metrics=metrics, clock=FakeClock())
    client = FakeClient()
    run = asyncio.create_task(sender.run(client))
    for i in range(300):  # more than one pop_batch
        sender.send(frame(i))
    await client.wait_sent(300)
    assert client.sent == texts(0, 299)
    sender.stop()
    await finish(run)


async def test_close_stops_run_and_the_first_code_wins(metrics: GatewayMetrics) -> None:
    sender = make_sender(metrics)
    client = FakeClient()
    run = asyncio.create_task(sender.run(client))
    await yield_to_others()
    assert not run.done()
    assert not sender.closing
    sender.close(CloseCode.SERVICE_RESTART)
    sender.close(CloseCode.NORMAL)
    await finish(run)
    assert sender.close_code == CloseCode.SERVICE_RESTART
    assert sender.closing
    sender.close(CloseCode.TOO_SLOW)
    assert sender.close_code == CloseCode.SERVICE_RESTART


async def test_frames_queued_after_close_are_not_written(metrics: GatewayMetrics) -> None:
    sender = make_sender(metrics)
    client = FakeClient()
    sender.close(CloseCode.GOING_AWAY)
    sender.send(frame(1))
    await finish(asyncio.create_task(sender.run(client)))
    assert client.sent == []
    assert sender.close_code == CloseCode.GOING_AWAY


async def test_stop_makes_run_return_without_a_close_code(metrics: GatewayMetrics) -> None:
    sender = make_sender(metrics)
    client = FakeClient()
    run = asyncio.create_task(sender.run(client))
    sender.send(frame(1))
    await client.wait_sent(1)
    sender.stop()
    await finish(run)
    assert sender.close_code is None
    assert not sender.closing


async def test_errors_of_send_text_propagate(metrics: GatewayMetrics) -> None:
    sender = make_sender(metrics)

    async def broken(text: str) -> None:
        raise ConnectionResetError("gone")

    sender.send(frame(1))
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(sender.run(broken), DEADLINE)


async def blocked_on_frame_0(sender: Sender, client: FakeClient) -> asyncio.Task[None]:
    """Start the writer and have it block writing frame 0 (the client stopped reading)."""
    client.pause()
    run = asyncio.create_task(sender.run(client))
    sender.send(frame(0))
    await asyncio.wait_for(client.entered.wait(), DEADLINE)
    return run


class Stuck(NamedTuple):
    clock: FakeClock
    sender: Sender
    client: FakeClient
    run: asyncio.Task[None]


@pytest.fixture
async def stuck(metrics: GatewayMetrics) -> Stuck:
    """A writer blocked on frame 0 with the queue filled to the limit behind it."""
    clock = FakeClock()
    sender = make_sender(metrics, clock)
    client = FakeClient()
    run = await blocked_on_frame_0(sender, client)
    for i in range(1, LIMIT + 1):
        sender.send(frame(i))
    assert len(sender.outbox) == LIMIT
    assert sender.close_code is None
    return Stuck(clock, sender, client, run)


async def test_a_client_that_stops_reading_past_the_grace_period_is_closed_on_send(
    stuck: Stuck, registry: CollectorRegistry
) -> None:
    clock, sender, client, run = stuck
    clock.now += GRACE / 2
    sender.send(frame(100))  # full, but within the grace period
    assert sender.close_code is None
    clock.now += GRACE
    sender.send(frame(101))
    assert sender.close_code == CloseCode.TOO_SLOW
    assert slow_closes(registry) == 1
    sender.send(frame(102))  # counted once, whatever follows
    assert slow_closes(registry) == 1
    client.resume()
    await finish(run)
    assert sender.close_code == CloseCode.TOO_SLOW
    assert client.sent == texts(0, 0)  # none of the queued frames was written


async def test_a_client_that_stops_reading_past_the_grace_period_is_closed_by_the_writer(
    stuck: Stuck, registry: CollectorRegistry
) -> None:
    clock, sender, client, run = stuck
    clock.now += GRACE + 0.1  # no more frames are queued; the writer finds it out
    client.resume()
    await finish(run)
    assert sender.close_code == CloseCode.TOO_SLOW
    assert slow_closes(registry) == 1
    assert client.sent == texts(0, 0)
    assert len(sender.outbox) == 0


async def test_a_full_queue_that_drains_within_the_grace_period_is_fine(
    stuck: Stuck, registry: CollectorRegistry
) -> None:
    clock, sender, client, run = stuck
    clock.now += GRACE  # exactly the grace period: still allowed
    client.resume()
    await client.wait_sent(LIMIT + 1)
    assert client.sent == texts(0, LIMIT)
    assert sender.close_code is None
    clock.now += 10 * GRACE  # the queue is empty now: time does not matter
    sender.send(frame(99))
    await client.wait_sent(LIMIT + 2)
    assert sender.close_code is None
    assert slow_closes(registry) == 0
    sender.stop()
    await finish(run)


async def test_overflow_past_twice_the_limit_closes_at_once(
    metrics: GatewayMetrics, registry: CollectorRegistry
) -> None:
    clock = FakeClock()
    sender = make_sender(metrics, clock)
    for i in range(2 * LIMIT):
        sender.send(frame(i))  # the clock never moves: the grace period never passes
    assert sender.close_code is None
    assert len(sender.outbox) == 2 * LIMIT
    sender.send(frame(2 * LIMIT))
    assert sender.close_code == CloseCode.TOO_SLOW
    assert slow_closes(registry) == 1
    client = FakeClient()
    await finish(asyncio.create_task(sender.run(client)))
    assert client.sent == []


async def test_wait_for_room_returns_at_once_with_half_a_queue_or_less(
    metrics: GatewayMetrics,
) -> None:
    sender = make_sender(metrics)
    for i in range(LIMIT // 2):
        sender.send(frame(i))
    await asyncio.wait_for(sender.wait_for_room(), DEADLINE)
    assert len(sender.outbox) == LIMIT // 2


async def test_wait_for_room_blocks_until_the_writer_drained_the_queue(
    metrics: GatewayMetrics,
) -> None:
    sender = make_sender(metrics)
    client = FakeClient()
    run = await blocked_on_frame_0(sender, client)
    for i in range(1, LIMIT // 2 + 2):
        sender.send(frame(i))
    assert len(sender.outbox) > LIMIT // 2
    waiter = asyncio.create_task(sender.wait_for_room())
    await yield_to_others()
    assert not waiter.done()  # the client reads nothing: no room
    client.resume()
    await asyncio.wait_for(waiter, DEADLINE)
    assert len(sender.outbox) <= LIMIT // 2
    assert client.sent[0] == texts(0, 0)[0]
    sender.stop()
    await finish(run)
    assert client.sent == texts(0, LIMIT // 2 + 1)


@pytest.mark.parametrize("how", ["close", "stop"])
async def test_wait_for_room_returns_when_the_connection_ends(
    metrics: GatewayMetrics, how: str
) -> None:
    sender = make_sender(metrics)
    client = FakeClient()
    run = await blocked_on_frame_0(sender, client)
    for i in range(1, LIMIT):
        sender.send(frame(i))
    waiter = asyncio.create_task(sender.wait_for_room())
    await yield_to_others()
    assert not waiter.done()
    if how == "close":
        sender.close(CloseCode.GOING_AWAY)
    else:
        sender.stop()
    await asyncio.wait_for(waiter, DEADLINE)
    assert len(sender.outbox) > LIMIT // 2  # it returned without any room
    client.resume()
    await finish(run)
    assert sender.close_code == (CloseCode.GOING_AWAY if how == "close" else None)


async def test_queue_depth_is_observed_when_writing(
    metrics: GatewayMetrics, registry: CollectorRegistry
) -> None:
    sender = make_sender(metrics)
    client = FakeClient()
    sender.send(frame(1))
    sender.send(frame(2))
    run = asyncio.create_task(sender.run(client))
    await client.wait_sent(2)
    sender.stop()
    await finish(run)
    assert registry.get_sample_value("gateway_queue_depth_count") == 1
    assert registry.get_sample_value("gateway_queue_depth_sum") == 2
