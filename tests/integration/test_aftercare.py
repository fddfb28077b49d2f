"""Aftercare against a real Redis: a finished answer whose last chunks, final record,
history item and event Redis lost is written again, identically, and the event keeps
its id; what is not this worker's to write is counted as lost."""

from __future__ import annotations

import json

import pytest
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from services.ai_worker.aftercare import Aftercare, FinishedAnswer, RecentlyFinished
from services.ai_worker.metrics import WorkerMetrics
from services.common.keys import Keys
from services.common.message_store import AcceptOutcome, AppendOutcome, FinishOutcome, MessageStore
from services.common.protocol import FinishReason, MessageStatus, Usage
from services.common.streams import DoneEntry

pytestmark = pytest.mark.integration

SESSION = "u1/s1"
DELTAS = ["Once ", "upon ", "a ", "time."]


@pytest.fixture
def store(redis: Redis, keys: Keys) -> MessageStore:
    return MessageStore(
        redis,
        keys,
        stream_ttl=600,
        meta_ttl=3600,
        history_max=50,
        lease_ttl_ms=30_000,
        node_id="worker-1",
        outbox_max=1000,
    )


@pytest.fixture
def aftercare(store: MessageStore) -> tuple[Aftercare, CollectorRegistry]:
    registry = CollectorRegistry()
    care = Aftercare(store, RecentlyFinished(30.0, 100), WorkerMetrics(registry), "worker-2")
    return care, registry


async def finished_answer(store: MessageStore) -> FinishedAnswer:
    """An answer generated and finished as a worker does it; what the worker kept."""
    outcome, mid = await store.accept_chat(SESSION, "u1", "Tell me a story", "c1")
    assert outcome is AcceptOutcome.NEW
    lease = await store.generators.acquire(mid, "worker-1")
    assert lease is not None
    written = {}
    for seq, delta in enumerate(DELTAS, start=1):
        written[seq] = (delta, 1_700_000_000_000 + seq)
        appended = await store.append_chunk(
            mid,
            SESSION,
            token=lease.token,
            seq=seq,
            delta=delta,
            tokens=1,
            written_ms=written[seq][1],
        )
        assert appended is AppendOutcome.OK
    final = DoneEntry(len(DELTAS), FinishReason.STOP, Usage(prompt_tokens=4, completion_tokens=4))
    text = "".join(DELTAS)
    finished = await store.finish(
        mid,
        SESSION,
        token=lease.token,
        last_seq=final.last_seq,
        text=text,
        reason=final.finish_reason,
        usage=final.usage,
        event_id="ev-completed-1",
    )
    assert finished is FinishOutcome.OK
    return FinishedAnswer(mid, SESSION, text, final, written, "ev-completed-1")


async def completed_events(redis: Redis, keys: Keys) -> list[tuple[str, dict[str, object]]]:
    entries = await redis.xrange(keys.events_outbox())
    events = [(eid, json.loads(fields["event"])) for eid, fields in entries]
    return [(eid, e) for eid, e in events if e["type"] == "message.completed"]


async def lose_the_end(redis: Redis, keys: Keys, mid: str, keep: int) -> None:
    """What a Redis that came back with less holds: chunks up to `keep`, no final record,
    no history item, no completed event, the session still busy with the answer."""
    stream = keys.message_stream(mid)
    # Written anew (XDEL would leave the stream's last id, which a restart resets).
    entries = await redis.xrange(stream)
    await redis.delete(stream)
    for entry_id, fields in entries[:keep]:
        await redis.xadd(stream, fields, id=entry_id)
    await redis.expire(stream, 600)
    await redis.hset(keys.message_meta(mid), mapping={"status": "streaming", "last_seq": keep})
    assert await redis.rpop(keys.session_history(SESSION)) is not None
    ((event_entry, _),) = await completed_events(redis, keys)
    await redis.xdel(keys.events_outbox(), event_entry)
    await redis.set(keys.session_active(SESSION), mid)


async def test_a_finished_answer_redis_lost_is_written_again_identically(
    store: MessageStore, redis: Redis, keys: Keys, aftercare: tuple[Aftercare, CollectorRegistry]
) -> None:
    care, registry = aftercare
    answer = await finished_answer(store)
    mid = answer.message_id
    stream_before = await redis.xrange(keys.message_stream(mid))
    history_before = await redis.lrange(keys.session_history(SESSION), 0, -1)
    ((_, event_before),) = await completed_events(redis, keys)
    await lose_the_end(redis, keys, mid, keep=2)

    assert await care.recheck([answer]) == 1

    assert await redis.xrange(keys.message_stream(mid)) == stream_before  # ids, times, text
    history = await redis.lrange(keys.session_history(SESSION), 0, -1)
    assert [json.loads(h)["text"] for h in history] == [
        json.loads(h)["text"] for h in history_before
    ]
    meta = await store.meta(mid)
    assert meta is not None and (meta.status, meta.last_seq) == (MessageStatus.DONE, 4)
    ((_, event),) = await completed_events(redis, keys)
    assert event["event_id"] == event_before["event_id"] == "ev-completed-1"
    assert event["data"] == event_before["data"]
    assert await store.generators.holder(mid) is None
    assert await redis.exists(keys.session_active(SESSION)) == 0  # the session is free
    assert registry.get_sample_value("worker_finished_rewritten_total") == 1

    # Stored as finished now: nothing more to do.
    assert await care.recheck([answer]) == 0
    assert len(await completed_events(redis, keys)) == 1


@pytest.mark.parametrize("loss", ["record", "others-chunks", "leased"])
async def test_what_is_not_this_workers_to_write_is_counted_as_lost(
    store: MessageStore,
    redis: Redis,
    keys: Keys,
    aftercare: tuple[Aftercare, CollectorRegistry],
    loss: str,
) -> None:
    care, registry = aftercare
    answer = await finished_answer(store)
    mid = answer.message_id
    await lose_the_end(redis, keys, mid, keep=1)
    if loss == "record":
        await redis.delete(keys.message_meta(mid))
    elif loss == "others-chunks":  # chunk 2 was written by a worker before a takeover
        answer = FinishedAnswer(
            mid, SESSION, answer.text, answer.final, {3: ("a ", 1), 4: ("time.", 2)}, "e"
        )
    else:  # somebody generates it again: not ours to write
        assert await store.generators.acquire(mid, "worker-3") is not None

    assert await care.recheck([answer]) == 0

    assert registry.get_sample_value("worker_finished_lost_total") == 1
    assert registry.get_sample_value("worker_finished_rewritten_total") == 0
    assert len(await redis.xrange(keys.message_stream(mid))) == 1  # nothing written
