"""The relay against a real Redis: one blocking XREAD over every followed stream and
the node's wake stream, delivering decoded entries through a real Hub."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from services.common.errors import StorageError
from services.common.keys import Keys
from services.common.protocol import FinishReason, Usage
from services.common.streams import ChunkEntry, DoneEntry, StreamEntry
from services.common.tasks import cancel_and_wait
from services.ws_gateway.hub import Hub
from services.ws_gateway.metrics import GatewayMetrics
from services.ws_gateway.relay import Relay
from tests.integration.conftest import MakeRedis
from tests.integration.redis_helpers import eventually, unreachable_redis

pytestmark = pytest.mark.integration

NODE = "n1"


class Member:
    """A connection as the hub sees it, recording what it is handed."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.entries: dict[str, list[StreamEntry]] = {}
        self.calls = 0

    def push_new_message(self, message_id: str) -> None:
        self.started.append(message_id)

    def on_entries(self, message_id: str, entries: list[StreamEntry]) -> None:
        assert entries, "the hub must not hand over an empty batch"
        self.calls += 1
        self.entries.setdefault(message_id, []).extend(entries)

    def seqs(self, message_id: str) -> list[int | str]:
        return [
            e.seq if isinstance(e, ChunkEntry) else "done" for e in self.entries.get(message_id, [])
        ]


@dataclass
class Env:
    redis: Redis
    blocking: Redis
    keys: Keys
    hub: Hub
    registry: CollectorRegistry
    relay: Relay
    reader_name: str

    async def chunk(self, message_id: str, seq: int, delta: str | None = None) -> None:
        await self.redis.xadd(
            self.keys.message_stream(message_id),
            {"d": delta if delta is not None else f"d{seq}", "t": str(int(time.time() * 1000))},
            id=f"0-{seq}",
        )

    async def done(self, message_id: str, last_seq: int) -> None:
        await self.redis.xadd(
            self.keys.message_stream(message_id),
            {
                "last_seq": str(last_seq),
                "finish_reason": "stop",
                "prompt_tokens": "4",
                "completion_tokens": str(last_seq),
            },
            id="1-0",
        )

    def sample(self, name: str) -> float:
        value = self.registry.get_sample_value(name)
        assert value is not None, name
        return value

    @property
    def malformed(self) -> float:
        return self.sample("gateway_malformed_stream_entries_total")

    @property
    def batches(self) -> float:
        return self.sample("gateway_relay_reads_total")

    def followed(self) -> set[str]:
        return {s.message_id for s in self.hub.to_read()}

    async def reader_blocked(self) -> bool:
        """The relay's connection is blocked in XREAD right now."""
        for client in await self.redis.client_list():
            if client.get("name") == self.reader_name:
                return client.get("cmd") == "xread" and "b" in client.get("flags", "")
        return False

    async def wait_reader_blocked(self) -> None:
        await eventually(self.reader_blocked, 2, "the relay to block in XREAD")

    async def follow_while_blocked(self, message_id: str, member: Member) -> None:
        """Follow once run()'s XREAD is blocked in Redis, so the wake entry cannot land
        before that XREAD (see test_a_follow_just_before_the_xread_still_wakes_it)."""
        await self.wait_reader_blocked()
        await self.relay.follow(message_id, member, after_seq=0)

    async def member_past_chunk_1(self) -> Member:
        """A member following m1 that got chunk 1, with the reader blocked again in the
        XREAD after it (an XREAD that includes m1)."""
        member = Member()
        await self.follow_while_blocked("m1", member)
        await self.chunk("m1", 1)
        await eventually(lambda: member.seqs("m1") == [1], 2, "chunk 1")
        await self.wait_reader_blocked()
        return member


