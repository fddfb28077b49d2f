"""Chat end to end through nginx on a real local cluster: complete answers, every seq
exactly once, sessions shared across nodes, cancel, retries."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer
from redis.asyncio import Redis

from services.common.keys import Keys
from tests.chat_client import Answer, ChatClient
from tests.node_probes import metric

pytestmark = pytest.mark.e2e


def sid() -> str:
    return f"s-{uuid.uuid4().hex[:12]}"


async def history_of(client: ChatClient) -> list[dict[str, object]]:
    await client.send({"type": "history", "limit": 100})
    frame = await client.recv_until(lambda f: f["type"] == "history")
    return list(frame["messages"])


async def clients_on_distinct_gateways(
    cluster,
    session_id: str,
    user: str = "u1",
) -> tuple[ChatClient, ChatClient]:
    """Two connections of one session that landed on two different gateways."""
    first = ChatClient(cluster.ws_url(session_id, user_id=user), local_ip="127.0.1.1")
    await first.connect()
    for n in range(2, 120):
        other = ChatClient(cluster.ws_url(session_id, user_id=user), local_ip=f"127.0.{n}.1")
        welcome = await other.connect()
        if welcome["node_id"] != first.welcome["node_id"]:
            return first, other
        await other.close()
    raise AssertionError("every /24 hashed to one gateway")


async def test_ten_clients_on_different_networks_get_complete_answers(cluster) -> None:
    clients = [
        ChatClient(cluster.ws_url(sid(), user_id=f"user{n}"), local_ip=f"127.0.{n}.1")
        for n in range(10, 22)
    ]
    welcomes = await asyncio.gather(*(c.connect() for c in clients))
    assert len({w["node_id"] for w in welcomes}) >= 2, "ip_hash sent every /24 to one node"

    async def one(client: ChatClient, n: int) -> Answer:
        ack = await client.chat(f"Question number {n}: how do streams work?", f"c{n}")
        assert ack["type"] == "ack", ack
        return await client.read_answer(Answer(ack["message_id"]))

    answers = await asyncio.gather(*(one(c, n) for n, c in enumerate(clients)))
    for client, answer in zip(clients, answers, strict=True):
        answer.assert_exactly_once()
        assert answer.done is not None and answer.done["finish_reason"] == "stop"
        assert len(answer.seqs) >= 2 and answer.text.strip()
        items = await history_of(client)
        assert items[-1]["role"] == "assistant"
        assert items[-1]["message_id"] == answer.message_id
        assert items[-1]["text"] == answer.text
        await client.close()


async def test_two_connections_on_two_nodes_both_receive_the_whole_stream(cluster) -> None:
    session = sid()
    a, b = await clients_on_distinct_gateways(cluster, session)
    ack = await a.chat("Tell me something long", "same-1")
    mid = ack["message_id"]
    got_a, got_b = await asyncio.gather(a.read_answer(Answer(mid)), b.read_answer(Answer(mid)))
    got_a.assert_exactly_once()
    got_b.assert_exactly_once()
    assert got_a.text == got_b.text

    # The same client_msg_id again (a retry) starts nothing and names the same message.
    again = await b.chat("Tell me something long", "same-1")
    assert again == {"type": "ack", "client_msg_id": "same-1", "message_id": mid}
    items = await history_of(b)
    assert [i["role"] for i in items] == ["user", "assistant"]
    await a.close()
    await b.close()


async def test_cancel_from_another_node_keeps_the_partial_text(cluster) -> None:
    session = sid()
    a, b = await clients_on_distinct_gateways(cluster, session)
    ack = await a.chat("Write an essay", "cancel-me")
    mid = ack["message_id"]
    seen_b = await b.read_answer(Answer(mid), stop_after=3)
    await b.send({"type": "cancel", "message_id": mid})
    got_a, got_b = await asyncio.gather(a.read_answer(Answer(mid)), b.read_answer(seen_b))
    for got in (got_a, got_b):
        got.assert_exactly_once()
        assert got.done is not None and got.done["finish_reason"] == "cancelled"
    assert got_a.text == got_b.text and got_a.text
    items = await history_of(a)
    assert items[-1]["message_id"] == mid and items[-1]["text"] == got_a.text

    # The session is free again: a new chat is accepted.
    ack2 = await a.chat("Another one")
    assert ack2["type"] == "ack"
    await a.read_answer(Answer(ack2["message_id"]))
    await a.close()
    await b.close()


async def test_busy_and_resume_and_welcome_listing(cluster) -> None:
    session = sid()
    a = ChatClient(cluster.ws_url(session, user_id="u9"), local_ip="127.0.30.1")
    await a.connect()
    ack = await a.chat("first")
    mid = ack["message_id"]
    busy = await a.chat("second")
    assert busy["type"] == "error" and busy["code"] == "busy" and busy["message_id"] == mid
    part = await a.read_answer(Answer(mid), stop_after=4)
    await a.close()

    # A connection opened mid-answer is told about it, and gets it only when it asks.
    b = ChatClient(cluster.ws_url(session, user_id="u9"), local_ip="127.0.31.1")
    welcome = await b.connect()
    listed = {s["message_id"]: s for s in welcome["streams"]}
    assert mid in listed and listed[mid]["last_seq"] >= 4
    await b.send({"type": "resume", "message_id": mid, "after_seq": part.last_seq})
    rest = await b.read_answer(Answer(mid))
    assert rest.seqs[0] == part.last_seq + 1
    whole = part.seqs + rest.seqs
    assert rest.done is not None and whole == list(range(1, rest.done["last_seq"] + 1))

    # Resume from 0 after done replays everything from the cache.
    await b.send({"type": "resume", "message_id": mid, "after_seq": 0})
    replay = await b.read_answer(Answer(mid))
    replay.assert_exactly_once()
    assert replay.text == part.text + rest.text
    await b.close()


async def test_resume_errors(cluster) -> None:
    session = sid()
    a = ChatClient(cluster.ws_url(session, user_id="u10"), local_ip="127.0.32.1")
    await a.connect()
    await a.send({"type": "resume", "message_id": "m_nope", "after_seq": 0})
    err = await a.recv()
    assert err["type"] == "error" and err["code"] == "not_found"

    # Someone else's message is not found either.
    other = ChatClient(cluster.ws_url(sid(), user_id="u11"), local_ip="127.0.33.1")
    await other.connect()
    ack = await other.chat("mine")
    await a.send({"type": "resume", "message_id": ack["message_id"], "after_seq": 0})
    err = await a.recv()
    assert err["code"] == "not_found"
    await a.send({"type": "cancel", "message_id": ack["message_id"]})
    err = await a.recv()
    assert err["code"] == "not_found"
    await other.read_answer(Answer(ack["message_id"]))

    # Expired chunks: the stream key is gone but the message is known.
    mine = await a.chat("short-lived")
    await a.read_answer(Answer(mine["message_id"]))
    redis = Redis.from_url(cluster.redis_url, decode_responses=True)
    try:
        deleted = await redis.delete(Keys().message_stream(mine["message_id"]))
        assert deleted == 1
    finally:
        await redis.aclose()
    await a.send({"type": "resume", "message_id": mine["message_id"], "after_seq": 0})
    err = await a.recv()
    assert err["code"] == "stream_expired"
    await a.close()
    await other.close()


async def test_lifecycle_events_reach_kafka(cluster) -> None:
    session = sid()
    client = ChatClient(cluster.ws_url(session, user_id="events"), local_ip="127.0.34.1")
    await client.connect()
    ack = await client.chat("Tell the auditors")
    answer = await client.read_answer(Answer(ack["message_id"]))
    await client.close()

    consumer = AIOKafkaConsumer(
        "chat.events",
        bootstrap_servers=cluster.kafka_bootstrap,
        auto_offset_reset="earliest",
        group_id=None,
    )
    await consumer.start()
    lifecycle = ["session.opened", "message.accepted", "message.completed"]
    # Delivery is at least once and several nodes drain the outbox: consumers dedupe by
    # event_id and order by `at` (services/common/events.py).
    seen: dict[str, dict[str, Any]] = {}
    try:
        async with asyncio.timeout(20):
            while sorted(e["type"] for e in seen.values()) != sorted(lifecycle):
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    for r in records:
                        if r.key == session.encode():
                            event = json.loads(r.value)
                            seen.setdefault(event["event_id"], event)
    finally:
        await consumer.stop()
    events = sorted(seen.values(), key=lambda e: (e["at"], lifecycle.index(e["type"])))
    assert [e["type"] for e in events] == lifecycle
    opened, accepted, completed = events
    # The session id the client chose, and its user (sessions are per user inside).
    assert {e["session_id"] for e in events} == {session}
    assert opened["user_id"] == accepted["user_id"] == completed["user_id"] == "events"
    assert accepted["message_id"] == completed["message_id"] == answer.message_id
    assert completed["data"] == {"finish_reason": "stop", "usage": answer.done["usage"]}


async def test_chats_past_the_rate_limit_get_rate_limited(cluster) -> None:
    client = ChatClient(cluster.ws_url(sid(), user_id="hasty"), local_ip="127.0.35.1")
    await client.connect()
    codes = []
    for n in range(8):  # the bucket holds 5 (30 per minute)
        reply = await client.chat(f"hasty {n}")
        codes.append(reply.get("code", reply["type"]))
        if reply.get("code") == "rate_limited":
            assert reply["retry_after"] > 0
    assert codes[0] == "ack"
    assert set(codes[1:5]) == {"busy"}, codes
    assert "rate_limited" in codes[5:], codes
    await client.close()


async def test_a_session_id_stays_its_users_after_redis_lost_the_session(cluster) -> None:
    """Issue 7: once Redis had lost a session (an emptied Redis), the first user to open
    its id became its owner. Now the id is its user's whatever is stored: another user
    opening it first (on another node) gets a session of its own, and the owner, back
    on the node that had the session cached, gets in and keeps its session."""
    session = sid()
    g1, g2 = cluster.gateway_names[:2]

    def direct(gateway: str, user: str) -> str:
        return cluster.ws_url(session, user_id=user).replace(
            f":{cluster.spec.public_port}/", f":{cluster.spec.node_port(gateway)}/"
        )

    alice = ChatClient(direct(g1, "alice"))
    await alice.connect()  # g1 now caches alice's session record
    ack = await alice.chat("alice asks")
    await alice.read_answer(Answer(ack["message_id"]))
    await alice.close()
    redis = Redis.from_url(cluster.redis_url, decode_responses=True)
    try:
        # Redis loses every key of alice's session.
        lost = [k async for k in redis.scan_iter(match=f"*session:alice/{session}*")]
        assert Keys().session(f"alice/{session}") in lost
        assert await redis.delete(*lost) == len(lost)
    finally:
        await redis.aclose()

    bob = ChatClient(direct(g2, "bob"))
    assert (await bob.connect())["user_id"] == "bob"
    bob_ack = await bob.chat("bob asks")
    await bob.read_answer(Answer(bob_ack["message_id"]))
    alice = ChatClient(direct(g1, "alice"))
    welcome = await alice.connect()  # not 4403: bob did not take the id
    assert (welcome["session_id"], welcome["user_id"]) == (session, "alice")
    assert await history_of(alice) == []  # what Redis lost, and nothing of bob's
    assert [m["text"] for m in await history_of(bob)][0] == "bob asks"
    await alice.close()
    await bob.close()


async def test_nodes_expose_the_correctness_metrics(cluster) -> None:
    names = [
        "gateway_connections_open",
        "gateway_streams_relayed_total",
        "gateway_chunks_sent_total",
        "gateway_resumes_total",
        "gateway_takeovers_total",
        "gateway_slow_consumer_closes_total",
        "gateway_queue_depth_count",
        "gateway_chunk_delay_seconds_count",
    ]
    client = ChatClient(cluster.ws_url(sid(), user_id="metrics"), local_ip="127.0.36.1")
    welcome = await client.connect()
    ack = await client.chat("count me")
    await client.read_answer(Answer(ack["message_id"]))
    await client.close()
    base = cluster.node_url(welcome["node_id"])
    async with httpx.AsyncClient(timeout=5) as http:
        text = (await http.get(base + "/metrics")).text
        worker_text = "".join(
            [(await http.get(cluster.node_url(w) + "/metrics")).text for w in cluster.worker_names]
        )
    for name in names:
        assert f"\n{name}" in text, name
    assert metric(base, "gateway_chunks_sent_total") > 0
    assert metric(base, "gateway_chunk_delay_seconds_count") > 0
    assert "worker_chunks_written_total" in worker_text


async def test_the_rest_history_is_the_callers_session_of_that_id(cluster) -> None:
    session = sid()
    client = ChatClient(cluster.ws_url(session, user_id="rest-owner"), local_ip="127.0.37.1")
    await client.connect()
    ack = await client.chat("over rest")
    answer = await client.read_answer(Answer(ack["message_id"]))
    await client.close()
    url = f"http://127.0.0.1:{cluster.spec.public_port}/api/sessions/{session}/history"
    bearer = {"Authorization": "Bearer dev-token"}
    async with httpx.AsyncClient(timeout=10) as http:
        mine = await http.get(url, params={"user_id": "rest-owner"}, headers=bearer)
        theirs = await http.get(url, params={"user_id": "rest-other"}, headers=bearer)
        anonymous = await http.get(url, params={"user_id": "rest-owner"})
    assert mine.status_code == 200
    body = mine.json()
    assert (body["type"], body["session_id"]) == ("history", session)
    assert [m["text"] for m in body["messages"]] == ["over rest", answer.text]
    assert theirs.status_code == 404  # another user has no session of that id
    assert anonymous.status_code == 401
