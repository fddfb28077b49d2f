"""The OpenAI-compatible provider against a local fake chat-completions SSE server.

The fake (a raw asyncio HTTP/1.1 server on a free 127.0.0.1 port) picks its
behaviour from the request's `model`, and records every request it gets.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from services.ai_worker.providers import build_provider
from services.ai_worker.providers.base import (
    ChatTurn,
    Finish,
    GenerationRequest,
    ProviderError,
    Token,
)
from services.ai_worker.providers.openai import CONTINUE_INSTRUCTION, OpenAIProvider
from services.common.protocol import FinishReason
from services.common.settings import Settings

pytestmark = pytest.mark.integration


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


def _delta(content: str | None = None, finish: str | None = None) -> dict[str, Any]:
    delta = {} if content is None else {"content": content}
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


SCENARIOS: dict[str, list[dict[str, Any] | str]] = {
    "ok": [
        {"choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]},
        _delta("Hello"),
        _delta(","),
        _delta(" world"),
        _delta(finish="stop"),
        {"choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 3}},
        "[DONE]",
    ],
    "length": [_delta("cut"), _delta(" short"), _delta(finish="length"), "[DONE]"],
    "drop": [_delta("partial")],  # then the connection drops mid-body
}


@dataclass
class FakeOpenAI:
    base_url: str = ""
    requests: list[Recorded] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    handlers: set[asyncio.Task[Any]] = field(default_factory=set)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)  # so teardown can wait for every connection to finish
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            request_line, *header_lines = head.decode("latin-1").split("\r\n")
            headers = {}
            for line in header_lines:
                if ":" in line:
                    name, value = line.split(":", 1)
                    headers[name.strip().lower()] = value.strip()
            body = json.loads(await reader.readexactly(int(headers["content-length"])))
            self.requests.append(Recorded(request_line.split()[1], headers, body))
            await self.respond(body["model"], writer)
        finally:
            writer.close()

    async def respond(self, scenario: str, writer: asyncio.StreamWriter) -> None:
        if scenario == "error500":
            payload = b'{"error": {"message": "model overloaded"}}'
            writer.write(
                b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(payload), payload)
            )
            await writer.drain()
            return
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        )
        if scenario == "stall":
            await self.stop.wait()  # never answers while the client waits
            return
        self._chunk(writer, b": keep-alive comment\n\n")
        for event in SCENARIOS[scenario]:
            data = event if isinstance(event, str) else json.dumps(event)
            self._chunk(writer, f"data: {data}\n\n".encode())
        if scenario != "drop":
            writer.write(b"0\r\n\r\n")  # the end of a chunked body; "drop" never sends it
        await writer.drain()

    @staticmethod
    def _chunk(writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(b"%x\r\n%s\r\n" % (len(data), data))


@pytest.fixture
async def fake_openai() -> AsyncIterator[FakeOpenAI]:
    fake = FakeOpenAI()
    server = await asyncio.start_server(fake.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    fake.base_url = f"http://127.0.0.1:{port}/v1"
    try:
        yield fake
    finally:
        fake.stop.set()
        server.close()
        await server.wait_closed()
        async with asyncio.timeout(5):
            await asyncio.gather(*fake.handlers, return_exceptions=True)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


def provider(fake: FakeOpenAI, http: httpx.AsyncClient, model: str, **kw: Any) -> OpenAIProvider:
    return OpenAIProvider(http, base_url=fake.base_url, model=model, **kw)


REQUEST = GenerationRequest(
    "m-1", "And now?", [ChatTurn("user", "Hi there"), ChatTurn("assistant", "Hello!")]
)


async def collect(p: OpenAIProvider, request: GenerationRequest = REQUEST) -> list[Token | Finish]:
    async with asyncio.timeout(10):
        return [event async for event in p.stream(request)]


async def test_streams_tokens_and_usage(fake_openai: FakeOpenAI, http: httpx.AsyncClient) -> None:
    events = await collect(provider(fake_openai, http, "ok", api_key="sk-test"))
    assert events == [
        Token("Hello"),
        Token(","),
        Token(" world"),
        Finish(FinishReason.STOP, prompt_tokens=11, completion_tokens=3),
    ]
    [sent] = fake_openai.requests
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["authorization"] == "Bearer sk-test"
    assert sent.body["model"] == "ok"
    assert sent.body["stream"] is True
    assert sent.body["stream_options"] == {"include_usage": True}
    assert sent.body["messages"] == [
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "And now?"},
    ]


async def test_length_finish_and_estimated_usage(
    fake_openai: FakeOpenAI, http: httpx.AsyncClient
) -> None:
    events = await collect(provider(fake_openai, http, "length"))
    assert events[:2] == [Token("cut"), Token(" short")]
    # No usage chunk: completion counts the pieces, prompt is a word estimate: 2 + 2 + 1 words.
    assert events[2] == Finish(FinishReason.LENGTH, prompt_tokens=5, completion_tokens=2)
    assert "authorization" not in fake_openai.requests[0].headers


async def test_continuation_sends_text_so_far(
    fake_openai: FakeOpenAI, http: httpx.AsyncClient
) -> None:
    request = GenerationRequest("m-2", "Tell a story", [], text_so_far="Once upon a ti")
    events = await collect(provider(fake_openai, http, "ok"), request)
    assert isinstance(events[-1], Finish)
    assert fake_openai.requests[0].body["messages"] == [
        {"role": "user", "content": "Tell a story"},
        {"role": "assistant", "content": "Once upon a ti"},
        {"role": "user", "content": CONTINUE_INSTRUCTION},
    ]


async def test_http_500_raises_with_status_and_body(
    fake_openai: FakeOpenAI, http: httpx.AsyncClient
) -> None:
    with pytest.raises(ProviderError, match=r"500.*model overloaded"):
        await collect(provider(fake_openai, http, "error500"))


async def test_dropped_connection_raises(fake_openai: FakeOpenAI, http: httpx.AsyncClient) -> None:
    seen: list[Token | Finish] = []
    with pytest.raises(ProviderError) as caught:
        async with asyncio.timeout(10):
            async for event in provider(fake_openai, http, "drop").stream(REQUEST):
                seen.append(event)
    assert seen == [Token("partial")]
    assert isinstance(caught.value.__cause__, httpx.HTTPError)


async def test_read_timeout_raises(fake_openai: FakeOpenAI, http: httpx.AsyncClient) -> None:
    with pytest.raises(ProviderError) as caught:
        await collect(provider(fake_openai, http, "stall", timeout=0.2))
    assert isinstance(caught.value.__cause__, httpx.TimeoutException)


async def test_build_provider_client_ownership(
    fake_openai: FakeOpenAI, http: httpx.AsyncClient
) -> None:
    settings = Settings(
        model_provider="openai", openai_base_url=fake_openai.base_url, openai_model="ok",
        openai_api_key="", openai_timeout=5,
    )  # fmt: skip
    injected = build_provider(settings, http)
    assert isinstance(injected, OpenAIProvider)
    await injected.aclose()
    assert not http.is_closed  # an injected client belongs to the caller

    owned = build_provider(settings)
    assert isinstance(owned, OpenAIProvider)
    events = await collect(owned)
    assert events[-1] == Finish(FinishReason.STOP, prompt_tokens=11, completion_tokens=3)
    await owned.aclose()
    with pytest.raises(RuntimeError, match="client has been closed"):  # it closed its own client
        await collect(owned)
