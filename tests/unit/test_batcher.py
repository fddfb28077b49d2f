"""TokenBatcher (pure, fake clock) and batch_events (fake event sources)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing

import pytest

from services.ai_worker.batcher import AdaptiveFlush, TokenBatcher, batch_events
from services.ai_worker.providers.base import Finish, ProviderError, ProviderEvent, Token
from services.common.protocol import FinishReason

pytestmark = pytest.mark.unit

FINISH = Finish(FinishReason.STOP, prompt_tokens=3, completion_tokens=5)


class FakeClock:
    """A settable clock that also signals when it was read (the consumer is running)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.read = asyncio.Event()

    def __call__(self) -> float:
        self.read.set()
        return self.now


def test_nothing_pending() -> None:
    batcher = TokenBatcher(flush_ms=25, max_tokens=4)
    assert batcher.due_in(0.0) is None
    assert batcher.take_due(100.0) is None
    assert batcher.flush() is None


def test_flushes_at_max_tokens() -> None:
    batcher = TokenBatcher(flush_ms=1000, max_tokens=3)
    assert batcher.add("a", 0.0) is None
    assert batcher.add("b", 0.0) is None
    assert batcher.add("c", 0.0) == "abc"
    assert batcher.due_in(0.0) is None
    assert batcher.add("d", 0.0) is None
    assert batcher.flush() == "d"


def test_due_counts_from_first_pending_token() -> None:
    batcher = TokenBatcher(flush_ms=25, max_tokens=100)
    batcher.add(" hello", 10.0)
    batcher.add(" world", 10.02)
    assert batcher.due_in(10.01) == pytest.approx(0.015)
    assert batcher.take_due(10.024) is None
    assert batcher.take_due(10.025) == " hello world"
    assert batcher.due_in(10.03) is None
    # The next chunk's window starts at its own first token.
    batcher.add("!", 11.0)
    assert batcher.due_in(11.0) == pytest.approx(0.025)
    assert batcher.due_in(12.0) == 0.0


def test_empty_tokens_are_ignored() -> None:
    batcher = TokenBatcher(flush_ms=25, max_tokens=1)
    assert batcher.add("", 0.0) is None
    assert batcher.due_in(0.0) is None
    assert batcher.add("x", 0.0) == "x"


def test_zero_flush_ms_is_due_at_once() -> None:
    batcher = TokenBatcher(flush_ms=0, max_tokens=10)
    batcher.add("x", 5.0)
    assert batcher.due_in(5.0) == 0.0
    assert batcher.take_due(5.0) == "x"


def test_rejects_max_tokens_below_one() -> None:
    with pytest.raises(ValueError, match="max_tokens"):
        TokenBatcher(flush_ms=25, max_tokens=0)


async def collect(stream: AsyncIterator[str | Finish]) -> list[str | Finish]:
    async with asyncio.timeout(5):
        return [item async for item in stream]


async def scripted(
    clock: FakeClock, script: Sequence[ProviderEvent | float]
) -> AsyncIterator[ProviderEvent]:
    """Yield events; a float advances the fake clock by that many seconds.

    After each event it waits until the consumer has read the clock, so time only
    moves once the event has been taken off the queue (the producer would otherwise
    run ahead, and every token would see the final time).
    """
    for step in script:
        if isinstance(step, float):
            clock.now += step
        else:
            clock.read.clear()
            yield step
            await clock.read.wait()


async def test_groups_by_max_tokens() -> None:
    clock = FakeClock()
    events = scripted(clock, [Token(t) for t in "abcdefg"] + [FINISH])
    out = await collect(batch_events(events, TokenBatcher(1e9, 3), clock))
    assert out == ["abc", "def", "g", FINISH]


