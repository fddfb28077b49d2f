"""MessageStore against a real Redis: every outcome of the accept, append and finish
scripts, and what each one writes (or leaves alone)."""

from __future__ import annotations

import time

import pytest
from redis.asyncio import Redis

from services.common.errors import StorageError
from services.common.keys import Keys
from services.common.message_store import (
    ACTIVE_TTL_MS,
    CLIENT_MSG_TTL_S,
    AcceptOutcome,
    AppendOutcome,
    FinishOutcome,
    MessageStore,
    SessionTaken,
    user_item_id,
)
from services.common.protocol import ErrorCode, FinishReason, MessageStatus, StreamInfo, Usage
from services.common.streams import ChunkEntry, DoneEntry
from tests.integration.redis_helpers import unreachable_redis

pytestmark = pytest.mark.integration

STREAM_TTL = 600
META_TTL = 3600
HISTORY_MAX = 50
SESSION_TTL = 7200
SESSION = "s1"


def make_store(redis: Redis, keys: Keys, session_ttl: int = SESSION_TTL) -> MessageStore:
    return MessageStore(
        redis,
        keys,
        stream_ttl=STREAM_TTL,
        meta_ttl=META_TTL,
        history_max=HISTORY_MAX,
        lease_ttl_ms=30_000,
        session_ttl=session_ttl,
    )


@pytest.fixture
def store(redis: Redis, keys: Keys) -> MessageStore:
    return make_store(redis, keys)


async def accept(store: MessageStore, client_msg_id: str, text: str = "hello") -> str:
    outcome, mid = await store.accept_chat(SESSION, "u1", text, client_msg_id)
    assert outcome is AcceptOutcome.NEW
    return mid


async def finish(
    store: MessageStore,
    mid: str,
    token: str,
    last_seq: int = 0,
    text: str = "answer",
    evict: str = "",
) -> FinishOutcome:
    return await store.finish(
        mid,
        SESSION,
        token=token,
        last_seq=last_seq,
        text=text,
        reason=FinishReason.STOP,
        usage=Usage(prompt_tokens=3, completion_tokens=last_seq),
        evict=evict,
    )


async def append(store: MessageStore, mid: str, token: str, seq: int, delta: str = "x") -> str:
    return await store.append_chunk(mid, SESSION, token=token, seq=seq, delta=delta, tokens=1)


async def generator_token(store: MessageStore, mid: str) -> str:
    lease = await store.generators.acquire(mid, "w1")
    assert lease is not None
    return lease.token


async def generating(
    store: MessageStore, client_msg_id: str = "c1", *deltas: str, prompt: str = "hello"
) -> tuple[str, str]:
    """Accept a message, take its generator lease and append `deltas` as chunks 1..k.

    Returns the message id and the lease token."""
    mid = await accept(store, client_msg_id, prompt)
    token = await generator_token(store, mid)
    for seq, delta in enumerate(deltas, start=1):
        assert await append(store, mid, token, seq, delta) is AppendOutcome.OK
    return mid, token


# --- accept_chat -------------------------------------------------------------------------


async def test_accept_new_writes_meta_history_messages_and_session(
    store: MessageStore, redis: Redis, keys: Keys
) -> None:
    outcome, mid = await store.accept_chat(SESSION, "u1", "hello", "c1")

    assert outcome is AcceptOutcome.NEW
    assert mid.startswith("m_")
    meta = await store.meta(mid)
    assert meta is not None
    assert (meta.message_id, meta.session_id, meta.user_id, meta.prompt) == (
        mid,
        SESSION,
        "u1",
        "hello",
    )
    assert (meta.status, meta.last_seq, meta.completion_tokens) == (MessageStatus.PENDING, 0, 0)
    assert (await redis.hget(keys.message_meta(mid), "client_msg_id")) == "c1"
    assert 0 < await redis.ttl(keys.message_meta(mid)) <= META_TTL

    [item] = await store.history(SESSION, 10)
    assert (item.message_id, item.role, item.text) == (user_item_id(mid), "user", "hello")
    assert await redis.lrange(keys.session_messages(SESSION), 0, -1) == [mid]
    session = await redis.hgetall(keys.session(SESSION))
    assert session["current_message"] == mid
    assert session["last_seen"] == meta.created_at

    assert await redis.get(keys.session_active(SESSION)) == mid
    assert 0 < await redis.pttl(keys.session_active(SESSION)) <= ACTIVE_TTL_MS
    assert await redis.get(keys.client_msg(SESSION, "c1")) == mid
    assert 0 < await redis.ttl(keys.client_msg(SESSION, "c1")) <= CLIENT_MSG_TTL_S


