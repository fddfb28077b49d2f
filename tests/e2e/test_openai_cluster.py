"""The cluster on the `openai` provider, against a fake OpenAI-compatible SSE server this
test starts (the outside LLM API is the one part we may fake): answers stream, and a
worker killed mid-answer is replaced by one that asks the model to continue from the
text streamed so far; a model that hangs mid-answer (the worker stays alive and keeps
its lease) ends the answer with `upstream_unavailable` within the recovery timeout."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest
from redis.asyncio import Redis

from services.common.keys import Keys
from tests.chat_client import Answer, ChatClient
from tests.node_probes import generating_worker

pytestmark = pytest.mark.e2e

WORDS = [f" word{n}" for n in range(80)]
FULL_ANSWER = "".join(WORDS).strip()
API_KEY = "sk-test-0123456789"
RECOVERY_TIMEOUT = 6.0
#: A prompt with this word gets HANG_AFTER pieces, then nothing (the connection stays open).
HANG = "hang"
HANG_AFTER = 3


@dataclass
class FakeModel:
    """Streams FULL_ANSWER a word every 40 ms; given an assistant turn (a takeover),
    streams only what follows it, as a model told to continue would."""

    requests: list[dict[str, Any]] = field(default_factory=list)
    auth: list[str] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    """Set at the end of the module: hung responses then end."""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            headers = {
                k.strip().lower(): v.strip()
                for k, _, v in (line.partition(":") for line in head.split("\r\n")[1:] if line)
            }
            body = json.loads(await reader.readexactly(int(headers["content-length"])))
            self.requests.append(body)
            self.auth.append(headers.get("authorization", ""))
            so_far = "".join(m["content"] for m in body["messages"] if m["role"] == "assistant")
            rest = FULL_ANSWER[len(so_far) :]
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n"
            )
            pieces = [rest[i : i + 7] for i in range(0, len(rest), 7)]
            hangs = HANG in body["messages"][-1]["content"]
            for n, piece in enumerate(pieces):
                if hangs and n == HANG_AFTER:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.release.wait(), 120)
                    break
                event = {
                    "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]
                }
                writer.write(f"data: {json.dumps(event)}\n\n".encode())
                await writer.drain()
                await asyncio.sleep(0.04)
            done = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
            writer.write(f"data: {json.dumps(done)}\n\ndata: [DONE]\n\n".encode())
            await writer.drain()
        writer.close()


@pytest.fixture(scope="module")
async def fake_model():  # type: ignore[no-untyped-def]
    model = FakeModel()
    server = await asyncio.start_server(model.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield model, f"http://127.0.0.1:{port}/v1"
    model.release.set()
    server.close()
    await server.wait_closed()


@pytest.fixture(scope="module")
def openai_cluster(cluster_factory, fake_model):  # type: ignore[no-untyped-def]
    _, base_url = fake_model
    return cluster_factory(
        gateways=1,
        workers=2,
        extra_env={
            "MODEL_PROVIDER": "openai",
            "OPENAI_BASE_URL": base_url,
            "OPENAI_API_KEY": API_KEY,
            "OPENAI_MODEL": "fake-model",
            "BATCH_MAX_TOKENS": "1",
            "STREAM_RECOVERY_TIMEOUT": str(RECOVERY_TIMEOUT),
        },
    )


async def test_openai_answer_survives_a_worker_kill(openai_cluster, fake_model) -> None:
    model, _ = fake_model
    cluster = openai_cluster
    first_request = len(model.requests)
    client = ChatClient(cluster.ws_url(f"o-{uuid.uuid4().hex[:10]}", user_id="oa"))
    await client.connect()
    ack = await client.chat("Count for me")
    mid = ack["message_id"]
    answer = await client.read_answer(Answer(mid), stop_after=10)

    worker = await generating_worker(cluster.redis_url, mid)
    seen_at_kill = answer.text
    cluster.kill9(worker)
    started = time.monotonic()
    await client.follow_resilient(answer, timeout=60)
    print(f"\nopenai takeover: answer complete {time.monotonic() - started:.2f}s after kill")

    answer.assert_exactly_once()
    assert answer.text == FULL_ANSWER
    requests = model.requests[first_request:]
    assert len(requests) >= 2, "no second worker asked the model"
    assert all(a == f"Bearer {API_KEY}" for a in model.auth[first_request:])
    assert requests[0]["model"] == "fake-model" and requests[0]["stream"] is True
    assert requests[0]["messages"][-1] == {"role": "user", "content": "Count for me"}
    takeover = requests[-1]["messages"]
    assistant = [m for m in takeover if m["role"] == "assistant"]
    assert assistant and FULL_ANSWER.startswith(assistant[-1]["content"])
    # It carries at least what the client had seen: the cache is the client's only source.
    assert assistant[-1]["content"].startswith(seen_at_kill)
    assert takeover[-1]["role"] == "user", "the takeover must ask the model to continue"
    await client.close()
    cluster.wait_healthy(worker, timeout=30)


async def test_a_model_that_hangs_mid_answer_ends_it_within_the_recovery_timeout(
    openai_cluster, fake_model
) -> None:
    """The worker lives, heartbeats and renews its lease, but writes nothing more: the
    gateway leaves the call, takes the lease away and ends the answer with the text so
    far; the worker's late writes (if the model ever goes on) are refused."""
    client = ChatClient(openai_cluster.ws_url(f"o-{uuid.uuid4().hex[:10]}", user_id="oa"))
    await client.connect()
    ack = await client.chat(f"Count, then {HANG}")
    answer = await client.read_answer(Answer(ack["message_id"]), stop_after=HANG_AFTER)
    stalled = time.monotonic()
    await client.read_answer(answer, timeout=RECOVERY_TIMEOUT + 20)
    waited = time.monotonic() - stalled
    print(f"\nhung model: answer ended {waited:.1f}s after its last chunk")

    assert answer.done is not None and answer.done["finish_reason"] == "error"
    assert [e["code"] for e in answer.errors] == ["upstream_unavailable"]
    answer.assert_exactly_once()
    assert answer.text == FULL_ANSWER[: len(answer.text)] and len(answer.seqs) == HANG_AFTER
    # Never before the recovery timeout; within it plus the heartbeat and polling slack.
    assert RECOVERY_TIMEOUT - 1 < waited < RECOVERY_TIMEOUT + 5
    await client.send({"type": "history", "limit": 10})
    history = await client.recv_until(lambda f: f["type"] == "history")
    assert history["messages"][-1]["message_id"] == answer.message_id
    assert history["messages"][-1]["text"] == answer.text
    # The lease was taken from the stuck worker, and its renewals do not take it back.
    redis = Redis.from_url(openai_cluster.redis_url, decode_responses=True)
    try:
        assert await redis.get(Keys().message_lease(answer.message_id)) is None
    finally:
        await redis.aclose()
    await client.close()
