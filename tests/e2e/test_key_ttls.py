"""Issue 7, on the whole cluster: after chats through nginx (and whatever the suite ran
before on the same cluster), no key in its Redis lacks a TTL (unless listed in
keys.NO_TTL), and no session key outlives its session's owner record."""

from __future__ import annotations

import uuid

import pytest
from redis.asyncio import Redis

from tests.chat_client import Answer, ChatClient
from tests.redis_keys import keys_without_ttl, kinds, owners_outlived, scan

pytestmark = pytest.mark.e2e


def sid() -> str:
    return f"ttl-{uuid.uuid4().hex[:12]}"


async def test_no_key_in_the_clusters_redis_lacks_a_ttl(cluster) -> None:
    first, second = sid(), sid()
    alice = ChatClient(cluster.ws_url(first, user_id="ttl-alice"), local_ip="127.0.71.1")
    alice_tab = ChatClient(cluster.ws_url(first, user_id="ttl-alice"), local_ip="127.0.72.1")
    bob = ChatClient(cluster.ws_url(second, user_id="ttl-bob"), local_ip="127.0.73.1")
    for client in (alice, alice_tab, bob):
        await client.connect()

    ack = await alice.chat("keep this", client_msg_id="k1")
    answer = await alice.read_answer(Answer(ack["message_id"]))
    answer.assert_exactly_once()
    await alice_tab.read_answer(Answer(ack["message_id"]))  # pushed to the other tab
    await alice.send({"type": "resume", "message_id": ack["message_id"], "after_seq": 0})
    (await alice.read_answer(Answer(ack["message_id"]))).assert_exactly_once()
    await alice.send({"type": "history", "limit": 10})
    assert (await alice.recv_until(lambda f: f["type"] == "history"))["messages"]

    cancelled = await bob.chat("cancel me", client_msg_id="k1")
    await bob.send({"type": "cancel", "message_id": cancelled["message_id"]})
    done = (await bob.read_answer(Answer(cancelled["message_id"]))).done
    assert done is not None and done["finish_reason"] == "cancelled"
    for client in (alice, alice_tab, bob):
        await client.close()

    prefix = cluster.spec.key_prefix
    redis = Redis.from_url(cluster.redis_url, decode_responses=True)
    try:
        names = await scan(redis, prefix)
        assert {"session:*", "session:*:history", "msg:*:meta", "node:*:wake"} <= kinds(
            names, prefix
        )
        assert await keys_without_ttl(redis, prefix) == []
        assert await owners_outlived(redis, prefix) == []
    finally:
        await redis.aclose()