async def test_accept_same_client_msg_id_is_a_duplicate_of_the_earlier_message(
    store: MessageStore, redis: Redis, keys: Keys
) -> None:
    mid = await accept(store, "c1")

    assert await store.accept_chat(SESSION, "u1", "hello again", "c1") == (
        AcceptOutcome.DUPLICATE,
        mid,
    )
    # Still a duplicate once the answer is finished and the session is free.
    assert await finish(store, mid, token="") is FinishOutcome.OK
    assert await store.accept_chat(SESSION, "u1", "hello again", "c1") == (
        AcceptOutcome.DUPLICATE,
        mid,
    )
    assert await redis.lrange(keys.session_messages(SESSION), 0, -1) == [mid]
    assert await redis.llen(keys.session_history(SESSION)) == 2  # user + assistant


async def test_accept_while_an_answer_is_active_is_busy_with_the_active_id(
    store: MessageStore, redis: Redis, keys: Keys
) -> None:
    mid = await accept(store, "c1")

    assert await store.accept_chat(SESSION, "u1", "second", "c2") == (AcceptOutcome.BUSY, mid)
    assert await redis.lrange(keys.session_messages(SESSION), 0, -1) == [mid]
    assert await redis.llen(keys.session_history(SESSION)) == 1
    assert await redis.exists(keys.client_msg(SESSION, "c2")) == 0
    # Another session is not busy.
    outcome, _ = await store.accept_chat("s2", "u1", "elsewhere", "c2")
    assert outcome is AcceptOutcome.NEW


# --- append_chunk ------------------------------------------------------------------------


async def test_append_ok_writes_the_chunk_and_updates_meta(
    store: MessageStore, redis: Redis, keys: Keys
) -> None:
    mid, token = await generating(store)
    await redis.pexpire(keys.session_active(SESSION), 1_000)
    before_ms = int(time.time() * 1000)

    assert await append(store, mid, token, 1, "Hel") is AppendOutcome.OK
    assert (
        await store.append_chunk(mid, SESSION, token=token, seq=2, delta="lo", tokens=2)
        is AppendOutcome.OK
    )

    raw = await redis.xrange(keys.message_stream(mid))
    assert [(eid, f["d"]) for eid, f in raw] == [("0-1", "Hel"), ("0-2", "lo")]
    assert all(set(f) == {"d", "t"} for _, f in raw)
    assert before_ms <= int(raw[0][1]["t"]) <= int(time.time() * 1000)
    assert 0 < await redis.ttl(keys.message_stream(mid)) <= STREAM_TTL
    meta = await store.meta(mid)
    assert meta is not None
    assert (meta.status, meta.last_seq, meta.completion_tokens) == (MessageStatus.STREAMING, 2, 3)
    # Every chunk keeps the session busy for another ACTIVE_TTL_MS.
    assert await redis.pttl(keys.session_active(SESSION)) > 1_000


async def assert_chunks(store: MessageStore, mid: str, *deltas: str) -> None:
    """The stream holds exactly chunks 1..k with `deltas`, and the meta says k."""
    entries = await store.read_entries(mid)
    assert [(e.seq, e.delta) for e in entries if isinstance(e, ChunkEntry)] == list(
        enumerate(deltas, start=1)
    )
    meta = await store.meta(mid)
    assert meta is not None and meta.last_seq == len(deltas)


@pytest.mark.parametrize("token", ["w1:stale", ""])
async def test_append_while_another_holds_the_lease_is_lost_and_writes_nothing(
    store: MessageStore, redis: Redis, keys: Keys, token: str
) -> None:
    mid = await accept(store, "c1")
    await redis.set(keys.message_lease(mid), "other")

    assert await append(store, mid, token, 1) is AppendOutcome.LOST
    assert await redis.exists(keys.message_stream(mid)) == 0
    meta = await store.meta(mid)
    assert meta is not None
    assert (meta.status, meta.last_seq) == (MessageStatus.PENDING, 0)
    assert await redis.get(keys.message_lease(mid)) == "other"


