"""An OpenAI-compatible chat-completions provider, streamed over SSE.

Works with any server that speaks `POST /chat/completions` with `stream: true`
(OpenAI, vLLM, llama.cpp, Ollama's compatibility endpoint, ...).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

from services.ai_worker.providers.base import (
    Finish,
    GenerationRequest,
    ProviderError,
    ProviderEvent,
    Token,
    estimate_prompt_tokens,
    estimate_tokens,
)
from services.common.protocol import FinishReason
from services.common.settings import Settings

CONTINUE_INSTRUCTION = (
    "Your previous answer was cut off. Continue it exactly where it stopped, "
    "starting with the very next characters. Do not repeat anything already written "
    "and do not add any preamble."
)
_ERROR_BODY_CHARS = 300


def build_messages(request: GenerationRequest) -> list[dict[str, str]]:
    """The chat messages for `request`: history, the prompt, and on takeover a
    continuation turn after the text already streamed."""
    messages = [{"role": turn.role, "content": turn.content} for turn in request.history]
    messages.append({"role": "user", "content": request.prompt})
    if request.text_so_far:
        messages.append({"role": "assistant", "content": request.text_so_far})
        messages.append({"role": "user", "content": CONTINUE_INSTRUCTION})
    return messages


class OpenAIProvider:
    """Streams answers from an OpenAI-compatible API through an injected httpx client."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        base_url: str,
        model: str,
        api_key: str = "",
        timeout: float = 60.0,
        owns_client: bool = False,
    ) -> None:
        self._http = http
        self._url = base_url.rstrip("/") + "/chat/completions"
        self._model = model
        self._api_key = api_key
        # Per request, so an injected client with other defaults still honours it;
        # for a stream the read timeout bounds the wait for each next piece.
        self._timeout = httpx.Timeout(timeout)
        self._owns_client = owns_client

    @classmethod
    def from_settings(
        cls, settings: Settings, http: httpx.AsyncClient | None = None
    ) -> OpenAIProvider:
        """Build from the `OPENAI_*` settings; creates (and then owns) a client if none given."""
        owns = http is None
        client = http if http is not None else httpx.AsyncClient(timeout=settings.openai_timeout)
        return cls(
            client,
            base_url=settings.openai_base_url,
            model=settings.openai_model,
            api_key=settings.openai_api_key,
            timeout=settings.openai_timeout,
            owns_client=owns,
        )

    async def stream(self, request: GenerationRequest) -> AsyncIterator[ProviderEvent]:
        """Yield the model's content pieces as `Token`s, then one `Finish`.

        Raises ProviderError on a non-2xx status, a network failure or timeout, a
        malformed stream, or a stream that ends before the model finished.
        """
        body = {
            "model": self._model,
            "messages": build_messages(request),
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        headers = {"Accept": "text/event-stream"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        parser = _StreamState()
        try:
            async with self._http.stream(
                "POST", self._url, json=body, headers=headers, timeout=self._timeout
            ) as response:
                if not response.is_success:
                    text = (await response.aread()).decode("utf-8", "replace")
                    raise ProviderError(
                        f"provider returned HTTP {response.status_code}: {text[:_ERROR_BODY_CHARS]}"
                    )
                async for line in response.aiter_lines():
                    piece = parser.feed(line)
                    if piece:
                        yield Token(piece)
                    if parser.done:
                        break
        except httpx.HTTPError as exc:
            raise ProviderError(f"provider request failed: {exc!r}") from exc
        # Some compatible servers omit `[DONE]`; a finish_reason is enough then.
        if not parser.done and parser.finish_reason is None:
            raise ProviderError("provider stream ended before the answer finished")
        yield parser.finish(request)

    async def aclose(self) -> None:
        """Close the httpx client if this provider created it."""
        if self._owns_client:
            await self._http.aclose()


class _StreamState:
    """Parses SSE lines of a chat-completions stream; pure, one instance per call."""

    def __init__(self) -> None:
        self.done = False
        self.finish_reason: str | None = None
        self.pieces = 0
        self.usage: dict[str, Any] | None = None

    def feed(self, line: str) -> str | None:
        """Consume one line; return the content piece it carries, if any.

        Raises ProviderError for malformed data or an error object in the stream.
        """
        if not line.startswith("data:"):
            return None  # blank separators, `event:`, `id:` and `:` comments
        data = line[len("data:") :].strip()
        if data == "[DONE]":
            self.done = True
            return None
        try:
            chunk = json.loads(data)
        except ValueError as exc:
            raise ProviderError(f"malformed stream data: {data[:100]!r}") from exc
        if not isinstance(chunk, dict):
            raise ProviderError(f"unexpected stream data: {data[:100]!r}")
        if "error" in chunk:
            raise ProviderError(f"provider error in stream: {str(chunk['error'])[:200]}")
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.usage = usage
        choices = chunk.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            return None  # the final usage chunk has no choices
        choice = choices[0]
        if choice.get("finish_reason"):
            self.finish_reason = str(choice["finish_reason"])
        delta = choice.get("delta")
        content = delta.get("content") if isinstance(delta, dict) else None
        if isinstance(content, str) and content:
            self.pieces += 1
            return content
        return None

    def finish(self, request: GenerationRequest) -> Finish:
        """The closing event, with the server's usage when it sent one."""
        reason = FinishReason.LENGTH if self.finish_reason == "length" else FinishReason.STOP
        prompt_tokens = estimate_prompt_tokens(request) + estimate_tokens(request.text_so_far)
        completion_tokens = self.pieces
        if self.usage is not None:
            prompt_tokens = _int_or(self.usage.get("prompt_tokens"), prompt_tokens)
            completion_tokens = _int_or(self.usage.get("completion_tokens"), completion_tokens)
        return Finish(reason, prompt_tokens, completion_tokens)


def _int_or(value: object, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default
