"""An answer survives the loss of the gateway or the worker serving it: the client
reconnects through nginx, resumes, and has every seq exactly once."""

from __future__ import annotations

import time
import uuid

import pytest

from tests.chat_client import Answer, ChatClient
from tests.node_probes import generating_worker

pytestmark = pytest.mark.e2e


def sid() -> str:
    return f"f-{uuid.uuid4().hex[:12]}"


async def assert_matches_history(cluster, session_id: str, user: str, answer: Answer) -> None:
    """A fresh connection's history has the assembled text, character for character."""
    check = ChatClient(cluster.ws_url(session_id, user_id=user), local_ip="127.0.200.1")
    await check.connect()
    await check.send({"type": "history"})
    frame = await check.recv_until(lambda f: f["type"] == "history")
    await check.close()
    item = frame["messages"][-1]
    assert item["message_id"] == answer.message_id
    assert item["text"] == answer.text


async def test_kill9_gateway_mid_answer(cluster) -> None:
    session, user = sid(), "fa1"
    client = ChatClient(cluster.ws_url(session, user_id=user), local_ip="127.0.40.1")
    welcome = await client.connect()
    gateway = welcome["node_id"]
    ack = await client.chat("What happens when a gateway dies?")
    answer = await client.read_answer(Answer(ack["message_id"]), stop_after=5)

    killed_at = time.monotonic()
    cluster.kill9(gateway)
    await client.follow_resilient(answer)
    print(
        f"\nresume after kill -9 of {gateway}: answer complete "
        f"{time.monotonic() - killed_at:.2f}s later, reconnects={answer.reconnects}"
    )

    assert answer.reconnects >= 1
    assert client.welcome is not None and client.welcome["node_id"] != gateway
    answer.assert_exactly_once()
    assert answer.done is not None and answer.done["finish_reason"] == "stop"
    await assert_matches_history(cluster, session, user, answer)
    await client.close()
    cluster.wait_healthy(gateway, timeout=30)


async def test_kill9_worker_mid_answer(cluster) -> None:
    session, user = sid(), "fa2"
    client = ChatClient(cluster.ws_url(session, user_id=user), local_ip="127.0.41.1")
    await client.connect()
    ack = await client.chat("What happens when a worker dies?")
    mid = ack["message_id"]
    answer = await client.read_answer(Answer(mid), stop_after=5)

    worker = await generating_worker(cluster.redis_url, mid)
    killed_at = time.monotonic()
    cluster.kill9(worker)

    await client.follow_resilient(answer)
    print(f"\nkill -9 of {worker}: answer complete {time.monotonic() - killed_at:.2f}s later")
    answer.assert_exactly_once()
    assert answer.reconnects == 0, "a worker's death must not disturb the client's socket"
    assert answer.done is not None and answer.done["finish_reason"] == "stop"
    assert not answer.errors
    await assert_matches_history(cluster, session, user, answer)
    await client.close()
    cluster.wait_healthy(worker, timeout=30)


async def test_sigterm_worker_finishes_or_hands_over(cluster) -> None:
    """A worker stopped gracefully mid-answer loses nothing either way."""
    session, user = sid(), "fa5"
    client = ChatClient(cluster.ws_url(session, user_id=user), local_ip="127.0.44.1")
    await client.connect()
    ack = await client.chat("What happens when a worker is restarted?")
    mid = ack["message_id"]
    answer = await client.read_answer(Answer(mid), stop_after=3)
    worker = await generating_worker(cluster.redis_url, mid)
    cluster.sigterm(worker)
    await client.follow_resilient(answer)
    answer.assert_exactly_once()
    assert answer.reconnects == 0 and not answer.errors
    assert answer.done is not None and answer.done["finish_reason"] == "stop"
    await assert_matches_history(cluster, session, user, answer)
    await client.close()
    cluster.wait_healthy(worker, timeout=40)


async def test_sigterm_gateway_closes_with_1012_and_loses_nothing(cluster) -> None:
    session, user = sid(), "fa3"
    client = ChatClient(cluster.ws_url(session, user_id=user), local_ip="127.0.42.1")
    welcome = await client.connect()
    gateway = welcome["node_id"]
    ack = await client.chat("What happens on a rolling restart?")
    answer = await client.read_answer(Answer(ack["message_id"]), stop_after=3)

    cluster.sigterm(gateway)
    await client.follow_resilient(answer)
    assert answer.close_codes[:1] == [1012]
    answer.assert_exactly_once()
    await assert_matches_history(cluster, session, user, answer)
    await client.close()
    cluster.wait_healthy(gateway, timeout=30)


async def test_no_worker_at_all_ends_with_upstream_unavailable(tuned_cluster) -> None:
    """With every worker stopped the answer ends, with an error, within the deadline."""
    cluster = tuned_cluster
    for name in cluster.spec.worker_names:
        cluster.stop_process(name)
    try:
        client = ChatClient(cluster.ws_url(sid(), user_id="fa4"), local_ip="127.0.43.1")
        await client.connect()
        ack = await client.chat("Is anyone there?")
        answer = await client.read_answer(Answer(ack["message_id"]), timeout=60)
        assert answer.done is not None and answer.done["finish_reason"] == "error"
        assert [e["code"] for e in answer.errors] == ["upstream_unavailable"]
        await client.close()
    finally:
        for name in cluster.spec.worker_names:
            cluster.start_process(name)