async def test_append_takes_back_a_lease_that_lapsed_with_nobody_taking_it(
    store: MessageStore, redis: Redis, keys: Keys
) -> None:
    mid, token = await generating(store, "c1", "a")
    await redis.delete(keys.message_lease(mid))  # it expired (or Redis lost it)

    assert await append(store, mid, token, 2, "b") is AppendOutcome.OK

    await assert_chunks(store, mid, "a", "b")
    assert await redis.get(keys.message_lease(mid)) == token
    assert 0 < await redis.pttl(keys.message_lease(mid)) <= store.generators.ttl_ms


async def test_append_stores_the_written_time_it_is_given(
    store: MessageStore, redis: Redis, keys: Keys
) -> None:
    """A chunk Redis lost is written again with the time it was first written."""
    mid, token = await generating(store)

    outcome = await store.append_chunk(
        mid, SESSION, token=token, seq=1, delta="Hel", tokens=1, written_ms=1_234
    )
    assert outcome is AppendOutcome.OK

    assert await redis.xrange(keys.message_stream(mid)) == [("0-1", {"d": "Hel", "t": "1234"})]
    assert await store.read_entries(mid) == [ChunkEntry(1, "Hel", 1_234)]


@pytest.mark.parametrize("seq", [1, 2, 4], ids=["again", "same", "skipping"])
@pytest.mark.parametrize("lease", ["held", "lapsed"])
async def test_append_of_any_seq_but_the_next_is_a_gap_and_writes_nothing(
    store: MessageStore, redis: Redis, keys: Keys, seq: int, lease: str
) -> None:
    mid, token = await generating(store, "c1", "a", "b")
    if lease == "lapsed":
        await redis.delete(keys.message_lease(mid))

    assert await append(store, mid, token, seq, "z") is AppendOutcome.GAP

    await assert_chunks(store, mid, "a", "b")
    meta = await store.meta(mid)
    assert meta is not None and meta.completion_tokens == 2
    # A gap does not take a lapsed lease back either.
    assert await store.generators.holder(mid) == (token if lease == "held" else None)


@pytest.mark.parametrize("lease", ["held", "lapsed"])
async def test_append_after_the_final_record_is_lost_and_writes_nothing(
    store: MessageStore, redis: Redis, keys: Keys, lease: str
) -> None:
    mid = await accept(store, "c1")
    assert await finish(store, mid, "") is FinishOutcome.OK
    token = await generator_token(store, mid)
    if lease == "lapsed":
        await redis.delete(keys.message_lease(mid))

    assert await append(store, mid, token, 1) is AppendOutcome.LOST

    assert [type(e) for e in await store.read_entries(mid)] == [DoneEntry]
    meta = await store.meta(mid)
    assert meta is not None
    assert (meta.status, meta.last_seq, meta.completion_tokens) == (MessageStatus.DONE, 0, 0)
    assert await store.generators.holder(mid) == (token if lease == "held" else None)


async def test_append_after_cancel_is_cancelled_and_writes_nothing(
    store: MessageStore, redis: Redis, keys: Keys
) -> None:
    mid, token = await generating(store, "c1", "x")
    assert not await store.is_cancelled(mid)

    await store.cancel(mid)

    assert await store.is_cancelled(mid)
    assert 0 < await redis.ttl(keys.message_cancel(mid)) <= META_TTL
    assert await append(store, mid, token, 2) is AppendOutcome.CANCELLED
    assert await redis.xlen(keys.message_stream(mid)) == 1
    meta = await store.meta(mid)
    assert meta is not None and meta.last_seq == 1


# --- finish ------------------------------------------------------------------------------