@pytest.fixture
async def env(redis: Redis, make_redis: MakeRedis, keys: Keys) -> Env:
    reader_name = f"{keys.prefix.rstrip(':')}-relay"
    blocking = make_redis(socket_timeout=None, client_name=reader_name)
    hub = Hub()
    registry = CollectorRegistry()
    relay = Relay(redis, blocking, keys, NODE, hub, GatewayMetrics(registry))
    return Env(redis, blocking, keys, hub, registry, relay, reader_name)


@pytest.fixture
async def running(env: Env) -> AsyncIterator[asyncio.Task[None]]:
    """relay.run() in a task; the test fails if it ended by itself."""
    task = asyncio.create_task(env.relay.run(), name="relay-under-test")
    yield task
    ended = task.done()
    await cancel_and_wait(task)
    assert not ended, f"relay.run() ended: {task!r}"


async def test_read_once_delivers_entries_in_order_then_the_final_record(env: Env) -> None:
    member = Member()
    await env.relay.follow("m1", member, after_seq=0)
    await env.chunk("m1", 1, "Hel")
    await env.chunk("m1", 2, "lo")
    await env.done("m1", 2)

    await env.relay.read_once(block_ms=2_000)

    entries = member.entries["m1"]
    assert [(e.seq, e.delta) for e in entries if isinstance(e, ChunkEntry)] == [
        (1, "Hel"),
        (2, "lo"),
    ]
    assert all(e.written_ms > 0 for e in entries if isinstance(e, ChunkEntry))
    assert entries[-1] == DoneEntry(
        2, FinishReason.STOP, Usage(prompt_tokens=4, completion_tokens=2)
    )
    assert len(entries) == 3
    assert env.batches == 1
    # A finished stream is no longer read, though its follower is still registered.
    assert env.followed() == set()
    assert env.hub.streams == 1


async def test_a_new_stream_wakes_the_blocked_reader(env: Env, running: asyncio.Task[None]) -> None:
    await env.wait_reader_blocked()  # blocked for up to 5 s, on the wake stream alone
    member = Member()

    await env.relay.follow("m1", member, after_seq=0)
    assert await env.redis.xlen(env.keys.node_wake(NODE)) == 1
    start = time.monotonic()
    await env.chunk("m1", 1)

    await eventually(lambda: member.seqs("m1") == [1], 2, "chunk 1 to be relayed")
    assert time.monotonic() - start < 2  # far below the 5 s block
    await env.chunk("m1", 2)
    await env.done("m1", 2)
    await eventually(lambda: member.seqs("m1") == [1, 2, "done"], 2, "the rest to be relayed")


async def test_a_new_stream_is_read_after_the_follow_seq(env: Env) -> None:
    for seq in (1, 2, 3):
        await env.chunk("m1", seq)
    member = Member()

    await env.relay.follow("m1", member, after_seq=2)
    await env.relay.read_once(block_ms=2_000)

    assert member.seqs("m1") == [3]


async def test_a_second_follower_continues_from_the_readers_position(env: Env) -> None:
    first, second = Member(), Member()
    await env.relay.follow("m1", first, after_seq=0)
    await env.chunk("m1", 1)
    await env.chunk("m1", 2)
    await env.relay.read_once(block_ms=2_000)
    assert first.seqs("m1") == [1, 2]
    wakes = await env.redis.xlen(env.keys.node_wake(NODE))

    # Not new to the node: no wake, and it is not read again from seq 0 (the
    # follower catches up on 1..2 from the cache itself).
    await env.relay.follow("m1", second, after_seq=0)
    assert await env.redis.xlen(env.keys.node_wake(NODE)) == wakes
    await env.chunk("m1", 3)
    await env.relay.read_once(block_ms=2_000)

    assert first.seqs("m1") == [1, 2, 3]
    assert second.seqs("m1") == [3]


