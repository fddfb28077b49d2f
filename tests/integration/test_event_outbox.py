"""Issue 7, the writing side of the event outbox against a real Redis: the accept,
open and finish scripts each add exactly one event (with an event id) in the same
script as their change, and none when the change does not happen; a full outbox
counts instead of adding; KAFKA_ENABLED=false writes nothing. Also the drainer's store
(`EventOutbox`): the consumer group, pending entries, ack, reclaim."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from fnmatch import fnmatchcase
from typing import Any

import pytest
from redis.asyncio import Redis

from services.common.errors import StorageError
from services.common.event_outbox import GROUP, EventOutbox, outbox_max
from services.common.keys import Keys
from services.common.message_store import (
    AcceptOutcome,
    AppendOutcome,
    FinishOutcome,
    MessageStore,
    SessionTaken,
)
from services.common.protocol import FinishReason, Usage
from services.common.settings import Settings
from services.ws_gateway.sessions import Forbidden, SessionStore
from tests.integration.conftest import MakeRedis
from tests.integration.redis_helpers import (
    finish,
    make_message_store,
    make_session_store,
    unreachable_redis,
)

pytestmark = pytest.mark.integration

NODE = "gw-7"
EVENT_ID = re.compile(r"^[0-9a-f]{32}$")


def message_store(redis: Redis, keys: Keys, max_len: int = 100) -> MessageStore:
    return make_message_store(redis, keys, session_ttl=7200, node_id=NODE, outbox_max=max_len)


def session_store(redis: Redis, keys: Keys, max_len: int = 100) -> SessionStore:
    return make_session_store(redis, keys, 7200, node_id=NODE, outbox_max=max_len)


async def outbox(redis: Redis, keys: Keys) -> list[dict[str, Any]]:
    """The events in the outbox, oldest first."""
    entries = await redis.xrange(keys.events_outbox())
    assert all(set(fields) == {"event"} for _, fields in entries)
    return [json.loads(fields["event"]) for _, fields in entries]


async def dropped(redis: Redis, keys: Keys) -> int:
    return int(await redis.get(keys.events_outbox_dropped()) or 0)


def unstamped(event: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(when, the rest) of an event, once its event id is checked."""
    rest = dict(event)
    assert EVENT_ID.match(rest.pop("event_id"))
    return rest.pop("at"), rest


def of_s1(type_: str, **fields: Any) -> dict[str, Any]:
    """An event of session s1 by NODE, without its id and time."""
    return {"type": type_, "session_id": "s1", "node_id": NODE, **fields}


# --- accept ----------------------------------------------------------------------------


async def test_a_new_chat_writes_one_message_accepted_event(redis: Redis, keys: Keys) -> None:
    store = message_store(redis, keys)

    outcome, mid = await store.accept_chat("s1", "u1", "hello", "c1")

    assert outcome is AcceptOutcome.NEW
    (event,) = await outbox(redis, keys)
    at, rest = unstamped(event)
    assert at
    assert rest == of_s1(
        "message.accepted",
        user_id="u1",
        message_id=mid,
        data={"client_msg_id": "c1", "chars": 5},
    )


async def test_a_duplicate_busy_or_refused_chat_writes_no_event(redis: Redis, keys: Keys) -> None:
    store = message_store(redis, keys)
    _, mid = await store.accept_chat("s1", "u1", "hello", "c1")

    assert await store.accept_chat("s1", "u1", "hello", "c1") == (AcceptOutcome.DUPLICATE, mid)
    assert await store.accept_chat("s1", "u1", "again", "c2") == (AcceptOutcome.BUSY, mid)
    with pytest.raises(SessionTaken):
        await store.accept_chat("s1", "intruder", "mine?", "c3")

    assert [e["message_id"] for e in await outbox(redis, keys)] == [mid]


async def test_a_chat_without_client_msg_id_has_none_in_its_event(redis: Redis, keys: Keys) -> None:
    store = message_store(redis, keys)

    outcome, mid = await store.accept_chat("s1", "u1", "hi", None)

    assert outcome is AcceptOutcome.NEW
    (event,) = await outbox(redis, keys)
    assert event["data"] == {"client_msg_id": None, "chars": 2}
    # It got a dedupe key of its own all the same.
    assert len(await redis.keys(f"{keys.prefix}session:s1:cmsg:auto-*")) == 1


