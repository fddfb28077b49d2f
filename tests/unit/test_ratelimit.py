"""TokenBucket: burst, refusal with a retry_after, refill over fake time."""

from __future__ import annotations

import pytest

from services.ws_gateway.ratelimit import TokenBucket

pytestmark = pytest.mark.unit


def test_burst_then_refusal() -> None:
    bucket = TokenBucket(rate_per_s=1.0, burst=3.0)
    assert [bucket.take(now=50.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    retry_after = bucket.take(now=50.0)
    assert retry_after > 0
    assert retry_after == pytest.approx(1.0)


def test_retry_after_reflects_partial_refill() -> None:
    bucket = TokenBucket(rate_per_s=2.0, burst=1.0)
    assert bucket.take(now=0.0) == 0.0
    assert bucket.take(now=0.0) == pytest.approx(0.5)
    assert bucket.take(now=0.25) == pytest.approx(0.25)


def test_refused_take_consumes_nothing() -> None:
    bucket = TokenBucket(rate_per_s=1.0, burst=1.0)
    bucket.take(now=0.0)
    for _ in range(10):
        assert bucket.take(now=0.5) > 0
    assert bucket.take(now=1.0) == 0.0  # the refusals did not push the next token back


def test_waiting_retry_after_is_enough() -> None:
    bucket = TokenBucket(rate_per_s=3.0, burst=2.0)
    now = 10.0
    bucket.take(now)
    bucket.take(now)
    retry_after = bucket.take(now)
    assert retry_after > 0
    assert bucket.take(now + retry_after - 0.01) > 0
    assert bucket.take(now + retry_after) == 0.0


def test_refill_over_time() -> None:
    bucket = TokenBucket(rate_per_s=1.0, burst=3.0)
    for _ in range(3):
        bucket.take(now=0.0)
    assert bucket.take(now=0.0) > 0
    assert bucket.take(now=2.0) == 0.0  # two tokens back
    assert bucket.take(now=2.0) == 0.0
    assert bucket.take(now=2.0) > 0


def test_refill_is_capped_at_burst() -> None:
    bucket = TokenBucket(rate_per_s=10.0, burst=2.0)
    bucket.take(now=0.0)
    results = [bucket.take(now=1_000.0) for _ in range(3)]
    assert results[:2] == [0.0, 0.0]
    assert results[2] > 0


def test_steady_rate_is_allowed() -> None:
    bucket = TokenBucket(rate_per_s=4.0, burst=1.0)
    assert all(bucket.take(now=i * 0.25) == 0.0 for i in range(100))


def test_first_take_starts_full_at_any_clock_value() -> None:
    bucket = TokenBucket(rate_per_s=1.0, burst=2.0)
    assert bucket.take(now=123_456.0) == 0.0
    assert bucket.take(now=123_456.0) == 0.0
    assert bucket.take(now=123_456.0) > 0


def test_zero_rate_refuses_with_a_positive_retry_after() -> None:
    bucket = TokenBucket(rate_per_s=0.0, burst=1.0)
    assert bucket.take(now=0.0) == 0.0
    assert bucket.take(now=1e6) > 0
