"""Outbox: bounded queue and the slow-consumer rule, with fake `now` values."""

from __future__ import annotations

import pytest

from services.ws_gateway.outbox import Outbox

pytestmark = pytest.mark.unit

LIMIT = 4
GRACE = 2.0


def fill(box: Outbox, n: int, now: float, tag: str = "f") -> list[bool]:
    return [box.push(f"{tag}{i}", now) for i in range(n)]


def test_under_limit_everything_is_queued_in_order() -> None:
    box = Outbox(limit=LIMIT, grace=GRACE)
    assert fill(box, LIMIT, now=0.0) == [True] * LIMIT
    assert len(box) == LIMIT
    assert box.pop_batch() == ["f0", "f1", "f2", "f3"]
    assert len(box) == 0
    assert not box.too_slow


def test_under_limit_stays_fine_for_ever() -> None:
    box = Outbox(limit=LIMIT, grace=GRACE)
    fill(box, LIMIT - 1, now=0.0)
    assert box.check(now=1_000_000.0)
    assert box.push("late", now=1_000_000.0)
    assert not box.too_slow


def test_at_limit_is_allowed_within_the_grace_period() -> None:
    box = Outbox(limit=LIMIT, grace=GRACE)
    fill(box, LIMIT, now=10.0)  # full from now on
    assert box.push("over1", now=10.5)
    assert box.push("over2", now=10.0 + GRACE)  # exactly at the grace: still fine
    assert box.check(now=10.0 + GRACE)
    assert len(box) == LIMIT + 2
    assert not box.too_slow


def test_at_limit_past_the_grace_period_is_too_slow() -> None:
    box = Outbox(limit=LIMIT, grace=GRACE)
    fill(box, LIMIT, now=10.0)
    assert box.push("over1", now=10.5)
    assert not box.push("over2", now=10.0 + GRACE + 0.01)
    assert box.too_slow
    assert len(box) == 0  # the queue is released at once
    assert box.pop_batch() == []


def test_too_slow_is_sticky() -> None:
    box = Outbox(limit=LIMIT, grace=GRACE)
    fill(box, LIMIT, now=0.0)
    box.push("over", now=0.0)
    box.push("over", now=GRACE + 1)
    assert box.too_slow
    assert not box.push("again", now=GRACE + 2)
    assert len(box) == 0
    assert not box.check(now=GRACE + 2)


def test_twice_the_limit_overflows_immediately() -> None:
    box = Outbox(limit=LIMIT, grace=GRACE)
    assert fill(box, 2 * LIMIT, now=0.0) == [True] * (2 * LIMIT)
    assert len(box) == 2 * LIMIT
    assert not box.push("overflow", now=0.0)  # no time passed at all
    assert box.too_slow
    assert len(box) == 0


def test_queue_never_holds_more_than_twice_the_limit() -> None:
    box = Outbox(limit=LIMIT, grace=1e9)
    results = fill(box, 10 * LIMIT, now=0.0)
    assert results == [True] * (2 * LIMIT) + [False] * (8 * LIMIT)
    assert len(box) == 0


def test_draining_below_the_limit_resets_the_full_timer() -> None:
    box = Outbox(limit=LIMIT, grace=GRACE)
    fill(box, LIMIT, now=0.0)
    box.push("over", now=0.0)  # full since 0
    assert box.pop_batch(max_frames=2) == ["f0", "f1"]  # 3 left: below the limit
    fill(box, 2, now=GRACE + 5, tag="g")  # back at 5 (>= limit); full since GRACE + 5
    assert box.check(now=GRACE + 5 + GRACE)
    assert box.push("g2", now=GRACE + 5 + GRACE)
    assert not box.too_slow


def test_draining_but_staying_at_the_limit_keeps_the_timer() -> None:
    box = Outbox(limit=LIMIT, grace=GRACE)
    fill(box, LIMIT + 2, now=0.0)  # full since 0 (set by the push that found it full)
    assert box.pop_batch(max_frames=1) == ["f0"]  # still LIMIT + 1 >= limit
    assert not box.check(now=GRACE + 0.5)
    assert box.too_slow


def test_check_is_true_while_not_full() -> None:
    box = Outbox(limit=LIMIT, grace=GRACE)
    assert box.check(now=0.0)
    fill(box, 2, now=0.0)
    assert box.check(now=1e6)


def test_check_past_the_grace_is_false_and_clears() -> None:
    box = Outbox(limit=LIMIT, grace=GRACE)
    fill(box, LIMIT + 1, now=3.0)  # the last push starts the timer at 3.0
    assert box.check(now=3.0 + GRACE)
    assert not box.too_slow
    assert not box.check(now=3.0 + GRACE + 0.001)
    assert box.too_slow
    assert len(box) == 0


def test_pop_batch_respects_max_frames_and_order() -> None:
    box = Outbox(limit=100, grace=GRACE)
    fill(box, 70, now=0.0)
    first = box.pop_batch()
    assert first == [f"f{i}" for i in range(64)]
    assert box.pop_batch(max_frames=3) == ["f64", "f65", "f66"]
    assert box.pop_batch() == ["f67", "f68", "f69"]
    assert box.pop_batch() == []


def test_queue_that_reached_the_limit_and_stayed_there_fails_check() -> None:
    box = Outbox(limit=LIMIT, grace=GRACE)
    fill(box, LIMIT, now=0.0)  # at the limit since t=0 and never drained
    assert not box.check(now=GRACE + 10.0)