async def test_finish_by_the_holder_writes_the_final_record_and_frees_the_session(
    store: MessageStore, redis: Redis, keys: Keys
) -> None:
    mid, token = await generating(store, "c1", "Hel", "lo", prompt="question")

    assert await finish(store, mid, token, last_seq=2, text="Hello") is FinishOutcome.OK

    raw = await redis.xrange(keys.message_stream(mid))
    assert [eid for eid, _ in raw] == ["0-1", "0-2", "1-0"]
    assert raw[-1][1] == {
        "last_seq": "2",
        "finish_reason": "stop",
        "prompt_tokens": "3",
        "completion_tokens": "2",
    }
    assert 0 < await redis.ttl(keys.message_stream(mid)) <= STREAM_TTL
    meta = await store.meta(mid)
    assert meta is not None
    assert (meta.status, meta.last_seq) == (MessageStatus.DONE, 2)
    assert await redis.hget(keys.message_meta(mid), "finish_reason") == "stop"
    assert await store.generators.holder(mid) is None
    assert await redis.exists(keys.session_active(SESSION)) == 0
    history = await store.history(SESSION, 10)
    assert [(h.message_id, h.role, h.text) for h in history] == [
        (user_item_id(mid), "user", "question"),
        (mid, "assistant", "Hello"),
    ]
    outcome, next_mid = await store.accept_chat(SESSION, "u1", "next", "c2")
    assert outcome is AcceptOutcome.NEW and next_mid != mid


async def test_finish_with_an_error_code_records_it(store: MessageStore) -> None:
    mid = await accept(store, "c1")

    outcome = await store.finish(
        mid,
        SESSION,
        token="",
        last_seq=0,
        text="",
        reason=FinishReason.ERROR,
        usage=Usage(),
        error=ErrorCode.UPSTREAM_UNAVAILABLE,
    )

    assert outcome is FinishOutcome.OK
    assert await store.read_entries(mid) == [
        DoneEntry(0, FinishReason.ERROR, Usage(), ErrorCode.UPSTREAM_UNAVAILABLE)
    ]


async def assert_untouched(store: MessageStore, redis: Redis, keys: Keys, mid: str) -> None:
    assert await redis.exists(keys.message_stream(mid)) == 0
    meta = await store.meta(mid)
    assert meta is not None and meta.status is MessageStatus.PENDING
    assert await redis.get(keys.session_active(SESSION)) == mid
    assert await redis.llen(keys.session_history(SESSION)) == 1


@pytest.mark.parametrize(
    ("token", "expected"),
    [("w2:stale", FinishOutcome.LOST), ("", FinishOutcome.LEASED)],
    ids=["wrong-token-is-lost", "no-token-while-leased-is-leased"],
)
async def test_finish_while_another_holds_the_lease_writes_nothing(
    store: MessageStore, redis: Redis, keys: Keys, token: str, expected: FinishOutcome
) -> None:
    mid, holder = await generating(store)

    assert await finish(store, mid, token) is expected
    await assert_untouched(store, redis, keys, mid)
    assert await store.generators.holder(mid) == holder


async def test_finish_by_a_holder_whose_lease_lapsed_with_nobody_taking_it_is_ok(
    store: MessageStore, redis: Redis, keys: Keys
) -> None:
    mid, token = await generating(store, "c1", "x")
    await redis.delete(keys.message_lease(mid))  # it expired (or Redis lost it)

    assert await finish(store, mid, token, last_seq=1) is FinishOutcome.OK

    await assert_chunks(store, mid, "x")
    assert (await store.read_entries(mid, after_seq=1)) == [
        DoneEntry(1, FinishReason.STOP, Usage(prompt_tokens=3, completion_tokens=1))
    ]
    meta = await store.meta(mid)
    assert meta is not None and meta.status is MessageStatus.DONE
    assert await redis.exists(keys.session_active(SESSION)) == 0
    assert await store.generators.holder(mid) is None


@pytest.mark.parametrize("last_seq", [1, 3], ids=["behind", "ahead"])
async def test_finish_at_another_last_seq_than_stored_is_a_gap_and_writes_nothing(
    store: MessageStore, redis: Redis, keys: Keys, last_seq: int
) -> None:
    """Redis came back with fewer (or more) chunks than the worker wrote."""
    mid, token = await generating(store, "c1", "a", "b")

    assert await finish(store, mid, token, last_seq=last_seq) is FinishOutcome.GAP

    await assert_chunks(store, mid, "a", "b")
    meta = await store.meta(mid)
    assert meta is not None and meta.status is MessageStatus.STREAMING
    assert await redis.get(keys.session_active(SESSION)) == mid
    assert await redis.llen(keys.session_history(SESSION)) == 1
    assert await store.generators.holder(mid) == token  # kept, to write the chunks again


