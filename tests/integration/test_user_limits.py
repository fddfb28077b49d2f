"""Per-user limits against a real Redis: chats a minute and answers in progress count
across sessions (and so across connections and nodes); a refusal writes nothing and
says when to retry; a finished answer stops counting."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from services.common.keys import Keys
from services.common.message_store import (
    AcceptOutcome,
    FinishOutcome,
    MessageStore,
    UserLimited,
    UserLimits,
)
from tests.integration.redis_helpers import finish, make_message_store

pytestmark = pytest.mark.integration


def store_with(redis: Redis, keys: Keys, limits: UserLimits) -> MessageStore:
    return make_message_store(redis, keys, limits=limits)


async def new_answer(store: MessageStore, session: str, user: str = "u1") -> str:
    outcome, mid = await store.accept_chat(session, user, "hello", None)
    assert outcome is AcceptOutcome.NEW
    return mid


async def test_answers_in_progress_are_limited_per_user_across_sessions(
    redis: Redis, keys: Keys
) -> None:
    store = store_with(redis, keys, UserLimits(chats_per_minute=100, max_answers=2))
    first = await new_answer(store, "s1")
    await new_answer(store, "s2")
    keys_before = sorted(await redis.keys(f"{keys.prefix}*"))
    with pytest.raises(UserLimited, match="answers in progress") as refused:
        await store.accept_chat("s3", "u1", "hello", "c3")
    assert refused.value.retry_after > 0
    # Nothing was written for the refused chat, and another user is not affected.
    assert sorted(await redis.keys(f"{keys.prefix}*")) == keys_before
    await new_answer(store, "s9", user="u2")
    # A finished answer stops counting.
    assert await finish(store, first, "s1") is FinishOutcome.OK
    await new_answer(store, "s3")


async def test_chats_a_minute_are_limited_per_user(redis: Redis, keys: Keys) -> None:
    store = store_with(redis, keys, UserLimits(chats_per_minute=3, max_answers=100))
    accepted = []
    for n in range(3):
        outcome, mid = await store.accept_chat(f"s{n}", "u1", "hello", f"c{n}")
        assert outcome is AcceptOutcome.NEW
        accepted.append(mid)
    with pytest.raises(UserLimited, match="too many chats") as refused:
        await store.accept_chat("s9", "u1", "hello", None)
    assert 0 < refused.value.retry_after <= 60
    assert int(await redis.get(keys.user_chats("u1"))) == 3  # the refusal did not count
    assert 0 < await redis.pttl(keys.user_chats("u1")) <= 60_000
    # A retry of an accepted chat (same client_msg_id) still gets its earlier answer.
    assert await store.accept_chat("s0", "u1", "hello", "c0") == (
        AcceptOutcome.DUPLICATE,
        accepted[0],
    )


async def test_an_answer_that_never_finished_stops_counting_after_the_horizon(
    redis: Redis, keys: Keys
) -> None:
    store = store_with(
        redis, keys, UserLimits(chats_per_minute=100, max_answers=1, answer_horizon_ms=1)
    )
    await new_answer(store, "s1")
    # Its worker and gateway died: after the horizon the user may chat again.
    outcome, _ = await store.accept_chat("s2", "u1", "hello", None)
    assert outcome is AcceptOutcome.NEW
    # The set lives no longer than its newest member counts (-2: already gone).
    assert await redis.pttl(keys.user_answers("u1")) <= 1
