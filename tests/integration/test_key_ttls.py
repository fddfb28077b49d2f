"""Issue 7: every key expires. A realistic workload through the real stores and the
relay against a real Redis, then a SCAN of every key under the test's prefix: none
may lack a TTL (unless listed in keys.NO_TTL), and no session key may outlive its
session's owner record. Also the wake stream's own TTL."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from services.common.keys import Keys
from services.common.message_store import (
    AcceptOutcome,
    AppendOutcome,
    FinishOutcome,
    MessageStore,
)
from services.common.protocol import FinishReason
from services.common.streams import StreamEntry
from services.ws_gateway.hub import Hub
from services.ws_gateway.metrics import GatewayMetrics
from services.ws_gateway.relay import WAKE_TTL_S, Relay
from services.ws_gateway.sessions import Forbidden, SessionStore
from tests.integration.conftest import MakeRedis
from tests.integration.redis_helpers import finish, make_message_store, make_session_store
from tests.redis_keys import keys_without_ttl, kinds, owners_outlived, scan

pytestmark = pytest.mark.integration

SESSION_TTL = 7200
NODE = "gw-1"


class Member:
    """A connection as the hub sees it."""

    def __init__(self) -> None:
        self.entries: list[StreamEntry] = []

    def push_new_message(self, message_id: str) -> None:
        pass

    def on_entries(self, message_id: str, entries: list[StreamEntry]) -> None:
        self.entries.extend(entries)

    def on_lost(self, message_id: str) -> None:
        pass


def stores(redis: Redis, keys: Keys, outbox_max: int = 1_000) -> tuple[SessionStore, MessageStore]:
    node = {"node_id": NODE, "outbox_max": outbox_max}
    return (
        make_session_store(redis, keys, SESSION_TTL, **node),
        make_message_store(redis, keys, session_ttl=SESSION_TTL, **node),
    )


def relay_of(redis: Redis, make_redis: MakeRedis, keys: Keys) -> Relay:
    blocking = make_redis(socket_timeout=None)
    return Relay(redis, blocking, keys, NODE, Hub(), GatewayMetrics(CollectorRegistry()))


async def finish_ok(
    store: MessageStore, mid: str, session_id: str, token: str, last_seq: int, reason: FinishReason
) -> None:
    outcome = await finish(store, mid, session_id, token=token, last_seq=last_seq, reason=reason)
    assert outcome is FinishOutcome.OK


async def test_a_realistic_workload_leaves_no_key_without_a_ttl(
    redis: Redis, make_redis: MakeRedis, keys: Keys
) -> None:
    sessions, store = stores(redis, keys)
    relay = relay_of(redis, make_redis, keys)
    follower = Member()

    # Two users, three sessions; an intruder is refused.
    for session_id, user_id in [("alice-1", "alice"), ("alice-2", "alice"), ("bob-1", "bob")]:
        _, created = await sessions.open(session_id, user_id)
        assert created
    with pytest.raises(Forbidden):
        await stores(redis, keys)[0].open("alice-1", "bob")

    # alice-1: a whole answer, followed through the relay, with a retry and a busy chat.
    outcome, m1 = await store.accept_chat("alice-1", "alice", "first", "c1")
    assert outcome is AcceptOutcome.NEW
    assert await store.accept_chat("alice-1", "alice", "first", "c1") == (
        AcceptOutcome.DUPLICATE,
        m1,
    )
    assert (await store.accept_chat("alice-1", "alice", "second", "c2"))[0] is AcceptOutcome.BUSY
    driver = await store.drivers.acquire(m1, NODE)
    generator = await store.generators.acquire(m1, "w1")
    assert driver is not None and generator is not None
    await relay.follow(m1, follower, after_seq=0)
    for seq in (1, 2, 3):
        outcome_a = await store.append_chunk(
            m1, "alice-1", token=generator.token, seq=seq, delta=f"d{seq}", tokens=1
        )
        assert outcome_a is AppendOutcome.OK
    assert await generator.renew() and await driver.renew()
    await relay.read_once(block_ms=1_000)
    assert len(follower.entries) == 3
    await finish_ok(store, m1, "alice-1", generator.token, 3, FinishReason.STOP)
    await driver.release()

    # bob-1: cancelled mid-answer; the worker stops and finishes it as cancelled.
    outcome, m2 = await store.accept_chat("bob-1", "bob", "long one", "b1")
    assert outcome is AcceptOutcome.NEW
    bob_worker = await store.generators.acquire(m2, "w2")
    assert bob_worker is not None
    await store.append_chunk(m2, "bob-1", token=bob_worker.token, seq=1, delta="d", tokens=1)
    await store.cancel(m2)
    refused = await store.append_chunk(
        m2, "bob-1", token=bob_worker.token, seq=2, delta="d", tokens=1
    )
    assert refused is AppendOutcome.CANCELLED
    await finish_ok(store, m2, "bob-1", bob_worker.token, 1, FinishReason.CANCELLED)

    # alice-2: an answer still running (leases held), and one given up by a gateway.
    outcome, m3 = await store.accept_chat("alice-2", "alice", "running", "c1")
    running = await store.generators.acquire(m3, "w3")
    assert outcome is AcceptOutcome.NEW and running is not None
    assert await store.drivers.acquire(m3, NODE) is not None
    await store.append_chunk(m3, "alice-2", token=running.token, seq=1, delta="d", tokens=1)
    await relay.follow(m3, follower, after_seq=0)
    await relay.read_once(block_ms=1_000)

    # Resume-like reads, a rejoin from another node, and a history read.
    for mid in (m1, m2, m3):
        assert await store.meta(mid) is not None
        await store.read_entries(mid, after_seq=1)
        await store.stream_exists(mid)
        await store.orphaned(mid)
        await store.is_cancelled(mid)
    for session_id in ("alice-1", "alice-2", "bob-1"):
        await store.session_streams(session_id)
        await store.history(session_id, 50)
    await stores(redis, keys)[0].open("alice-1", "alice")
    # The event outbox, and its overflow counter (a store whose outbox is full).
    await stores(redis, keys, outbox_max=1)[0].open("carol-1", "carol")
    assert await redis.get(keys.events_outbox_dropped()) == "1"

    names = await scan(redis, keys.prefix)
    assert kinds(names, keys.prefix) >= {
        "sessions:user:*",
        "session:*",
        "session:*:history",
        "session:*:messages",
        "session:*:active",
        "session:*:cmsg:*",
        "msg:*:meta",
        "msg:*:stream",
        "msg:*:lease",
        "msg:*:driver",
        "msg:*:cancel",
        "node:*:wake",
        "events:*",
        "events:*:dropped",
    }, "the workload did not write every kind of key"
    assert await keys_without_ttl(redis, keys.prefix) == []
    # Those two live without a TTL, as keys.NO_TTL allows (and says why).
    assert await redis.ttl(keys.events_outbox()) == -1
    assert await redis.ttl(keys.events_outbox_dropped()) == -1
    assert await owners_outlived(redis, keys.prefix) == []


async def test_the_scan_catches_a_key_without_a_ttl_and_an_outlived_owner(
    redis: Redis, keys: Keys
) -> None:
    """The checks above are not vacuous."""
    await redis.hset(keys.session("s1"), "owner", "u1")
    await redis.expire(keys.session("s1"), 60)
    await redis.rpush(keys.session_history("s1"), "x")
    await redis.expire(keys.session_history("s1"), 3600)
    await redis.rpush(keys.session_history("s2"), "y")

    assert await keys_without_ttl(redis, keys.prefix) == [keys.session_history("s2")]
    outlived, orphan = sorted(await owners_outlived(redis, keys.prefix))
    assert outlived.startswith(f"{keys.session_history('s1')}: lives ")
    assert orphan == f"{keys.session_history('s2')}: its session has no owner record"


async def test_the_wake_stream_expires_and_every_wake_refreshes_it(
    redis: Redis, make_redis: MakeRedis, keys: Keys
) -> None:
    relay = relay_of(redis, make_redis, keys)
    wake = keys.node_wake(NODE)
    member = Member()

    await relay.follow("m1", member, after_seq=0)
    assert WAKE_TTL_S - 5 < await redis.ttl(wake) <= WAKE_TTL_S
    await redis.expire(wake, 5)
    await relay.follow("m2", member, after_seq=0)
    assert WAKE_TTL_S - 5 < await redis.ttl(wake) <= WAKE_TTL_S

    # Once it expired, the next wake-up creates it again and the reader goes on.
    await relay.read_once(block_ms=100)
    await redis.delete(wake)
    await relay.follow("m3", member, after_seq=0)
    await redis.xadd(keys.message_stream("m3"), {"d": "hi", "t": "1"}, id="0-1")
    await relay.read_once(block_ms=1_000)
    assert [getattr(e, "delta", None) for e in member.entries] == ["hi"]
    assert await redis.ttl(wake) > 0
