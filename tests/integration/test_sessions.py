"""SessionStore against a real Redis: the owner record (L2) and the in-process L1
cache in front of it, and the session's TTL on the record and everything it stores."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from services.common.errors import StorageError
from services.common.keys import Keys
from services.common.message_store import AcceptOutcome, FinishOutcome, MessageStore
from services.ws_gateway.sessions import Forbidden, SessionStore
from tests.integration.redis_helpers import (
    eventually,
    finish,
    make_message_store,
    make_session_store,
    unreachable_redis,
)

pytestmark = pytest.mark.integration

SESSION_TTL = 3600
OLD = "2000-01-01T00:00:00.000+00:00"


def make_store(redis: Redis, keys: Keys) -> SessionStore:
    return make_session_store(redis, keys, SESSION_TTL)


@pytest.fixture
def store(redis: Redis, keys: Keys) -> SessionStore:
    return make_store(redis, keys)


async def test_open_creates_the_session(store: SessionStore, redis: Redis, keys: Keys) -> None:
    record, created = await store.open("s1", "u1")

    assert created is True
    assert (record.session_id, record.owner) == ("s1", "u1")
    raw = await redis.hgetall(keys.session("s1"))
    assert raw == {"owner": "u1", "created_at": record.created_at, "last_seen": record.created_at}
    assert 0 < await redis.ttl(keys.session("s1")) <= SESSION_TTL
    assert await redis.smembers(keys.user_sessions("u1")) == {"s1"}
    assert 0 < await redis.ttl(keys.user_sessions("u1")) <= SESSION_TTL
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
    assert 5 < await redis.ttl(keys.session("s1")) <= SESSION_TTL


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


# --- the session's TTL: everything it stores lives exactly as long as its owner record ---


def data_keys(keys: Keys, session_id: str = "s1", user_id: str = "u1") -> list[str]:
    return [
        keys.session_history(session_id),
        keys.session_messages(session_id),
        keys.user_sessions(user_id),
    ]


def message_store(redis: Redis, keys: Keys, session_ttl: int = SESSION_TTL) -> MessageStore:
    return make_message_store(redis, keys, meta_ttl=600, session_ttl=session_ttl)


async def chat_and_answer(redis: Redis, keys: Keys, session_ttl: int = SESSION_TTL) -> None:
    messages = message_store(redis, keys, session_ttl)
    outcome, mid = await messages.accept_chat("s1", "u1", "secret question", "c1")
    assert outcome is AcceptOutcome.NEW
    assert await finish(messages, mid, text="secret answer") is FinishOutcome.OK


async def test_open_by_the_owner_refreshes_the_record_and_all_its_data(
    store: SessionStore, redis: Redis, keys: Keys
) -> None:
    await store.open("s1", "u1")
    await chat_and_answer(redis, keys)
    for name in [keys.session("s1"), *data_keys(keys)]:
        await redis.expire(name, 5)

    await make_store(redis, keys).open("s1", "u1")  # another node: no L1 entry

    for name in [keys.session("s1"), *data_keys(keys)]:
        assert SESSION_TTL - 5 < await redis.ttl(name) <= SESSION_TTL, name


async def test_another_users_open_touches_nothing(
    store: SessionStore, redis: Redis, keys: Keys
) -> None:
    await store.open("s1", "u1")
    await redis.hset(keys.session("s1"), "last_seen", OLD)
    await redis.expire(keys.session("s1"), 5)

    with pytest.raises(Forbidden):
        await make_store(redis, keys).open("s1", "u2")

    assert await redis.hget(keys.session("s1"), "last_seen") == OLD
    assert await redis.ttl(keys.session("s1")) <= 5  # an intruder cannot keep it alive


async def test_a_new_owner_never_inherits_data_left_without_an_owner_record(
    store: SessionStore, redis: Redis, keys: Keys
) -> None:
    """Data written before these keys had a TTL outlived its owner record: the next
    user to open the id must not read it."""
    await redis.rpush(keys.session_history("s1"), '{"text": "the earlier owner\'s"}')
    await redis.rpush(keys.session_messages("s1"), "m_old")

    _, created = await store.open("s1", "u2")

    assert created
    assert await redis.exists(keys.session_history("s1")) == 0
    assert await redis.exists(keys.session_messages("s1")) == 0


async def test_an_idle_session_expires_whole_and_its_id_is_free_with_nothing_to_read(
    redis: Redis, keys: Keys
) -> None:
    """Issue 7: the owner record used to expire while history and the message list
    stayed forever; whoever opened the id next became its owner and read them."""
    sessions = make_session_store(redis, keys, 1)
    await sessions.open("s1", "u1")
    await chat_and_answer(redis, keys, session_ttl=1)
    assert await redis.llen(keys.session_history("s1")) == 2

    async def owner_gone() -> bool:
        return not await redis.exists(keys.session("s1"))

    await eventually(owner_gone, 5, "the idle session's owner record to expire")

    left = [k async for k in redis.scan_iter(match=f"{keys.prefix}session*")]
    assert left == []
    assert await redis.exists(keys.user_sessions("u1")) == 0
    intruder = make_store(redis, keys)
    record, created = await intruder.open("s1", "u2")
    assert created and record.owner == "u2"
    assert await message_store(redis, keys).history("s1", 50) == []
