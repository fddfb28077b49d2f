"""The simulated model every baseline runs, configured like our services.

The settings have the names (SIM_*, BATCH_*) and defaults of
services.common.settings, so `ModelShape.env()` shapes the baselines and our cluster
alike; the answers come from the very provider and batcher our workers use, so all
targets stream the same text in the same chunks.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass
from typing import Any

from services.ai_worker.batcher import TokenBatcher, batch_events
from services.ai_worker.providers.base import Finish, GenerationRequest
from services.ai_worker.providers.simulated import SimulatedProvider
from services.common.settings import Settings


def _default(field: str) -> Any:
    # Read the services' defaults rather than copy them, so the two cannot drift.
    return Settings.model_fields[field].default


@dataclass(frozen=True)
class ModelConfig:
    """The SIM_* / BATCH_* settings of one process."""

    tokens_per_second: float
    min_tokens: int
    max_tokens: int
    seed: int
    flush_ms: float
    max_batch: int

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ModelConfig:
        """Read the settings from `env` (os.environ); ValueError if one is not a number."""

        def get(name: str, field: str) -> str:
            return env.get(name, str(_default(field)))

        return cls(
            tokens_per_second=float(get("SIM_TOKENS_PER_SECOND", "sim_tokens_per_second")),
            min_tokens=int(get("SIM_MIN_TOKENS", "sim_min_tokens")),
            max_tokens=int(get("SIM_MAX_TOKENS", "sim_max_tokens")),
            seed=int(get("SIM_SEED", "sim_seed")),
            flush_ms=float(get("BATCH_FLUSH_MS", "batch_flush_ms")),
            max_batch=int(get("BATCH_MAX_TOKENS", "batch_max_tokens")),
        )


class SimulatedAnswers:
    """Answers as our workers batch them: chunk strings, then the provider's `Finish`."""

    def __init__(self, config: ModelConfig) -> None:
        self._config = config
        self._provider = SimulatedProvider(
            seed=config.seed,
            min_tokens=config.min_tokens,
            max_tokens=config.max_tokens,
            tokens_per_second=config.tokens_per_second,
        )

    def stream(self, prompt: str, message_id: str) -> AsyncGenerator[str | Finish, None]:
        """The answer to `prompt`; close it (contextlib.aclosing) when stopping early."""
        request = GenerationRequest(message_id=message_id, prompt=prompt, history=())
        batcher = TokenBatcher(self._config.flush_ms, self._config.max_batch)
        return batch_events(self._provider.stream(request), batcher)
