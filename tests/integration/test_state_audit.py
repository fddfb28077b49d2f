"""Loss is never silent, against a real Redis: when the relay's connection drops and
Redis comes back with less than clients were shown, the followers end with
`state_lost`; when the same entries are back (a worker repaired them), nothing ends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from services.common.keys import Keys
from services.common.message_store import MessageStore
from services.common.streams import ChunkEntry, StreamEntry
from services.common.tasks import cancel_and_wait
from services.ws_gateway.audit import StateAudit
from services.ws_gateway.hub import Hub
from services.ws_gateway.metrics import GatewayMetrics
from services.ws_gateway.relay import Relay
from tests.integration.conftest import MakeRedis
from tests.integration.redis_helpers import eventually, make_message_store

pytestmark = pytest.mark.integration

GRACE_S = 0.6


class Follower:
    def __init__(self) -> None:
        self.seqs: list[int] = []
        self.lost: list[str] = []

    def push_new_message(self, message_id: str) -> None:
        raise AssertionError("not expected")

    def on_entries(self, message_id: str, entries: list[StreamEntry]) -> None:
        self.seqs += [e.seq for e in entries if isinstance(e, ChunkEntry)]

    def on_lost(self, message_id: str) -> None:
        self.lost.append(message_id)


@dataclass
class Node:
    redis: Redis
    store: MessageStore
    hub: Hub
    relay: Relay
    audit: StateAudit
    message_id: str
    token: str
    follower: Follower

    async def append(self, seq: int) -> None:
        outcome = await self.store.append_chunk(
            self.message_id, "s1", token=self.token, seq=seq, delta=f"d{seq}", tokens=1
        )
        assert outcome == "ok"

    async def go_back_to_seq_1(self, keys: Keys) -> list[tuple[str, dict[str, str]]]:
        """Leave only chunk 1, as Redis would after losing the last writes (XDEL keeps
        the stream's top id, so the stream is rebuilt); returns the lost entries."""
        stream = keys.message_stream(self.message_id)
        entries = await self.redis.xrange(stream)
        await self.redis.delete(stream)
        await self.redis.xadd(stream, entries[0][1], id=entries[0][0])
        await self.redis.hset(keys.message_meta(self.message_id), "last_seq", "1")
        return list(entries[1:])

    async def drop_reader_connection(self) -> None:
        """What a Redis restart or failover does to the relay's blocking connection."""
        for client in await self.redis.client_list():
            if client.get("name") == "relay-under-test":
                await self.redis.client_kill_filter(_id=client["id"])


@pytest.fixture
async def node(make_redis: MakeRedis, keys: Keys) -> AsyncIterator[Node]:
    redis = make_redis()
    # Like the deploy's blocking client: no retries of its own, so a drop is seen.
    blocking = make_redis(client_name="relay-under-test", retry=Retry(NoBackoff(), 0))
    store = make_message_store(redis, keys, lease_ttl_ms=60_000)
    hub = Hub()
    audit = StateAudit(hub, store, grace_s=GRACE_S)
    metrics = GatewayMetrics(CollectorRegistry())
    relay = Relay(redis, blocking, keys, "n1", hub, metrics, on_reconnect=audit.storage_reconnected)
    _, message_id = await store.accept_chat("s1", "u1", "hello", "c1")
    lease = await store.generators.acquire(message_id, "w1")
    assert lease is not None
    follower = Follower()
    n = Node(redis, store, hub, relay, audit, message_id, lease.token, follower)
    tasks = [asyncio.create_task(relay.run()), asyncio.create_task(audit.run())]
    await relay.follow(message_id, follower, 0)
    for seq in (1, 2, 3):
        await n.append(seq)
    await eventually(lambda: follower.seqs == [1, 2, 3], 3, "chunks 1..3 delivered")
    yield n
    await cancel_and_wait(*tasks)


async def test_state_that_went_back_ends_the_answer_with_state_lost(node: Node, keys: Keys) -> None:
    # Redis comes back without the last two chunks (a lagging replica, a lost second).
    await node.go_back_to_seq_1(keys)
    await node.drop_reader_connection()
    await eventually(lambda: node.follower.lost, 2 + GRACE_S, "the followers to be told")
    assert node.follower.lost == [node.message_id]
    assert node.hub.get(node.message_id) is None
    assert node.audit.suspects == 0


async def test_a_missing_message_record_ends_the_answer_at_once(node: Node, keys: Keys) -> None:
    await node.redis.delete(keys.message_meta(node.message_id))
    await node.drop_reader_connection()
    await eventually(lambda: node.follower.lost, GRACE_S, "the followers to be told")


async def test_entries_repaired_identically_keep_the_answer_going(node: Node, keys: Keys) -> None:
    stream = keys.message_stream(node.message_id)
    kept = await node.go_back_to_seq_1(keys)
    await node.drop_reader_connection()
    await eventually(lambda: node.audit.suspects, 2, "the audit to suspect the stream")
    # The worker re-writes the missing chunks from memory, with their original times.
    for entry_id, fields in kept:
        await node.redis.xadd(stream, fields, id=entry_id)
    await node.redis.hset(keys.message_meta(node.message_id), "last_seq", "3")
    await eventually(lambda: node.audit.suspects == 0, 2 + GRACE_S, "the audit to confirm")
    assert node.follower.lost == []
    await node.append(4)
    await eventually(lambda: node.follower.seqs == [1, 2, 3, 4], 3, "chunk 4 delivered")


async def test_nothing_is_suspect_when_redis_kept_everything(node: Node) -> None:
    await node.drop_reader_connection()
    await node.append(4)
    await eventually(lambda: node.follower.seqs == [1, 2, 3, 4], 3, "chunk 4 delivered")
    await eventually(lambda: node.audit.suspects == 0, 2, "the audit to confirm")
    assert node.follower.lost == []
