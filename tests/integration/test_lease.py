"""Leases against a real Redis: SET NX PX with a random token, renewed and released
only by the token that holds it; `kept()` renews in the background and releases."""

from __future__ import annotations

import asyncio
import time

import pytest
from redis.asyncio import Redis

from services.common.keys import Keys
from services.common.lease import Lease, Leases
from services.common.tasks import cancel_and_wait
from tests.integration.redis_helpers import eventually

pytestmark = pytest.mark.integration

TTL_MS = 30_000
SHORT_TTL_MS = 300


def make_leases(redis: Redis, keys: Keys, ttl_ms: int = TTL_MS) -> Leases:
    return Leases(redis, keys.message_lease, ttl_ms, keys.message_meta)


async def acquire(leases: Leases, holder: str = "w1", message_id: str = "m1") -> Lease:
    lease = await leases.acquire(message_id, holder)
    assert lease is not None
    return lease


async def test_acquire_sets_a_token_with_a_ttl_and_excludes_others(
    redis: Redis, keys: Keys
) -> None:
    leases = make_leases(redis, keys)

    lease = await acquire(leases, "w1")

    assert lease.token.startswith("w1:") and len(lease.token) > len("w1:")
    assert lease.key == keys.message_lease("m1")
    assert await leases.holder("m1") == lease.token
    assert await redis.get(keys.message_lease("m1")) == lease.token
    assert 0 < await redis.pttl(lease.key) <= TTL_MS
    assert await leases.acquire("m1", "w2") is None
    assert await leases.holder("m1") == lease.token
    assert (await acquire(leases, "w1", "m2")).token != lease.token
    assert await leases.holder("m3") is None


async def test_renew_extends_only_the_holders_lease(redis: Redis, keys: Keys) -> None:
    leases = make_leases(redis, keys)
    lease = await acquire(leases)
    await redis.pexpire(lease.key, 1_000)

    assert await lease.renew() is True
    assert await redis.pttl(lease.key) > 1_000
    assert not lease.lost

    await redis.pexpire(lease.key, 1_000)
    assert await leases.renew("m1", "w2:stale") is False
    assert await redis.pttl(lease.key) <= 1_000
    assert await leases.holder("m1") == lease.token
    # A lease that lapsed with nobody taking it is taken back by its holder...
    await redis.hset(keys.message_meta("m-lapsed"), "status", "streaming")
    assert await leases.renew("m-lapsed", "w2:paused") is True
    assert await leases.holder("m-lapsed") == "w2:paused"
    assert 0 < await redis.pttl(keys.message_lease("m-lapsed")) <= leases.ttl_ms


@pytest.mark.parametrize("status", ["done", None])
async def test_a_lapsed_lease_of_an_answer_that_is_over_is_not_taken_back(
    redis: Redis, keys: Keys, status: str | None
) -> None:
    """Finished (a stuck holder evicted by the finish), or its record is gone."""
    leases = make_leases(redis, keys)
    if status is not None:
        await redis.hset(keys.message_meta("m-over"), "status", status)

    assert await leases.renew("m-over", "w2:evicted") is False
    assert await leases.holder("m-over") is None


async def test_release_drops_only_the_holders_lease_and_is_idempotent(
    redis: Redis, keys: Keys
) -> None:
    leases = make_leases(redis, keys)
    lease = await acquire(leases)

    await leases.release("m1", "w2:stale")
    assert await leases.holder("m1") == lease.token

    await lease.release()
    assert lease.released
    assert await leases.holder("m1") is None
    await lease.release()  # idempotent
    assert await lease.renew() is False  # a released lease is not renewed

    other = await acquire(leases, "w2")
    await lease.release()
    await leases.release("m1", lease.token)
    assert await leases.holder("m1") == other.token


async def test_a_lease_taken_over_is_lost_and_left_to_its_new_holder(
    redis: Redis, keys: Keys
) -> None:
    leases = make_leases(redis, keys)
    lease = await acquire(leases, "w1")
    await redis.delete(lease.key)  # it expired while w1 was paused
    other = await acquire(leases, "w2")

    assert await lease.renew() is False
    assert lease.lost
    assert await lease.renew() is False
    await lease.release()
    assert await leases.holder("m1") == other.token
    assert 0 < await redis.pttl(other.key) <= TTL_MS


async def test_forget_stops_renewing_and_releasing(redis: Redis, keys: Keys) -> None:
    leases = make_leases(redis, keys)
    lease = await acquire(leases)

    lease.forget()

    assert await lease.renew() is False
    await lease.release()
    assert await leases.holder("m1") == lease.token  # a script will consume it


async def test_kept_renews_past_the_ttl_and_releases_on_exit(redis: Redis, keys: Keys) -> None:
    leases = make_leases(redis, keys, SHORT_TTL_MS)
    lease = await acquire(leases)
    start = time.monotonic()

    async def held_past_two_ttls() -> bool:
        # Every poll the lease must still be ours, with a TTL no longer than set.
        assert await leases.holder("m1") == lease.token
        assert 0 < await redis.pttl(lease.key) <= SHORT_TTL_MS
        return time.monotonic() - start > 2.2 * SHORT_TTL_MS / 1000

    async with lease.kept() as kept:
        assert kept is lease
        await eventually(held_past_two_ttls, 5, "the lease to be kept past two TTLs", poll=0.02)
        assert await leases.holder("m1") == lease.token

    assert lease.released and not lease.lost
    assert await leases.holder("m1") is None


async def test_kept_releases_when_the_body_is_cancelled(redis: Redis, keys: Keys) -> None:
    leases = make_leases(redis, keys, SHORT_TTL_MS)
    lease = await acquire(leases)
    entered = asyncio.Event()

    async def body() -> None:
        async with lease.kept():
            entered.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(body())
    await asyncio.wait_for(entered.wait(), 2)
    await cancel_and_wait(task)

    assert task.cancelled()
    assert lease.released
    assert await leases.holder("m1") is None


async def test_kept_notices_a_lease_taken_by_someone_else(redis: Redis, keys: Keys) -> None:
    leases = make_leases(redis, keys, SHORT_TTL_MS)
    lease = await acquire(leases)

    async with lease.kept():
        await redis.set(lease.key, "w2:thief", px=10_000)
        await eventually(lambda: lease.lost, 2, "the renewer to find the lease taken")

    assert await leases.holder("m1") == "w2:thief"
    assert 5_000 < await redis.pttl(lease.key) <= 10_000