async def test_finish_without_a_token_is_not_checked_for_gaps(store: MessageStore) -> None:
    """The gateway's forced end (nobody leases it) finishes at the seq it read."""
    mid, token = await generating(store, "c1", "a", "b")
    await store.generators.release(mid, token)

    assert await finish(store, mid, "", last_seq=1) is FinishOutcome.OK
    meta = await store.meta(mid)
    assert meta is not None and (meta.status, meta.last_seq) == (MessageStatus.DONE, 1)


async def test_finish_evicting_the_stuck_holder_ends_the_answer_and_takes_the_lease(
    store: MessageStore, redis: Redis, keys: Keys
) -> None:
    mid, token = await generating(store, "c1", "a", "b")

    assert await finish(store, mid, "", last_seq=2, evict=token) is FinishOutcome.OK

    meta = await store.meta(mid)
    assert meta is not None and (meta.status, meta.last_seq) == (MessageStatus.DONE, 2)
    assert await store.generators.holder(mid) is None
    # The evicted worker, writing on, is refused; nothing follows the final record.
    assert await append(store, mid, token, 3) is AppendOutcome.LOST
    entries = await store.read_entries(mid)
    assert [type(e) for e in entries] == [ChunkEntry, ChunkEntry, DoneEntry]


@pytest.mark.parametrize(
    ("evict", "last_seq", "expected"),
    [("w9:other", 2, FinishOutcome.LEASED), ("holder", 1, FinishOutcome.GAP)],
    ids=["another-holder-is-leased", "the-holder-wrote-meanwhile-is-a-gap"],
)
async def test_finish_evicting_writes_nothing_unless_it_is_still_stuck(
    store: MessageStore, redis: Redis, keys: Keys, evict: str, last_seq: int, expected: str
) -> None:
    mid, token = await generating(store, "c1", "a", "b")
    evict = token if evict == "holder" else evict

    assert await finish(store, mid, "", last_seq=last_seq, evict=evict) is expected

    await assert_chunks(store, mid, "a", "b")
    meta = await store.meta(mid)
    assert meta is not None and meta.status is MessageStatus.STREAMING
    assert await store.generators.holder(mid) == token


async def test_finish_without_a_token_when_nobody_leases_is_ok(
    store: MessageStore, redis: Redis, keys: Keys
) -> None:
    mid = await accept(store, "c1")

    assert await finish(store, mid, "") is FinishOutcome.OK
    assert [type(e) for e in await store.read_entries(mid)] == [DoneEntry]
    meta = await store.meta(mid)
    assert meta is not None and meta.status is MessageStatus.DONE
    assert await redis.exists(keys.session_active(SESSION)) == 0


async def test_finish_frees_the_session_only_if_it_is_still_this_message(
    store: MessageStore, redis: Redis, keys: Keys
) -> None:
    old = await accept(store, "c1")
    await redis.delete(keys.session_active(SESSION))  # its ACTIVE_TTL_MS ran out
    new = await accept(store, "c2")

    assert await finish(store, old, "") is FinishOutcome.OK
    assert await redis.get(keys.session_active(SESSION)) == new


async def test_a_second_finish_is_already_done_and_writes_nothing(
    store: MessageStore, redis: Redis, keys: Keys
) -> None:
    mid, token = await generating(store, "c1", "x")
    assert await finish(store, mid, token, last_seq=1) is FinishOutcome.OK
    stream_len = await redis.xlen(keys.message_stream(mid))
    history_len = await redis.llen(keys.session_history(SESSION))

    assert await finish(store, mid, "", last_seq=7) is FinishOutcome.ALREADY_DONE
    # The first finish dropped the lease; nobody took it, so its token finds it done.
    assert await finish(store, mid, token, last_seq=7) is FinishOutcome.ALREADY_DONE
    assert await finish(store, mid, token, last_seq=1) is FinishOutcome.ALREADY_DONE
    assert await store.generators.holder(mid) is None  # not taken back by the finish
    # A worker that took the lease over afterwards still cannot finish twice.
    late = await generator_token(store, mid)
    assert await finish(store, mid, late, last_seq=7) is FinishOutcome.ALREADY_DONE

    assert await redis.xlen(keys.message_stream(mid)) == stream_len
    assert await redis.llen(keys.session_history(SESSION)) == history_len
    meta = await store.meta(mid)
    assert meta is not None and meta.last_seq == 1
    assert await store.generators.holder(mid) == late  # ALREADY_DONE leaves the lease