# --- open ------------------------------------------------------------------------------


async def test_creating_a_session_writes_one_session_opened_event(redis: Redis, keys: Keys) -> None:
    sessions = session_store(redis, keys)

    _, created = await sessions.open("s1", "u1")
    assert created
    # Rejoins (another node: no L1 entry) and another user's open write nothing.
    assert (await session_store(redis, keys).open("s1", "u1"))[1] is False
    with pytest.raises(Forbidden):
        await session_store(redis, keys).open("s1", "u2")

    (event,) = await outbox(redis, keys)
    at, rest = unstamped(event)
    assert at
    assert rest == of_s1("session.opened", user_id="u1", data={})


# --- finish ----------------------------------------------------------------------------


async def test_only_an_ok_finish_writes_message_completed(redis: Redis, keys: Keys) -> None:
    store = message_store(redis, keys)
    _, mid = await store.accept_chat("s1", "u1", "hello", "c1")
    lease = await store.generators.acquire(mid, "w1")
    assert lease is not None
    assert await store.append_chunk(mid, "s1", token=lease.token, seq=1, delta="a", tokens=1) is (
        AppendOutcome.OK
    )

    usage = Usage(prompt_tokens=3, completion_tokens=1)
    assert await finish(store, mid, token="someone-else", last_seq=1) is FinishOutcome.LOST
    assert await finish(store, mid, last_seq=1) is FinishOutcome.LEASED
    assert await finish(store, mid, token=lease.token, last_seq=1, usage=usage) is FinishOutcome.OK
    assert await finish(store, mid, token=lease.token, last_seq=1) is FinishOutcome.ALREADY_DONE
    assert await finish(store, "m_expired") is FinishOutcome.GONE

    accepted, completed = await outbox(redis, keys)
    assert accepted["type"] == "message.accepted"
    at, rest = unstamped(completed)
    assert at >= accepted["at"]
    assert rest == of_s1(
        "message.completed",
        message_id=mid,
        data={"finish_reason": "stop", "usage": {"prompt_tokens": 3, "completion_tokens": 1}},
    )


async def test_a_gateway_giving_up_an_answer_writes_message_completed_too(
    redis: Redis, keys: Keys
) -> None:
    """The driver's finish (token "", nobody generating) is a completion like any other."""
    store = message_store(redis, keys)
    _, mid = await store.accept_chat("s1", "u1", "hello", "c1")

    outcome = await finish(store, mid, reason=FinishReason.ERROR)

    assert outcome is FinishOutcome.OK
    completed = (await outbox(redis, keys))[-1]
    assert completed["type"] == "message.completed"
    assert completed["data"]["finish_reason"] == "error"


# --- in the same script ------------------------------------------------------------------


async def commands_during(
    make_redis: MakeRedis, redis: Redis, action: Callable[[], Awaitable[object]]
) -> list[dict[str, Any]]:
    """Every command Redis ran while `action` ran, as MONITOR reports them."""
    watcher = make_redis()
    seen: list[dict[str, Any]] = []
    listening = asyncio.Event()
    sentinel = "ECHO end-of-action"

    async def watch() -> None:
        async with watcher.monitor() as monitor:
            listening.set()
            while (command := await monitor.next_command())["command"] != sentinel:
                seen.append(command)

    task = asyncio.create_task(watch())
    await listening.wait()
    await redis.echo("start")  # the monitor is attached once it sees this
    await action()
    await redis.echo("end-of-action")
    async with asyncio.timeout(5):
        await task
    start = next(i for i, c in enumerate(seen) if c["command"] == "ECHO start")
    return seen[start + 1 :]


