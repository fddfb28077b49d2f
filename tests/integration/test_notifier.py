"""The notifier against a real Redis: cross-node notices over pub/sub, joins that
return only once Redis confirmed them, and resubscribing after a lost connection."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from services.common.errors import StorageError
from services.common.keys import Keys
from services.common.tasks import cancel_and_wait
from services.ws_gateway import notifier as notifier_module
from services.ws_gateway.notifier import Notifier
from tests.integration.conftest import MakeRedis
from tests.integration.redis_helpers import eventually

pytestmark = pytest.mark.integration


@dataclass(eq=False)
class Node:
    """One gateway's notifier and what its callbacks were handed."""

    notifier: Notifier
    started: list[tuple[str, str]] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self.notifier.run(), name="notifier-under-test")


StartNode = Callable[..., Node]


@pytest.fixture
async def nodes(make_redis: MakeRedis, keys: Keys) -> AsyncIterator[StartNode]:
    """nodes(run=True, **client_kwargs) -> a Node with its own client; run() is
    cancelled at the end and the test fails if it ended by itself."""
    made: list[Node] = []

    def make(run: bool = True, **client_kwargs: Any) -> Node:
        started: list[tuple[str, str]] = []
        changed: list[str] = []
        notifier = Notifier(
            make_redis(**client_kwargs),
            keys,
            on_message_started=lambda s, m: started.append((s, m)),
            on_session_changed=changed.append,
        )
        node = Node(notifier, started, changed)
        if run:
            node.start()
        made.append(node)
        return node

    yield make
    ended = [n.task for n in made if n.task is not None and n.task.done()]
    await cancel_and_wait(*(n.task for n in made))
    assert not ended, f"notifier.run() ended by itself: {ended}"


async def subscribers(redis: Redis, channel: str) -> int:
    [(_, count)] = await redis.pubsub_numsub(channel)
    return int(count)


def publish_until(
    redis: Redis, channel: str, data: str, arrived: Callable[[], object]
) -> Callable[[], Awaitable[bool]]:
    """A condition for `eventually`: true once something arrived, else publish again."""

    async def condition() -> bool:
        if arrived():
            return True
        await redis.publish(channel, data)
        return False

    return condition


def started_notice(message_id: str) -> str:
    return json.dumps({"event": "message_started", "message_id": message_id})


async def test_join_returns_once_subscribed(nodes: StartNode, redis: Redis, keys: Keys) -> None:
    node = nodes()

    await node.notifier.join("s1")

    assert node.notifier.sessions == 1
    # No waiting after join: Redis already counts the subscription.
    assert await redis.publish(keys.session_channel("s1"), started_notice("m1")) == 1
    await eventually(lambda: node.started == [("s1", "m1")], 2, "the notice to arrive")


async def test_notices_from_another_node(nodes: StartNode, redis: Redis, keys: Keys) -> None:
    here, there = nodes(), nodes()
    await here.notifier.join("s1")

    async def both_listen() -> bool:
        return await subscribers(redis, keys.session_invalidate_channel()) == 2

    await eventually(both_listen, 2, "both nodes to listen for session changes")

    await there.notifier.message_started("s1", "m1")
    await there.notifier.session_changed("s2")

    await eventually(lambda: here.started == [("s1", "m1")], 2, "message_started to arrive")
    await eventually(lambda: here.changed == ["s2"], 2, "session_changed to arrive")
    await eventually(lambda: there.changed == ["s2"], 2, "its own session_changed")
    assert there.started == []  # it never joined s1


async def test_leave_stops_the_notices(nodes: StartNode, redis: Redis, keys: Keys) -> None:
    node = nodes()
    await node.notifier.join("s1")
    await redis.publish(keys.session_channel("s1"), started_notice("m1"))
    await eventually(lambda: node.started == [("s1", "m1")], 2, "the first notice")

    node.notifier.leave("s1")
    # The join is applied after the leave on the same connection, so once it returns
    # the unsubscribe is done too.
    await node.notifier.join("s2")
    await redis.publish(keys.session_channel("s1"), started_notice("m2"))
    await redis.publish(keys.session_channel("s2"), started_notice("m3"))

    await eventually(lambda: ("s2", "m3") in node.started, 2, "the notice of s2")
    assert node.started == [("s1", "m1"), ("s2", "m3")]
    assert node.notifier.sessions == 1