# --- reading -----------------------------------------------------------------------------


async def test_read_entries_pages_by_seq_and_count_with_the_final_record_last(
    store: MessageStore,
) -> None:
    mid, token = await generating(store, "c1", *(f"d{seq}" for seq in range(1, 6)))
    assert await finish(store, mid, token, last_seq=5) is FinishOutcome.OK

    def shape(entries: list[ChunkEntry | DoneEntry]) -> list[int | str]:
        return [e.seq if isinstance(e, ChunkEntry) else "done" for e in entries]

    everything = await store.read_entries(mid)
    assert shape(everything) == [1, 2, 3, 4, 5, "done"]
    assert [e.delta for e in everything if isinstance(e, ChunkEntry)] == [
        "d1",
        "d2",
        "d3",
        "d4",
        "d5",
    ]
    assert everything[-1] == DoneEntry(
        5, FinishReason.STOP, Usage(prompt_tokens=3, completion_tokens=5)
    )
    assert shape(await store.read_entries(mid, after_seq=2)) == [3, 4, 5, "done"]
    assert shape(await store.read_entries(mid, after_seq=0, count=2)) == [1, 2]
    assert shape(await store.read_entries(mid, after_seq=2, count=2)) == [3, 4]
    assert shape(await store.read_entries(mid, after_seq=4, count=2)) == [5, "done"]
    assert shape(await store.read_entries(mid, after_seq=5)) == ["done"]
    assert await store.read_entries("m_unknown") == []


@pytest.mark.parametrize(
    ("entry_id", "fields"),
    [("0-1", {"x": "no d field"}), ("5-0", {"d": "not a chunk id"}), ("1-0", {"last_seq": "1"})],
    ids=["chunk-without-d", "foreign-id", "final-without-reason"],
)
async def test_read_entries_raises_value_error_on_a_malformed_entry(
    store: MessageStore, redis: Redis, keys: Keys, entry_id: str, fields: dict[str, str]
) -> None:
    await redis.xadd(keys.message_stream("m1"), fields, id=entry_id)

    with pytest.raises(ValueError, match=entry_id):
        await store.read_entries("m1")


async def test_session_streams_lists_unfinished_and_still_cached_messages(
    store: MessageStore, redis: Redis, keys: Keys
) -> None:
    gone_meta = await accept(store, "c0")
    assert await finish(store, gone_meta, "") is FinishOutcome.OK
    await redis.delete(keys.message_meta(gone_meta))  # the meta expired

    cached, token = await generating(store, "c1", "x")
    assert await finish(store, cached, token, last_seq=1) is FinishOutcome.OK

    expired = await accept(store, "c2")
    assert await finish(store, expired, "") is FinishOutcome.OK
    await redis.delete(keys.message_stream(expired))  # the chunk cache expired

    streaming, _ = await generating(store, "c3", "x", "x")
    await redis.delete(keys.session_active(SESSION))  # the busy mark ran out

    pending = await accept(store, "c4")

    assert await store.session_streams(SESSION) == [
        StreamInfo(message_id=cached, last_seq=1, status=MessageStatus.DONE),
        StreamInfo(message_id=streaming, last_seq=2, status=MessageStatus.STREAMING),
        StreamInfo(message_id=pending, last_seq=0, status=MessageStatus.PENDING),
    ]
    assert await store.stream_exists(cached)
    assert not await store.stream_exists(expired)
    assert not await store.stream_exists(pending)
    assert await store.session_streams("no-such-session") == []


async def test_orphaned_only_when_unfinished_and_nobody_generates_or_drives(
    store: MessageStore,
) -> None:
    mid = await accept(store, "c1")
    assert await store.orphaned(mid) == SESSION

    generator = await store.generators.acquire(mid, "w1")
    assert generator is not None
    assert await store.orphaned(mid) is None
    assert await append(store, mid, generator.token, 1) is AppendOutcome.OK
    await generator.release()
    assert await store.orphaned(mid) == SESSION  # streaming, and its worker is gone

    driver = await store.drivers.acquire(mid, "g1")
    assert driver is not None
    assert await store.orphaned(mid) is None
    await driver.release()
    assert await store.orphaned(mid) == SESSION

    assert await finish(store, mid, "", last_seq=1) is FinishOutcome.OK
    assert await store.orphaned(mid) is None
    assert await store.orphaned("m_unknown") is None