@pytest.mark.parametrize("change", ["open", "accept", "finish"])
async def test_the_event_is_written_by_the_script_that_makes_the_change(
    change: str, redis: Redis, make_redis: MakeRedis, keys: Keys
) -> None:
    """Only Lua touches the outbox, and inside the script that makes the change: the
    event and the change are one atomic step."""
    sessions, store = session_store(redis, keys), message_store(redis, keys)
    mid = ""
    if change != "open":
        await sessions.open("s1", "u1")
    if change == "finish":
        _, mid = await store.accept_chat("s1", "u1", "hello", "c1")
    actions: dict[str, Callable[[], Awaitable[object]]] = {
        "open": lambda: sessions.open("s1", "u1"),
        "accept": lambda: store.accept_chat("s1", "u1", "hello", "c1"),
        "finish": lambda: finish(store, mid),
    }
    before = len(await outbox(redis, keys))

    commands = await commands_during(make_redis, redis, actions[change])

    assert len(await outbox(redis, keys)) == before + 1
    calls = [i for i, c in enumerate(commands) if c["client_type"] != "lua"]
    # finish first reads who asked for the message (for the per-user answer count);
    # the change and its event are one EVALSHA either way.
    reads = ["HGET"] if change == "finish" else []
    assert [commands[i]["command"].split()[0] for i in calls] == [*reads, "EVALSHA"]
    # The script's own commands follow its EVALSHA: the change, then the event.
    in_script = [c["command"] for c in commands[calls[-1] + 1 :]]
    assert all(c["client_type"] == "lua" for c in commands[calls[-1] + 1 :])
    outbox_writes = [c for c in in_script if keys.events_outbox() in c.split()[1:2]]
    assert [c.split()[0] for c in outbox_writes] == ["XLEN", "XADD"]
    added = next(i for i, c in enumerate(in_script) if c.startswith("XADD") and c in outbox_writes)
    assert in_script[added].startswith(f"XADD {keys.events_outbox()} * event ")
    change_key = {
        "open": keys.session("s1"),
        "accept": keys.message_meta("*"),
        "finish": keys.message_stream(mid),
    }[change]
    changed = [
        i
        for i, c in enumerate(in_script)
        if c.split()[0] in ("HSET", "XADD") and fnmatchcase(c.split()[1], change_key)
    ]
    assert changed and max(changed) < added, in_script


# --- the bound -------------------------------------------------------------------------


async def test_a_full_outbox_counts_the_event_instead_of_adding_it(
    redis: Redis, keys: Keys
) -> None:
    sessions, store = session_store(redis, keys, max_len=3), message_store(redis, keys, 3)

    for n in range(5):
        await sessions.open(f"s{n}", "u1")
    _, mid = await store.accept_chat("s0", "u1", "hello", "c1")

    assert [e["session_id"] for e in await outbox(redis, keys)] == ["s0", "s1", "s2"]
    assert await dropped(redis, keys) == 3
    # The change itself happened all the same.
    assert (await store.meta(mid)) is not None

    # Once drained below the bound, events are written again.
    (first_id, _), *_ = await redis.xrange(keys.events_outbox(), count=1)
    await redis.xdel(keys.events_outbox(), first_id)
    await sessions.open("s5", "u1")
    assert [e["session_id"] for e in await outbox(redis, keys)] == ["s1", "s2", "s5"]
    assert await dropped(redis, keys) == 3


async def test_kafka_disabled_writes_no_event_at_all(redis: Redis, keys: Keys) -> None:
    settings = Settings(
        _env_file=None, kafka_enabled=False, redis_key_prefix=keys.prefix, node_id=NODE
    )
    assert outbox_max(settings) == 0
    sessions = SessionStore.from_settings(redis, settings)
    store = MessageStore.from_settings(redis, settings)

    await sessions.open("s1", "u1")
    _, mid = await store.accept_chat("s1", "u1", "hello", "c1")
    assert await finish(store, mid) is FinishOutcome.OK

    assert await redis.exists(keys.events_outbox(), keys.events_outbox_dropped()) == 0


async def test_from_settings_writes_events_bounded_by_kafka_buffer_max(
    redis: Redis, keys: Keys
) -> None:
    settings = Settings(
        _env_file=None, kafka_buffer_max=2, redis_key_prefix=keys.prefix, node_id="gw-settings"
    )
    sessions = SessionStore.from_settings(redis, settings)
    store = MessageStore.from_settings(redis, settings)

    await sessions.open("s1", "u1")
    await store.accept_chat("s1", "u1", "hello", "c1")
    await sessions.open("s2", "u1")

    assert [e["type"] for e in await outbox(redis, keys)] == [
        "session.opened",
        "message.accepted",
    ]
    assert {e["node_id"] for e in await outbox(redis, keys)} == {"gw-settings"}
    assert await dropped(redis, keys) == 1


