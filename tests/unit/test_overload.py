"""Admission under overload (services/common/overload.py): pure decisions."""

from __future__ import annotations

import asyncio
import time

import pytest

from services.common.overload import (
    AT_CAPACITY,
    LAGGING,
    MESSAGES,
    MIN_LIMIT,
    REASONS,
    STARTING,
    WORKERS_BUSY,
    Admission,
    LoopLag,
)


def admission(jitter: float = 0.5) -> Admission:
    """max 10 answers, 0.25 s lag, 2 s retry; jitter 0.5 makes the spread factor 1.0."""
    return Admission(10, 0.25, 2.0, jitter=lambda: jitter)


def test_room_and_a_prompt_loop_admit() -> None:
    assert admission().refusal(in_hand=9, lag_s=0.2, now=100.0) is None


def test_a_full_node_refuses_with_retry_after() -> None:
    refusal = admission().refusal(in_hand=10, lag_s=0.0, now=100.0)
    assert refusal is not None
    assert (refusal.reason, refusal.retry_after) == (AT_CAPACITY, 2.0)


def test_a_lagging_loop_refuses() -> None:
    refusal = admission().refusal(in_hand=0, lag_s=0.26, now=100.0)
    assert refusal is not None and refusal.reason == LAGGING


def test_busy_workers_refuse_new_chats_until_retry_after_has_passed() -> None:
    a = admission()
    a.workers_busy(now=100.0)
    refusal = a.refusal(in_hand=0, lag_s=0.0, now=100.5)
    assert refusal is not None
    assert (refusal.reason, refusal.retry_after) == (WORKERS_BUSY, 1.5)  # what is left
    assert a.refusal(in_hand=0, lag_s=0.0, now=102.0) is None


def test_answers_waiting_for_a_worker_refuse_new_chats_past_the_window() -> None:
    a = admission()
    a.workers_busy(now=100.0)
    refusal = a.refusal(in_hand=1, lag_s=0.0, now=200.0, waiting=1)
    assert refusal is not None
    assert (refusal.reason, refusal.retry_after) == (WORKERS_BUSY, 2.0)
    assert a.refusal(in_hand=1, lag_s=0.0, now=200.0, waiting=0) is None


def test_a_later_busy_report_extends_the_window_and_an_earlier_one_does_not_shorten_it() -> None:
    a = admission()
    a.workers_busy(now=100.0)
    a.workers_busy(now=101.0)
    assert a.refusal(in_hand=0, lag_s=0.0, now=102.5) is not None
    a.workers_busy(now=99.0)
    assert a.refusal(in_hand=0, lag_s=0.0, now=102.9) is not None
    assert a.refusal(in_hand=0, lag_s=0.0, now=103.0) is None


@pytest.mark.parametrize(("jitter", "expected"), [(0.0, 1.0), (0.999, 3.0)])
def test_retry_after_is_spread_over_half_to_one_and_a_half_times(
    jitter: float, expected: float
) -> None:
    refusal = admission(jitter).refusal(in_hand=10, lag_s=0.0, now=0.0)
    assert refusal is not None and refusal.retry_after == pytest.approx(expected, abs=0.01)


def test_every_reason_has_a_message() -> None:
    assert set(MESSAGES) == set(REASONS)


def test_lag_is_smoothed_and_never_negative() -> None:
    lag = LoopLag(alpha=0.5)
    assert lag.sample(1.0) == 0.5
    assert lag.sample(1.0) == 0.75
    assert lag.sample(-3.0) == 0.375  # a timer cannot fire early: counts as 0


class WatchedLag(LoopLag):
    """A sampler that says when its lag first reaches `threshold`."""

    def __init__(self, threshold: float) -> None:
        super().__init__(interval=0.01, alpha=1.0)
        self.threshold = threshold
        self.reached = asyncio.Event()

    def sample(self, late_s: float) -> float:
        value = super().sample(late_s)
        if value >= self.threshold:
            self.reached.set()
        return value


async def test_the_sampler_sees_a_blocked_loop() -> None:
    lag = WatchedLag(threshold=0.1)
    task = asyncio.create_task(lag.run())
    try:
        await asyncio.sleep(0)  # the sampler's timer is armed
        assert not lag.reached.is_set()
        # Block the loop from a callback: the timer then fires at least 0.15 s late.
        asyncio.get_running_loop().call_soon(time.sleep, 0.15)
        await asyncio.wait_for(lag.reached.wait(), 5)
        assert lag.value >= 0.1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_too_many_answers_starting_refuses_though_there_is_room() -> None:
    a = Admission(100, 0.25, 2.0, max_starting=5, jitter=lambda: 0.5)
    assert a.refusal(in_hand=50, lag_s=0.0, now=0.0, starting=4) is None
    refusal = a.refusal(in_hand=50, lag_s=0.0, now=0.0, starting=5)
    assert refusal is not None and refusal.reason == STARTING


def test_without_a_starting_bound_only_answers_in_hand_count() -> None:
    assert admission().refusal(in_hand=9, lag_s=0.0, now=0.0, starting=9) is None


def test_a_chat_being_accepted_holds_a_slot_until_it_is_counted() -> None:
    a = Admission(2, 0.25, 2.0, max_starting=2, jitter=lambda: 0.5)
    with a.slot():
        assert a.refusal(in_hand=0, lag_s=0.0, now=0.0) is None  # one more fits
        with a.slot():
            refusal = a.refusal(in_hand=0, lag_s=0.0, now=0.0)
            assert refusal is not None and refusal.reason == AT_CAPACITY
    assert a.admitting == 0
    with pytest.raises(RuntimeError), a.slot():
        raise RuntimeError("the accept failed")
    assert a.admitting == 0  # released on failure too
    with a.slot() as slot:
        slot.release()  # the caller counts the answer itself now
        assert a.admitting == 0
        slot.release()  # once only
    assert a.admitting == 0


def test_a_lagging_loop_lowers_the_limit_below_what_the_node_holds() -> None:
    a = Admission(1000, 0.25, 2.0, jitter=lambda: 0.5)
    assert a.observe(lag_s=0.3, in_hand=400) == 360
    refusal = a.refusal(in_hand=380, lag_s=0.0, now=0.0)
    assert refusal is not None and refusal.reason == AT_CAPACITY
    assert a.refusal(in_hand=359, lag_s=0.0, now=0.0) is None
    assert a.observe(lag_s=0.3, in_hand=5) == MIN_LIMIT  # never below the floor
    small = Admission(2, 0.25, 2.0)
    assert small.observe(lag_s=0.3, in_hand=1) == 2  # nor above max_answers


def test_a_prompt_loop_raises_the_limit_back_only_when_it_is_reached() -> None:
    a = Admission(1000, 0.25, 2.0, jitter=lambda: 0.5)
    a.observe(lag_s=0.3, in_hand=400)  # 360
    assert a.observe(lag_s=0.0, in_hand=100) == 360  # far below: no reason to grow
    assert a.observe(lag_s=0.0, in_hand=359) == 378  # at the limit: +5%
    for _ in range(200):
        a.observe(lag_s=0.0, in_hand=a.limit)
    assert a.limit == 1000  # never past max_answers


async def test_the_sampler_reports_every_sample() -> None:
    seen: list[float] = []
    three = asyncio.Event()

    def record(value: float) -> None:
        seen.append(value)
        if len(seen) >= 3:
            three.set()

    lag = LoopLag(interval=0.001, on_sample=record)
    task = asyncio.create_task(lag.run())
    try:
        await asyncio.wait_for(three.wait(), 5)
        assert all(v >= 0 for v in seen)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