async def test_a_malformed_entry_is_skipped_and_counted_and_the_reader_goes_on(
    env: Env, running: asyncio.Task[None]
) -> None:
    member = Member()
    await env.follow_while_blocked("m1", member)
    await env.redis.xadd(env.keys.message_stream("m1"), {"t": "1"}, id="0-1")  # no 'd'

    await eventually(lambda: env.malformed == 1, 2, "the malformed entry to be counted")
    assert member.entries == {}
    await env.chunk("m1", 2)
    await env.chunk("m1", 3)
    await eventually(lambda: member.seqs("m1") == [2, 3], 2, "the entries after it")
    await env.redis.xadd(env.keys.message_stream("m1"), {"d": "x"}, id="0-4")  # no 't': fine
    await env.redis.xadd(env.keys.message_stream("m1"), {"last_seq": "4"}, id="1-0")  # no reason
    await eventually(lambda: member.seqs("m1") == [2, 3, 4], 2, "chunk 4")
    await eventually(lambda: env.malformed == 2, 2, "the malformed final record to be counted")

    assert not running.done()
    # Skipped entries are not read again: the position moved past them.
    assert env.followed() == set()


async def test_unfollow_stops_delivery(env: Env) -> None:
    first, second = Member(), Member()
    await env.relay.follow("m1", first, after_seq=0)
    await env.chunk("m1", 1)
    await env.relay.read_once(block_ms=2_000)
    assert first.seqs("m1") == [1]

    env.relay.unfollow("m1", first)

    assert env.followed() == set()
    assert env.hub.streams == 0
    await env.chunk("m1", 2)
    await env.relay.follow("m2", second, after_seq=0)
    await env.chunk("m2", 1)
    await env.relay.read_once(block_ms=2_000)
    assert second.seqs("m2") == [1]
    assert first.seqs("m1") == [1]
    env.relay.unfollow("m1", first)  # twice: nothing to do


async def test_unfollow_while_the_reader_is_blocked_on_the_stream(
    env: Env, running: asyncio.Task[None]
) -> None:
    member = await env.member_past_chunk_1()

    env.relay.unfollow("m1", member)
    batches = env.batches
    await env.chunk("m1", 2)  # the blocked XREAD still returns it…

    await eventually(lambda: env.batches > batches, 2, "the reader to read chunk 2")
    assert member.seqs("m1") == [1]  # …but the hub no longer hands it over
    assert env.followed() == set()


async def test_the_reader_survives_losing_its_connection(
    env: Env, running: asyncio.Task[None]
) -> None:
    member = await env.member_past_chunk_1()
    [reader] = [c for c in await env.redis.client_list() if c.get("name") == env.reader_name]

    await env.redis.execute_command("CLIENT", "KILL", "ID", reader["id"])
    await env.chunk("m1", 2)

    await eventually(lambda: member.seqs("m1") == [1, 2], 3, "chunk 2 after the reconnect")


async def test_a_follow_just_before_the_xread_still_wakes_it(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    member = Member()
    xread = env.blocking.xread
    window_used = False

    async def follow_in_the_window(streams: dict[str, str], **kwargs: Any) -> Any:
        # The relay has taken its snapshot of the hub; a connection follows a new
        # stream (and XADDs the wake entry) before the XREAD reaches Redis.
        nonlocal window_used
        if not window_used:
            window_used = True
            await env.relay.follow("m1", member, after_seq=0)
        return await xread(streams, **kwargs)

    monkeypatch.setattr(env.blocking, "xread", follow_in_the_window)
    await env.chunk("m1", 1)
    task = asyncio.create_task(env.relay.run())
    try:
        await eventually(lambda: member.seqs("m1") == [1], 0.5, "chunk 1 (the block is 5 s)")
    finally:
        await cancel_and_wait(task)
    assert window_used


async def test_follow_raises_storage_error_when_the_reader_cannot_be_woken(
    env: Env, keys: Keys
) -> None:
    offline = unreachable_redis()
    relay = Relay(offline, env.blocking, keys, NODE, env.hub, GatewayMetrics(CollectorRegistry()))
    try:
        with pytest.raises(StorageError, match="waking the relay"):
            await relay.follow("m1", Member(), after_seq=0)
    finally:
        await offline.aclose()
