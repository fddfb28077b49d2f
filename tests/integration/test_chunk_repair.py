"""A worker whose Redis comes back with fewer chunks than it wrote, against a real Redis
and the real scripts: it writes its own lost chunks again, identically, and finishes;
chunks it never wrote end the answer with `state_lost` at what Redis still holds."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from services.ai_worker.generation import Generation
from services.ai_worker.metrics import WorkerMetrics
from services.ai_worker.providers.base import (
    Finish,
    GenerationRequest,
    ProviderEvent,
    Token,
)
from services.common.generate import Outcome
from services.common.keys import Keys
from services.common.message_store import MessageStore
from services.common.protocol import ErrorCode, FinishReason, MessageStatus
from services.common.settings import Settings
from tests.integration.redis_helpers import eventually, make_message_store

pytestmark = pytest.mark.integration

SESSION = "s1"
TIMEOUT = 5.0

Entries = list[tuple[str, dict[str, str]]]


class PausingProvider:
    """Yields `tokens`, pausing after the first `pause_after` of them (before the Finish
    when that is all of them) until `resume` is set."""

    def __init__(self, tokens: list[str], pause_after: int) -> None:
        self.tokens = tokens
        self.pause_after = pause_after
        self.resume = asyncio.Event()

    async def stream(self, request: GenerationRequest) -> AsyncIterator[ProviderEvent]:
        for i, text in enumerate(self.tokens):
            if i == self.pause_after:
                await self.resume.wait()
            yield Token(text)
        if self.pause_after == len(self.tokens):
            await self.resume.wait()
        yield Finish(FinishReason.STOP, prompt_tokens=1, completion_tokens=len(self.tokens))

    async def aclose(self) -> None:
        pass


@dataclass
class Answer:
    """One accepted message in a real Redis, and the worker metrics of its generation."""

    redis: Redis
    keys: Keys
    store: MessageStore
    message_id: str
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    @property
    def stream(self) -> str:
        return self.keys.message_stream(self.message_id)

    async def entries(self) -> Entries:
        return list(await self.redis.xrange(self.stream))

    async def lose_last(self, k: int) -> None:
        """Redis comes back without the last `k` chunks and without the lease (a restart
        from an older state). XDEL keeps the stream's top id, so the stream is rebuilt."""
        entries = await self.entries()
        kept = entries[: len(entries) - k]
        await self.redis.delete(self.stream, self.keys.message_lease(self.message_id))
        for entry_id, fields in kept:
            await self.redis.xadd(self.stream, fields, id=entry_id)
        await self.redis.hset(self.keys.message_meta(self.message_id), "last_seq", len(kept))

    async def generate(self, provider: PausingProvider, *, loss: int) -> tuple[Generation, Entries]:
        """Run a generation; at the provider's pause, Redis loses the last `loss` chunks.
        Returns the generation and the entries Redis held just before the loss."""
        generation = Generation(
            self.message_id,
            store=self.store,
            provider=provider,
            settings=Settings(node_id="w-repair", batch_flush_ms=1.0, batch_max_tokens=1),
            metrics=WorkerMetrics(self.registry),
        )
        cached = len(await self.entries())  # written by a previous worker
        task = asyncio.create_task(generation.run())

        async def paused() -> Entries | None:
            entries = await self.entries()
            return entries if len(entries) == cached + provider.pause_after else None

        before = await eventually(paused, TIMEOUT, "the provider's pause")
        await self.lose_last(loss)
        provider.resume.set()
        await asyncio.wait_for(task, TIMEOUT)
        return generation, before

    def counter(self, name: str) -> float:
        value = self.registry.get_sample_value(f"worker_{name}_total")
        assert value is not None, name
        return value


@pytest.fixture
async def answer(redis: Redis, keys: Keys) -> Answer:
    store = make_message_store(redis, keys)
    _, message_id = await store.accept_chat(SESSION, "u1", "hello", "c1")
    return Answer(redis, keys, store, message_id)


async def test_lost_chunks_mid_answer_are_written_again_identically(answer: Answer) -> None:
    tokens = ["a", "b", "c", "d", "e", "f"]
    generation, before = await answer.generate(PausingProvider(tokens, 4), loss=2)

    entries = await answer.entries()
    assert [eid for eid, _ in entries] == ["0-1", "0-2", "0-3", "0-4", "0-5", "0-6", "1-0"]
    assert entries[:4] == before  # chunks 3 and 4 with the same delta and write time
    assert entries[-1][1]["finish_reason"] == "stop"
    assert "error" not in entries[-1][1]
    assert generation.progress.outcome == Outcome.DONE
    assert answer.counter("chunks_rewritten") == 2
    [item] = [h for h in await answer.store.history(SESSION, 10) if h.role == "assistant"]
    assert item.text == "abcdef"


async def test_lost_chunks_before_the_finish_are_written_again_first(answer: Answer) -> None:
    generation, before = await answer.generate(PausingProvider(["a", "b", "c"], 3), loss=3)

    entries = await answer.entries()
    assert entries[:-1] == before
    assert entries[-1] == (
        "1-0",
        {"last_seq": "3", "finish_reason": "stop", "prompt_tokens": "1", "completion_tokens": "3"},
    )
    assert generation.progress.outcome == Outcome.DONE
    assert answer.counter("chunks_rewritten") == 3
    assert await answer.redis.exists(answer.keys.message_lease(answer.message_id)) == 0


async def test_a_loss_of_chunks_another_worker_wrote_ends_with_state_lost(answer: Answer) -> None:
    # A previous worker wrote 1..3 and died; this one continues with 4 and 5 when Redis
    # comes back with chunk 1 only.
    previous = await answer.store.generators.acquire(answer.message_id, "w-dead")
    assert previous is not None
    for seq, delta in enumerate(["a", "b", "c"], start=1):
        outcome = await answer.store.append_chunk(
            answer.message_id, SESSION, token=previous.token, seq=seq, delta=delta, tokens=1
        )
        assert outcome == "ok"
    await previous.release()

    generation, before = await answer.generate(PausingProvider(["d", "e", "f"], 2), loss=4)

    entries = await answer.entries()
    assert entries[0] == before[0]
    assert [eid for eid, _ in entries] == ["0-1", "1-0"]  # nothing twice, nothing after 1
    assert entries[1][1]["last_seq"] == "1"
    assert entries[1][1]["finish_reason"] == "error"
    assert entries[1][1]["error"] == ErrorCode.STATE_LOST.value
    meta = await answer.store.meta(answer.message_id)
    assert meta is not None and (meta.status, meta.last_seq) == (MessageStatus.DONE, 1)
    assert generation.progress.outcome == Outcome.DONE
    assert answer.counter("chunks_rewritten") == 0
