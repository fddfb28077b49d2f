"""SessionStore against a real Redis: the owner record (L2) and the in-process L1
cache in front of it."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from services.common.errors import StorageError
from services.common.keys import Keys
from services.ws_gateway.sessions import Forbidden, SessionStore
from tests.integration.redis_helpers import unreachable_redis

pytestmark = pytest.mark.integration

L2_TTL = 3600
OLD = "2000-01-01T00:00:00.000+00:00"


def make_store(redis: Redis, keys: Keys) -> SessionStore:
    return SessionStore(redis, keys, l2_ttl=L2_TTL, l1_max=100, l1_ttl=60.0)


@pytest.fixture
def store(redis: Redis, keys: Keys) -> SessionStore:
    return make_store(redis, keys)


async def test_open_creates_the_session(store: SessionStore, redis: Redis, keys: Keys) -> None:
    record, created = await store.open("s1", "u1")

    assert created is True
    assert (record.session_id, record.owner) == ("s1", "u1")
    raw = await redis.hgetall(keys.session("s1"))
    assert raw == {"owner": "u1", "created_at": record.created_at, "last_seen": record.created_at}
    assert 0 < await redis.ttl(keys.session("s1")) <= L2_TTL
    assert await redis.hget(keys.sessions_active(), "s1") == "u1"
    assert await redis.smembers(keys.user_sessions("u1")) == {"s1"}
    assert await store.owner("s1") == "u1"


async def test_reopen_by_the_owner_touches_the_record(
    store: SessionStore, redis: Redis, keys: Keys
) -> None:
    first, _ = await store.open("s1", "u1")
    await redis.hset(keys.session("s1"), "last_seen", OLD)
    await redis.expire(keys.session("s1"), 5)
    other_node = make_store(redis, keys)  # no L1 entry: goes to Redis

    record, created = await other_node.open("s1", "u1")

    assert created is False
    assert record == first
    raw = await redis.hgetall(keys.session("s1"))
    assert raw["created_at"] == first.created_at
    assert raw["last_seen"] > OLD
    assert 5 < await redis.ttl(keys.session("s1")) <= L2_TTL


async def test_another_user_is_forbidden_from_redis_and_from_l1(
    store: SessionStore, redis: Redis, keys: Keys
) -> None:
    await store.open("s1", "u1")
    other_node = make_store(redis, keys)

    with pytest.raises(Forbidden):
        await other_node.open("s1", "u2")  # answered by Redis
    with pytest.raises(Forbidden):
        await other_node.open("s1", "u2")  # now answered by its L1
    with pytest.raises(Forbidden):
        await store.open("s1", "u2")  # answered by the L1 of the creating node

    assert await redis.hget(keys.session("s1"), "owner") == "u1"
    assert await redis.hget(keys.sessions_active(), "s1") == "u1"
    assert await redis.exists(keys.user_sessions("u2")) == 0


async def test_l1_answers_without_redis_until_invalidated(
    store: SessionStore, redis: Redis, keys: Keys
) -> None:
    first, _ = await store.open("s1", "u1")
    await redis.delete(keys.session("s1"))  # behind the cache's back

    assert await store.owner("s1") == "u1"
    record, created = await store.open("s1", "u1")
    assert (record, created) == (first, False)
    assert await redis.exists(keys.session("s1")) == 0  # the L1 hit did not touch Redis
    with pytest.raises(Forbidden):
        await store.open("s1", "u2")

    store.invalidate("s1")

    assert await store.owner("s1") is None
    record, created = await store.open("s1", "u2")  # gone from Redis: a new session
    assert created is True and record.owner == "u2"


async def test_owner_reads_redis_when_not_cached(
    store: SessionStore, redis: Redis, keys: Keys
) -> None:
    assert await store.owner("unknown") is None
    await make_store(redis, keys).open("s1", "u1")

    assert await store.owner("s1") == "u1"


async def test_storage_error_when_redis_is_unreachable(keys: Keys) -> None:
    client = unreachable_redis()
    store = make_store(client, keys)
    try:
        with pytest.raises(StorageError, match="session_open"):
            await store.open("s1", "u1")
        with pytest.raises(StorageError, match="owner"):
            await store.owner("s1")
    finally:
        await client.aclose()