# --- the drainer's store -------------------------------------------------------------------


async def write_events(redis: Redis, keys: Keys, n: int) -> None:
    sessions = session_store(redis, keys)
    for i in range(n):
        await sessions.open(f"s{i}", "u1")


async def test_the_group_is_created_once_and_reads_from_the_start(redis: Redis, keys: Keys) -> None:
    await write_events(redis, keys, 3)  # before any drainer ran
    box = EventOutbox(redis, keys)

    await box.ensure_group()
    await box.ensure_group()  # BUSYGROUP is fine

    batch = await box.read("gw-a", count=10, pending=False, block_ms=100)
    assert [json.loads(e.event_json or "")["session_id"] for e in batch] == ["s0", "s1", "s2"]
    groups = await redis.xinfo_groups(keys.events_outbox())
    assert [g["name"] for g in groups] == [GROUP]


async def test_read_pending_returns_the_consumers_own_entries_until_acked(
    redis: Redis, keys: Keys
) -> None:
    box = EventOutbox(redis, keys)
    await box.ensure_group()
    await write_events(redis, keys, 5)

    first = await box.read("gw-a", count=3, pending=False, block_ms=100)
    assert await box.read("gw-b", count=10, pending=True) == []  # not b's
    assert await box.read("gw-a", count=10, pending=True) == first
    assert await box.pending_count() == 3

    await box.ack([e.entry_id for e in first])

    assert await box.read("gw-a", count=10, pending=True) == []
    assert await box.pending_count() == 0
    stats = await box.stats()
    assert (stats.length, stats.dropped) == (2, 0)  # acked entries are deleted
    rest = await box.read("gw-b", count=10, pending=False, block_ms=100)
    assert len(rest) == 2
    assert await box.read("gw-b", count=10, pending=False, block_ms=50) == []


async def test_reclaim_takes_over_entries_left_pending_too_long(redis: Redis, keys: Keys) -> None:
    box = EventOutbox(redis, keys)
    await box.ensure_group()
    await write_events(redis, keys, 4)
    dead = await box.read("gw-dead", count=10, pending=False, block_ms=100)

    assert await box.reclaim("gw-b", min_idle_ms=60_000, count=10) == 0
    await asyncio.sleep(0.05)
    assert await box.reclaim("gw-b", min_idle_ms=20, count=10) == 4

    assert await box.read("gw-dead", count=10, pending=True) == []
    assert await box.read("gw-b", count=10, pending=True) == dead


async def test_an_entry_deleted_while_pending_reads_as_empty(redis: Redis, keys: Keys) -> None:
    box = EventOutbox(redis, keys)
    await box.ensure_group()
    await write_events(redis, keys, 1)
    (entry,) = await box.read("gw-a", count=10, pending=False, block_ms=100)
    await redis.xdel(keys.events_outbox(), entry.entry_id)

    (again,) = await box.read("gw-a", count=10, pending=True)

    assert (again.entry_id, again.event_json, again.deleted) == (entry.entry_id, None, True)
    assert not entry.deleted


async def test_a_lost_group_is_a_storage_error_until_created_again(
    redis: Redis, keys: Keys
) -> None:
    box = EventOutbox(redis, keys)
    await box.ensure_group()
    await redis.delete(keys.events_outbox())  # Redis lost its data
    await write_events(redis, keys, 1)

    with pytest.raises(StorageError, match="NOGROUP"):
        await box.read("gw-a", count=10, pending=False, block_ms=100)
    await box.ensure_group()
    assert len(await box.read("gw-a", count=10, pending=False, block_ms=100)) == 1


async def test_redis_down_is_a_storage_error(keys: Keys) -> None:
    client = unreachable_redis()
    box = EventOutbox(client, keys)
    try:
        for call in (
            box.ensure_group(),
            box.read("gw-a", count=1, pending=True),
            box.ack(["1-0"]),
            box.reclaim("gw-a", min_idle_ms=1, count=1),
            box.stats(),
        ):
            with pytest.raises(StorageError):
                await call
    finally:
        await client.aclose()
