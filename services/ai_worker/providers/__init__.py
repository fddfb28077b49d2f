"""Model providers: the interface and how to pick one from the settings."""

from __future__ import annotations

import httpx

from services.ai_worker.providers.base import (
    ChatTurn,
    Finish,
    GenerationRequest,
    ModelProvider,
    ProviderError,
    ProviderEvent,
    Token,
)
from services.ai_worker.providers.openai import OpenAIProvider
from services.ai_worker.providers.simulated import SimulatedProvider
from services.common.settings import Settings

__all__ = [
    "ChatTurn",
    "Finish",
    "GenerationRequest",
    "ModelProvider",
    "OpenAIProvider",
    "ProviderError",
    "ProviderEvent",
    "SimulatedProvider",
    "Token",
    "build_provider",
]


def build_provider(settings: Settings, http: httpx.AsyncClient | None = None) -> ModelProvider:
    """The provider named by `settings.model_provider` ("simulated" or "openai").

    The openai provider uses `http` if given (and then leaves closing it to the
    caller), otherwise it creates and owns a client. Raises ValueError for an
    unknown provider name.
    """
    if settings.model_provider == "simulated":
        return SimulatedProvider.from_settings(settings)
    if settings.model_provider == "openai":
        return OpenAIProvider.from_settings(settings, http)
    raise ValueError(f"unknown model provider {settings.model_provider!r}")
