"""The model-provider interface: what the worker asks for and what comes back.

Providers yield the continuation of an answer as `Token`s, then one `Finish`.
They translate their own failures into `ProviderError`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from services.common.protocol import FinishReason


@dataclass(frozen=True, slots=True)
class ChatTurn:
    """One earlier turn of the session, as context for the model."""

    role: Literal["system", "user", "assistant"]
    content: str


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """What to answer: the user's prompt, bounded history, and any text already streamed."""

    message_id: str
    prompt: str
    """The user's message for this answer."""
    history: Sequence[ChatTurn]
    """Earlier turns of the session, oldest first, already bounded."""
    text_so_far: str = ""
    """Non-empty on takeover: the answer already streamed; continue after it."""


@dataclass(frozen=True, slots=True)
class Token:
    """A piece of the continuation (a word with its leading space, punctuation, ...)."""

    text: str


@dataclass(frozen=True, slots=True)
class Finish:
    """The last event of a stream."""

    reason: FinishReason
    """STOP or LENGTH."""
    prompt_tokens: int
    completion_tokens: int
    """Tokens this call produced (the continuation only)."""


ProviderEvent = Token | Finish


class ProviderError(Exception):
    """The model provider failed (network, HTTP status, bad stream)."""


class ModelProvider(Protocol):
    """A source of answers: the simulated model or an OpenAI-compatible API."""

    def stream(self, request: GenerationRequest) -> AsyncIterator[ProviderEvent]:
        """Yield `Token`s of the continuation only (never `text_so_far` again), then one `Finish`.

        Raises ProviderError for provider failures.
        """
        ...

    async def aclose(self) -> None:
        """Release what the provider created (not injected clients)."""
        ...


def estimate_tokens(text: str) -> int:
    """A rough token count (words) for usage when the provider gives none."""
    return len(text.split())


def chunk_tokens(text: str) -> int:
    """Providers report usage only at the end; this keeps a running count across
    takeovers (at least 1 a chunk)."""
    return max(1, estimate_tokens(text))


def estimate_prompt_tokens(request: GenerationRequest) -> int:
    """Estimated prompt size: the prompt plus every history turn."""
    return estimate_tokens(request.prompt) + sum(
        estimate_tokens(turn.content) for turn in request.history
    )