async def test_joins_are_counted_per_session(nodes: StartNode, redis: Redis, keys: Keys) -> None:
    node = nodes()
    await node.notifier.join("s1")
    await node.notifier.join("s1")  # a second connection of the session on this node

    node.notifier.leave("s1")
    await node.notifier.join("s2")  # orders the ops: the leave has been applied
    assert await subscribers(redis, keys.session_channel("s1")) == 1
    await redis.publish(keys.session_channel("s1"), started_notice("m1"))
    await eventually(lambda: node.started == [("s1", "m1")], 2, "the notice of s1")

    node.notifier.leave("s1")
    await node.notifier.join("s3")
    assert await subscribers(redis, keys.session_channel("s1")) == 0
    assert node.notifier.sessions == 2


async def test_malformed_notices_are_ignored(nodes: StartNode, redis: Redis, keys: Keys) -> None:
    node = nodes()
    await node.notifier.join("s1")
    channel = keys.session_channel("s1")

    for bad in [
        "not json",
        "[1, 2]",
        "null",
        '"message_started"',
        json.dumps({"event": "something_else", "message_id": "x"}),
        json.dumps({"event": "message_started"}),
        json.dumps({"event": "message_started", "message_id": 5}),
        "\xff\x00",
    ]:
        await redis.publish(channel, bad)
    await redis.publish(channel, started_notice("m1"))

    await eventually(lambda: node.started, 2, "the valid notice after the bad ones")
    assert node.started == [("s1", "m1")]
    assert node.task is not None and not node.task.done()
    await redis.publish(channel, started_notice("m2"))
    await eventually(lambda: len(node.started) == 2, 2, "a later notice")


@pytest.mark.parametrize(
    "retries",
    [3, 0],
    ids=["redis-py-reconnects", "notifier-reconnects"],
)
async def test_resubscribes_after_losing_the_connection(
    nodes: StartNode,
    redis: Redis,
    keys: Keys,
    retries: int,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # With retries the client reconnects and resubscribes by itself; without, the
    # error reaches Notifier.run, which opens a new pub/sub connection.
    monkeypatch.setattr(notifier_module, "RECONNECT_S", 0.01)
    node = nodes(retry=Retry(NoBackoff(), retries))
    await node.notifier.join("s1")
    channel, invalidate = keys.session_channel("s1"), keys.session_invalidate_channel()
    assert await subscribers(redis, channel) == 1
    [before] = await redis.client_list(_type="pubsub")

    await redis.execute_command("CLIENT", "KILL", "TYPE", "pubsub")

    # Pub/sub is at most once: a notice published while the notifier reconnects is
    # lost, so keep publishing until one arrives.
    await eventually(
        publish_until(redis, channel, started_notice("m1"), lambda: node.started),
        5,
        "a notice after the reconnect",
    )
    await eventually(
        publish_until(redis, invalidate, "s9", lambda: node.changed),
        2,
        "an invalidation after the reconnect",
    )
    assert set(node.started) == {("s1", "m1")}
    assert set(node.changed) == {"s9"}
    [after] = await redis.client_list(_type="pubsub")
    assert after["id"] != before["id"]
    lost = [r for r in caplog.records if r.getMessage() == "notifier connection lost"]
    assert bool(lost) == (retries == 0)


async def test_a_join_not_confirmed_in_time_raises_but_still_counts(
    nodes: StartNode, redis: Redis, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(notifier_module, "JOIN_TIMEOUT_S", 0.05)
    node = nodes(run=False)

    with pytest.raises(StorageError, match="not confirmed"):
        await node.notifier.join("s1")  # nothing serves the connection yet

    assert node.notifier.sessions == 1
    node.start()
    await eventually(
        lambda: subscribers(redis, keys.session_channel("s1")), 2, "the late subscription"
    )
    await redis.publish(keys.session_channel("s1"), started_notice("m1"))
    await eventually(lambda: node.started == [("s1", "m1")], 2, "the notice")
