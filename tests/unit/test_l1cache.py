"""L1Cache: expire-after-write and LRU eviction, with a fake clock."""

from __future__ import annotations

import pytest

from services.ws_gateway.l1cache import L1Cache

pytestmark = pytest.mark.unit

TTL = 5.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make(clock: FakeClock, max_size: int = 3, ttl: float = TTL) -> L1Cache[str]:
    return L1Cache(max_size=max_size, expire_after_write=ttl, clock=clock)


def test_get_of_missing_key_is_none(clock: FakeClock) -> None:
    assert make(clock).get("nope") is None


def test_put_then_get(clock: FakeClock) -> None:
    cache = make(clock)
    cache.put("a", "A")
    assert cache.get("a") == "A"
    assert len(cache) == 1


def test_put_overwrites(clock: FakeClock) -> None:
    cache = make(clock)
    cache.put("a", "A1")
    cache.put("a", "A2")
    assert cache.get("a") == "A2"
    assert len(cache) == 1


def test_expires_after_write(clock: FakeClock) -> None:
    cache = make(clock)
    cache.put("a", "A")
    clock.now += TTL - 0.001
    assert cache.get("a") == "A"
    clock.now += 0.001  # exactly TTL after the write
    assert cache.get("a") is None
    assert len(cache) == 0  # the expired entry is dropped, not kept


def test_reads_do_not_extend_the_lifetime(clock: FakeClock) -> None:
    cache = make(clock)
    cache.put("a", "A")
    for _ in range(4):
        clock.now += TTL / 5
        assert cache.get("a") == "A"
    clock.now += TTL / 5
    assert cache.get("a") is None


def test_rewrite_restarts_the_lifetime(clock: FakeClock) -> None:
    cache = make(clock)
    cache.put("a", "A1")
    clock.now += TTL - 1
    cache.put("a", "A2")
    clock.now += TTL - 1
    assert cache.get("a") == "A2"


def test_evicts_least_recently_written(clock: FakeClock) -> None:
    cache = make(clock, max_size=3)
    for key in "abcd":
        cache.put(key, key.upper())
    assert len(cache) == 3
    assert cache.get("a") is None
    assert [cache.get(k) for k in "bcd"] == ["B", "C", "D"]


def test_get_marks_an_entry_recently_used(clock: FakeClock) -> None:
    cache = make(clock, max_size=3)
    for key in "abc":
        cache.put(key, key.upper())
    assert cache.get("a") == "A"  # a is now the most recent; b the least
    cache.put("d", "D")
    assert cache.get("b") is None
    assert [cache.get(k) for k in "acd"] == ["A", "C", "D"]


def test_eviction_order_follows_use(clock: FakeClock) -> None:
    cache = make(clock, max_size=3)
    for key in "abc":
        cache.put(key, key.upper())
    cache.get("b")
    cache.get("a")  # least recent first: c, b, a
    cache.put("x", "X")
    assert cache.get("c") is None
    cache.put("y", "Y")
    assert cache.get("b") is None
    assert [cache.get(k) for k in "axy"] == ["A", "X", "Y"]


def test_rewrite_marks_an_entry_recently_used(clock: FakeClock) -> None:
    cache = make(clock, max_size=2)
    cache.put("a", "A")
    cache.put("b", "B")
    cache.put("a", "A2")
    cache.put("c", "C")
    assert cache.get("b") is None
    assert cache.get("a") == "A2"


def test_invalidate(clock: FakeClock) -> None:
    cache = make(clock)
    cache.put("a", "A")
    cache.put("b", "B")
    cache.invalidate("a")
    assert cache.get("a") is None
    assert cache.get("b") == "B"
    assert len(cache) == 1


def test_invalidate_missing_key_is_a_no_op(clock: FakeClock) -> None:
    cache = make(clock)
    cache.put("a", "A")
    cache.invalidate("zzz")
    assert cache.get("a") == "A"


def test_max_size_zero_stores_nothing(clock: FakeClock) -> None:
    cache = make(clock, max_size=0)
    cache.put("a", "A")
    assert len(cache) == 0
    assert cache.get("a") is None


def test_max_size_one(clock: FakeClock) -> None:
    cache = make(clock, max_size=1)
    cache.put("a", "A")
    cache.put("b", "B")
    assert cache.get("a") is None
    assert cache.get("b") == "B"