@pytest.mark.parametrize("step", ["finish", "append"])
async def test_a_late_write_after_the_meta_expired_leaves_no_partial_meta(
    store: MessageStore, redis: Redis, keys: Keys, step: str
) -> None:
    mid, token = await generating(store)
    await redis.delete(keys.message_meta(mid))  # its META_TTL ran out

    if step == "finish":
        await finish(store, mid, token)
    else:
        await append(store, mid, token, 1)

    assert await redis.ttl(keys.message_meta(mid)) != -1  # no key without a TTL
    # …and meta() answers (None, or a whole record) instead of raising KeyError.
    meta = await store.meta(mid)
    assert meta is None or meta.session_id == SESSION


async def test_meta_of_an_unknown_message_is_none(store: MessageStore) -> None:
    assert await store.meta("m_unknown") is None


# --- the session's TTL and owner --------------------------------------------------------


def session_keys(keys: Keys, user_id: str = "u1") -> list[str]:
    """The keys accept and finish give the session's TTL: the record, its history and
    message list, and the owner's session set."""
    return [
        keys.session(SESSION),
        keys.session_history(SESSION),
        keys.session_messages(SESSION),
        keys.user_sessions(user_id),
    ]


async def ttls(redis: Redis, names: list[str]) -> list[int]:
    return [await redis.ttl(name) for name in names]


async def test_accept_gives_the_session_record_and_its_data_the_session_ttl(
    store: MessageStore, redis: Redis, keys: Keys
) -> None:
    mid = await accept(store, "c1")

    assert await redis.hget(keys.session(SESSION), "owner") == "u1"
    assert await redis.smembers(keys.user_sessions("u1")) == {SESSION}
    for name, ttl in zip(session_keys(keys), await ttls(redis, session_keys(keys)), strict=True):
        assert SESSION_TTL - 5 < ttl <= SESSION_TTL, name
    # The dedupe, busy and message keys keep their own, shorter TTLs.
    assert 0 < await redis.ttl(keys.client_msg(SESSION, "c1")) <= CLIENT_MSG_TTL_S
    assert 0 < await redis.pttl(keys.session_active(SESSION)) <= ACTIVE_TTL_MS
    assert 0 < await redis.ttl(keys.message_meta(mid)) <= META_TTL


async def test_finish_refreshes_the_session_ttl_with_the_history_item(
    store: MessageStore, redis: Redis, keys: Keys
) -> None:
    mid = await accept(store, "c1")
    for name in session_keys(keys)[:3]:
        await redis.expire(name, 5)

    assert await finish(store, mid, "") is FinishOutcome.OK

    assert await redis.llen(keys.session_history(SESSION)) == 2
    for name, ttl in zip(
        session_keys(keys)[:3], await ttls(redis, session_keys(keys)[:3]), strict=True
    ):
        assert SESSION_TTL - 5 < ttl <= SESSION_TTL, name


async def test_a_short_session_ttl_caps_the_dedupe_and_busy_keys(redis: Redis, keys: Keys) -> None:
    store = make_store(redis, keys, session_ttl=60)
    await accept(store, "c1")

    assert 0 < await redis.ttl(keys.client_msg(SESSION, "c1")) <= 60
    assert 0 < await redis.pttl(keys.session_active(SESSION)) <= 60_000
    assert 0 < await redis.ttl(keys.session(SESSION)) <= 60


