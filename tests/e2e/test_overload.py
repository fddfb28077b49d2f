"""Admission under overload, on a real cluster: a node with no room refuses new chats
with `busy` + `retry_after` and writes nothing; an answer a full worker cannot start
yet waits, then streams exactly once; nothing is lost."""

from __future__ import annotations

import asyncio

import pytest

from tests.chat_client import Answer, ChatClient
from tests.node_probes import metric

pytestmark = pytest.mark.e2e

OVERLOAD_ENV = {
    # One worker with room for one answer; a gateway that drives at most two.
    "WORKER_MAX_ANSWERS": "1",
    "GATEWAY_MAX_ANSWERS": "2",
    "OVERLOAD_RETRY_AFTER": "0.5",
    # Only the counts decide here, not a loop slowed by the rest of the test run (the
    # lag's part is unit-tested).
    "OVERLOAD_LAG_MS": "60000",
    # Answers of 40 tokens at 40 tok/s: about a second each.
    "SIM_MIN_TOKENS": "40",
    "SIM_MAX_TOKENS": "40",
}


@pytest.fixture(scope="module")
def small_cluster(cluster_factory):  # type: ignore[no-untyped-def]
    return cluster_factory(gateways=1, workers=1, extra_env=OVERLOAD_ENV)


async def test_a_full_cluster_refuses_new_chats_and_loses_nothing(small_cluster) -> None:
    c = small_cluster
    gateway = c.node_url(c.gateway_names[0])
    worker = c.node_url(c.worker_names[0])
    clients = [
        ChatClient(c.ws_url(f"over-{n}", user_id=f"over-{n}"), local_ip=f"127.0.{160 + n}.1")
        for n in range(3)
    ]
    try:
        await asyncio.gather(*(cl.connect() for cl in clients))
        first = await clients[0].chat("first", client_msg_id="c-1")
        second = await clients[1].chat("second", client_msg_id="c-2")
        assert (first["type"], second["type"]) == ("ack", "ack"), (first, second)

        # The gateway drives two answers: a third chat is refused, and nothing of it
        # is written (its session has no history).
        third = await clients[2].chat("third", client_msg_id="c-3")
        assert third["type"] == "error" and third["code"] == "busy", third
        assert third["client_msg_id"] == "c-3" and "message_id" not in third
        assert 0 < third["retry_after"] <= 0.75
        await clients[2].send({"type": "history"})
        history = await clients[2].recv_until(lambda f: f["type"] == "history")
        assert history["messages"] == []
        assert metric(gateway, "gateway_chats_refused_total") >= 1

        # The worker had room for one: the second answer waited for it, and both
        # stream whole, exactly once.
        answers = [Answer(first["message_id"]), Answer(second["message_id"])]
        await asyncio.gather(clients[0].read_answer(answers[0]), clients[1].read_answer(answers[1]))
        for answer in answers:
            answer.assert_exactly_once()
            assert answer.done is not None and answer.done["finish_reason"] == "stop"
            assert answer.done["usage"]["completion_tokens"] == 40
        assert metric(worker, "worker_generations_refused_total") >= 1
        assert metric(gateway, "gateway_workers_busy_total") >= 1
        # The refused chat, sent again as a client does after retry_after, is served.
        late = await clients[2].ask("third", client_msg_id="c-3")
        await clients[2].read_answer(late)
        late.assert_exactly_once()
        assert late.done is not None and late.done["finish_reason"] == "stop"
    finally:
        await asyncio.gather(*(cl.close() for cl in clients))