async def test_groups_by_time_with_fake_clock() -> None:
    clock = FakeClock()
    script: list[ProviderEvent | float] = [
        Token("a"), 0.010, Token("b"), 0.030,  # "c" arrives after a+b fell due
        Token("c"), 0.010, Token("d"), 0.010, Token("e"), 0.010,
        Token("f"), FINISH,
    ]  # fmt: skip
    # Real timeouts may fire too (due_in is real seconds), but only the fake clock decides
    # what is due, so the grouping is exact.
    out = await collect(batch_events(scripted(clock, script), TokenBatcher(25, 100), clock))
    assert out == ["ab", "cde", "f", FINISH]


async def test_slow_model_still_flushes_on_time() -> None:
    release = asyncio.Event()

    async def slow() -> AsyncIterator[ProviderEvent]:
        yield Token("first")
        await release.wait()  # the model goes quiet until the chunk has gone out
        yield Token("second")
        yield FINISH

    stream = batch_events(slow(), TokenBatcher(flush_ms=2, max_tokens=100))
    async with aclosing(stream), asyncio.timeout(5):
        assert await anext(stream) == "first"
        release.set()
        assert [item async for item in stream] == ["second", FINISH]


async def test_error_propagates_after_pending_text() -> None:
    class Boom(ProviderError):
        pass

    async def failing() -> AsyncIterator[ProviderEvent]:
        yield Token("partial")
        raise Boom("connection dropped")

    stream = batch_events(failing(), TokenBatcher(1e9, 100), FakeClock())
    seen: list[str | Finish] = []
    with pytest.raises(Boom, match="connection dropped"):
        async with asyncio.timeout(5):
            async for item in stream:
                seen.append(item)
    assert seen == ["partial"]


async def test_stream_without_finish_raises() -> None:
    async def unfinished() -> AsyncIterator[ProviderEvent]:
        yield Token("x")

    with pytest.raises(ProviderError, match="without a finish"):
        await collect(batch_events(unfinished(), TokenBatcher(1e9, 100), FakeClock()))


async def test_early_stop_cancels_and_closes_the_source() -> None:
    closed = asyncio.Event()
    produced = 0

    async def endless() -> AsyncIterator[ProviderEvent]:
        nonlocal produced
        try:
            while True:
                produced += 1
                yield Token("t")
        finally:
            closed.set()

    tasks_before = asyncio.all_tasks()
    stream = batch_events(endless(), TokenBatcher(1e9, 2), FakeClock())
    async with aclosing(stream), asyncio.timeout(5):
        assert await anext(stream) == "tt"
    # Closing the consumer ended the producer task and the source generator with it.
    assert closed.is_set()
    assert asyncio.all_tasks() == tasks_before
    # The bounded queue stopped the source from running far ahead of the consumer.
    assert produced < 1000


# --- adaptive batching ----------------------------------------------------------------------


def test_adaptive_flush_grows_with_the_answers_in_hand_between_its_bounds() -> None:
    flush = AdaptiveFlush(base_s=0.025, max_s=0.25, max_chunks_per_s=1000)
    assert flush.update(10) == 0.025  # 10 answers at 40 chunks/s fit in 1000/s
    assert flush.update(100) == pytest.approx(0.1)  # 100 answers: each every 100 ms
    assert flush.update(10_000) == 0.25  # capped
    assert flush.update(0) == 0.025


def test_the_first_chunk_goes_out_at_the_base_pace_and_later_ones_at_the_workers() -> None:
    flush = AdaptiveFlush(base_s=0.025, max_s=0.25, max_chunks_per_s=1000)
    flush.update(200)  # 200 ms
    b = TokenBatcher(flush_ms=25, max_tokens=100, adaptive=flush)
    b.add("a", 0.0)
    assert b.due_in(0.0) == pytest.approx(0.025)
    assert b.take_due(0.025) == "a"
    b.add("b", 1.0)
    assert b.due_in(1.0) == pytest.approx(0.2)
    assert b.take_due(1.1) is None
    b.add("c", 1.1)
    assert b.take_due(1.2) == "bc"
    flush.update(1)  # the worker got light again: the next chunk follows
    b.add("d", 2.0)
    assert b.take_due(2.0) is None
    assert b.take_due(2.025) == "d"