async def test_accept_in_a_session_another_user_owns_now_writes_nothing(
    store: MessageStore, redis: Redis, keys: Keys
) -> None:
    """The owner's record expired under an open connection and another user took the
    id: that connection's chat must not land in (or read) the new owner's session."""
    await redis.hset(keys.session(SESSION), mapping={"owner": "u2", "created_at": "t"})

    with pytest.raises(SessionTaken):
        await store.accept_chat(SESSION, "u1", "hello", "c1")

    assert await redis.hgetall(keys.session(SESSION)) == {"owner": "u2", "created_at": "t"}
    for name in (
        keys.session_history(SESSION),
        keys.session_messages(SESSION),
        keys.session_active(SESSION),
        keys.client_msg(SESSION, "c1"),
        keys.user_sessions("u1"),
    ):
        assert await redis.exists(name) == 0, name
    assert [k async for k in redis.scan_iter(match=f"{keys.prefix}msg:*")] == []


async def test_accept_without_an_owner_record_owns_the_session_from_scratch(
    store: MessageStore, redis: Redis, keys: Keys
) -> None:
    """Data left without an owner record (written before these keys expired) is never
    inherited: the accepting user owns a fresh session."""
    await redis.rpush(keys.session_history(SESSION), '{"left": "over"}')
    await redis.rpush(keys.session_messages(SESSION), "m_old")

    mid = await accept(store, "c1")

    record = await redis.hgetall(keys.session(SESSION))
    assert (record["owner"], record["current_message"]) == ("u1", mid)
    assert record["created_at"] == record["last_seen"]
    assert [h.message_id for h in await store.history(SESSION, 10)] == [user_item_id(mid)]
    assert await redis.lrange(keys.session_messages(SESSION), 0, -1) == [mid]
    assert -1 not in await ttls(redis, session_keys(keys))


@pytest.mark.parametrize("owner", ["u2", None], ids=["another-user", "no-record"])
async def test_finish_writes_history_only_while_its_author_owns_the_session(
    store: MessageStore, redis: Redis, keys: Keys, owner: str | None
) -> None:
    mid = await accept(store, "c1")
    await redis.delete(*session_keys(keys)[:3])  # the session expired...
    if owner is not None:  # ...and another user opened the id
        await redis.hset(keys.session(SESSION), mapping={"owner": owner, "created_at": "t"})

    assert await finish(store, mid, "") is FinishOutcome.OK

    meta = await store.meta(mid)
    assert meta is not None and meta.status is MessageStatus.DONE
    assert await redis.exists(keys.session_history(SESSION)) == 0
    assert await redis.exists(keys.session_messages(SESSION)) == 0
    if owner is None:
        assert await redis.exists(keys.session(SESSION)) == 0
    else:
        assert await redis.hgetall(keys.session(SESSION)) == {"owner": owner, "created_at": "t"}
        assert await redis.ttl(keys.session(SESSION)) == -1  # not touched


# --- Redis unreachable -------------------------------------------------------------------


async def test_every_kind_of_call_raises_storage_error_when_redis_is_unreachable(
    keys: Keys,
) -> None:
    client = unreachable_redis()
    store = make_store(client, keys)
    try:
        with pytest.raises(StorageError, match="meta"):
            await store.meta("m1")  # a storage_op method
        with pytest.raises(StorageError, match="session_streams"):
            await store.session_streams(SESSION)  # a pipeline
        with pytest.raises(StorageError, match="accept_chat"):
            await store.accept_chat(SESSION, "u1", "hello", "c1")  # a script
        with pytest.raises(StorageError, match="_author|finish_message"):
            await finish(store, "m1", "")
        with pytest.raises(StorageError, match="acquire"):
            await store.generators.acquire("m1", "w1")
    finally:
        await client.aclose()


async def test_generation_inputs_read_cache_cancel_and_history_in_one_go(
    store: MessageStore,
) -> None:
    first, token = await generating(store, "c1", prompt="first question")
    assert await finish(store, first, token, text="first answer") is FinishOutcome.OK
    mid, _ = await generating(store, "c2", "Hel", "lo", prompt="second question")

    entries, cancelled, history = await store.generation_inputs(mid, SESSION, 10)

    assert [(e.seq, e.delta) for e in entries if isinstance(e, ChunkEntry)] == [
        (1, "Hel"),
        (2, "lo"),
    ]
    assert cancelled is False
    assert [item.text for item in history] == ["first question", "first answer", "second question"]
    assert [item.text for item in (await store.generation_inputs(mid, SESSION, 1))[2]] == [
        "second question"
    ]
    await store.cancel(mid)
    assert (await store.generation_inputs(mid, SESSION, 10))[1] is True
