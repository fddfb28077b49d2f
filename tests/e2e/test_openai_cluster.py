"""The cluster on the `openai` provider, against a fake OpenAI-compatible SSE server this
test starts (the outside LLM API is the one part we may fake): answers stream, and a
worker killed mid-answer is replaced by one that asks the model to continue from the
text streamed so far."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.chat_client import Answer, ChatClient
from tests.node_probes import generating_worker

pytestmark = pytest.mark.e2e

WORDS = [f" word{n}" for n in range(80)]
FULL_ANSWER = "".join(WORDS).strip()
API_KEY = "sk-test-0123456789"


@dataclass
class FakeModel:
    """Streams FULL_ANSWER a word every 40 ms; given an assistant turn (a takeover),
    streams only what follows it, as a model told to continue would."""

    requests: list[dict[str, Any]] = field(default_factory=list)
    auth: list[str] = field(default_factory=list)

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
            for piece in pieces:
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
