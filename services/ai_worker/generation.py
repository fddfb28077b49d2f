"""One answer being generated: lease, continue after the cached seq, batch, append, finish.

A generation runs in a task the worker owns, not in the HTTP request that asked for
it, so it finishes even when the gateway that called goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field

from services.ai_worker.aftercare import FinishedAnswer
from services.ai_worker.batcher import AdaptiveFlush, TokenBatcher, batch_events
from services.ai_worker.metrics import WorkerMetrics
from services.ai_worker.providers.base import (
    ChatTurn,
    Finish,
    GenerationRequest,
    ModelProvider,
    ProviderError,
    chunk_tokens,
)
from services.common.clock import now_ms
from services.common.events import new_event_id
from services.common.generate import Outcome
from services.common.lease import Lease
from services.common.logging import message_id_var, session_id_var
from services.common.message_store import (
    AppendOutcome,
    FinishOutcome,
    MessageMeta,
    MessageStore,
    user_item_id,
)
from services.common.protocol import ErrorCode, FinishReason, HistoryItem, MessageStatus, Usage
from services.common.settings import Settings
from services.common.streams import ChunkEntry, DoneEntry

log = logging.getLogger(__name__)

#: Times one write may find Redis behind and write the missing chunks again.
MAX_REPAIRS = 3


@dataclass
class Progress:
    """What listeners of a generation see: the last seq written, and the outcome. Each
    listener gets its own event, set once the outcome is known (not on every chunk: the
    route reports the seq on its own clock, see routes.py)."""

    last_seq: int = 0
    outcome: Outcome | None = None
    detail: str = ""
    _listeners: set[asyncio.Event] = field(default_factory=set)

    def listen(self) -> asyncio.Event:
        event = asyncio.Event()
        self._listeners.add(event)
        return event

    def unlisten(self, event: asyncio.Event) -> None:
        self._listeners.discard(event)

    def update(
        self, *, last_seq: int | None = None, outcome: Outcome | None = None, detail: str = ""
    ) -> None:
        if last_seq is not None:
            self.last_seq = last_seq
        if outcome is not None:
            self.outcome, self.detail = outcome, detail
            for event in self._listeners:
                event.set()


class Generation:
    """Generates `message_id` under a lease; `run()` never raises except on cancellation."""

    def __init__(
        self,
        message_id: str,
        *,
        store: MessageStore,
        provider: ModelProvider,
        settings: Settings,
        metrics: WorkerMetrics,
        flush: AdaptiveFlush | None = None,
    ) -> None:
        self.message_id = message_id
        self._flush = flush
        self.progress = Progress()
        self._store = store
        self._provider = provider
        self._settings = settings
        self._metrics = metrics
        self._lease: Lease | None = None
        self._written: dict[int, tuple[str, int]] = {}
        """seq -> (delta, written_ms) of the chunks this generation wrote, to write them
        again identically if Redis loses them."""
        self.finished: FinishedAnswer | None = None
        """What this generation wrote, once it wrote the final record (for aftercare)."""
        self._started = time.monotonic()
        """When the generation was asked for (its task starts at once)."""
        self._timed = False
        """The answer starts here (no cached chunk): its latencies are observed."""

    async def run(self) -> None:
        message_id_var.set(self.message_id)
        try:
            await self._run()
        except asyncio.CancelledError:
            await self._release()
            self.progress.update(outcome=Outcome.HANDED_OVER)
            raise
        except ProviderError as exc:
            log.warning("provider failed; releasing the lease", extra={"detail": str(exc)})
            self._metrics.provider_errors.inc()
            await self._release()
            self.progress.update(outcome=Outcome.FAILED, detail=str(exc))
        except Exception as exc:  # noqa: BLE001 - reported to the gateway, which retries
            log.exception("generation failed")
            await self._release()
            self.progress.update(outcome=Outcome.FAILED, detail=repr(exc))

    async def _release(self) -> None:
        if self._lease is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._lease.release())
            self._lease = None

    async def _run(self) -> None:
        meta = await self._store.meta(self.message_id)
        if meta is None:
            self.progress.update(outcome=Outcome.NOT_FOUND)
            return
        session_id_var.set(meta.session_id)
        if meta.status == MessageStatus.DONE:
            self.progress.update(last_seq=meta.last_seq, outcome=Outcome.DONE)
            return
        lease = await self._store.generators.acquire(self.message_id, self._settings.node_id)
        if lease is None:
            self.progress.update(outcome=Outcome.LEASED)
            return
        self._lease = lease
        async with lease.kept():
            await self._generate(meta, lease)

    async def _generate(self, meta: MessageMeta, lease: Lease) -> None:
        token = lease.token
        limit = self._settings.history_context_messages
        entries, cancelled, items = await self._store.generation_inputs(
            self.message_id, meta.session_id, limit + 1
        )
        text, last_seq, done = cached_text(entries)
        if done is not None:
            self.progress.update(last_seq=done.last_seq, outcome=Outcome.DONE)
            return
        if last_seq:
            self._metrics.takeovers.inc()
            log.info("continuing after cached seq", extra={"detail": last_seq})
        self._timed = last_seq == 0
        self.progress.update(last_seq=last_seq)
        reason, usage = FinishReason.STOP, Usage(completion_tokens=meta.completion_tokens)
        if cancelled:
            reason = FinishReason.CANCELLED
        else:
            request = GenerationRequest(
                message_id=self.message_id,
                prompt=meta.prompt,
                history=context_turns(items, self.message_id, limit),
                text_so_far=text,
            )
            batcher = TokenBatcher(
                self._settings.batch_flush_ms, self._settings.batch_max_tokens, self._flush
            )
            events = batch_events(self._provider.stream(request), batcher)
            try:
                async for item in events:
                    if isinstance(item, Finish):
                        reason = item.reason
                        usage = Usage(
                            prompt_tokens=item.prompt_tokens,
                            completion_tokens=meta.completion_tokens + item.completion_tokens,
                        )
                        continue
                    outcome = await self._write(meta, token, last_seq + 1, item)
                    if outcome == AppendOutcome.GAP:
                        await self._lose(meta, token, lease)
                        return
                    if outcome == AppendOutcome.LOST:
                        lease.forget()
                        self._lease = None
                        self.progress.update(outcome=Outcome.LOST)
                        return
                    if outcome == AppendOutcome.GONE:
                        log.warning("the message record expired mid-answer; stopping")
                        self.progress.update(outcome=Outcome.NOT_FOUND)
                        return
                    if outcome == AppendOutcome.CANCELLED:
                        reason = FinishReason.CANCELLED
                        break
                    last_seq += 1
                    text += item
                    self._metrics.chunks.inc()
                    self._metrics.tokens.inc(chunk_tokens(item))
                    if self._timed and last_seq == 1:
                        self._metrics.time_to_first_token.observe(time.monotonic() - self._started)
                    self.progress.update(last_seq=last_seq)
            finally:
                await events.aclose()
        final, event_id = DoneEntry(last_seq, reason, usage), new_event_id()
        finished = await self._finish(meta, token, text, final, event_id=event_id)
        if finished == FinishOutcome.GAP:
            await self._lose(meta, token, lease)
            return
        # The finish script dropped the lease, or another holder has it now.
        lease.forget()
        self._lease = None
        if finished == FinishOutcome.GONE:
            self.progress.update(last_seq=last_seq, outcome=Outcome.NOT_FOUND)
            return
        if finished == FinishOutcome.LOST:
            # The lease lapsed before the final record: whoever holds it now finishes.
            log.warning("lease lost at the finish", extra={"detail": f"seq={last_seq}"})
            self.progress.update(last_seq=last_seq, outcome=Outcome.LOST)
            return
        if finished == FinishOutcome.OK:
            self.finished = FinishedAnswer(
                self.message_id, meta.session_id, text, final, dict(self._written), event_id
            )
            self._metrics.finished.labels(reason.value).inc()
            if self._timed:
                self._metrics.answer_duration.observe(time.monotonic() - self._started)
        log.info("answer finished", extra={"detail": f"{reason.value} seq={last_seq} {finished}"})
        self.progress.update(last_seq=last_seq, outcome=Outcome.DONE)

    async def _write(
        self, meta: MessageMeta, token: str, seq: int, delta: str, written_ms: int | None = None
    ) -> AppendOutcome:
        """Append chunk `seq`; if Redis lost chunks before it, write them again first.
        GAP means they could not be written again (not in this generation's memory)."""
        written_ms = now_ms() if written_ms is None else written_ms
        for _ in range(MAX_REPAIRS + 1):
            outcome = await self._append(meta, token, seq, delta, written_ms)
            if outcome == AppendOutcome.OK:
                self._written[seq] = (delta, written_ms)
            if outcome != AppendOutcome.GAP or not await self._repair(meta, token, seq):
                return outcome
        return AppendOutcome.GAP

    async def _append(
        self, meta: MessageMeta, token: str, seq: int, delta: str, written_ms: int
    ) -> AppendOutcome:
        return await self._store.append_chunk(
            self.message_id,
            meta.session_id,
            token=token,
            seq=seq,
            delta=delta,
            tokens=chunk_tokens(delta),
            written_ms=written_ms,
        )

    async def _finish(
        self,
        meta: MessageMeta,
        token: str,
        text: str,
        final: DoneEntry,
        *,
        repair: bool = True,
        event_id: str | None = None,
    ) -> FinishOutcome:
        """Write the final record; if Redis lost chunks first, write them again first
        (with `repair`; without, a GAP is returned as it is)."""
        for _ in range(MAX_REPAIRS + 1):
            outcome = await self._store.finish(
                self.message_id,
                meta.session_id,
                token=token,
                last_seq=final.last_seq,
                text=text,
                reason=final.finish_reason,
                usage=final.usage,
                error=final.error,
                event_id=event_id,
            )
            if outcome != FinishOutcome.GAP or not repair:
                return outcome
            if not await self._repair(meta, token, final.last_seq + 1):
                return outcome
        return FinishOutcome.GAP

    async def _repair(self, meta: MessageMeta, token: str, before_seq: int) -> bool:
        """Write again, identically, the chunks Redis lost between its last_seq and
        `before_seq`; False if some of them are not this generation's to write."""
        stored = await self._store.meta(self.message_id)
        if stored is None or stored.last_seq + 1 >= before_seq:
            return False
        missing = range(stored.last_seq + 1, before_seq)
        if any(seq not in self._written for seq in missing):
            return False
        log.warning(
            "redis lost chunks; writing them again",
            extra={"detail": f"{missing.start}..{missing.stop - 1}"},
        )
        for seq in missing:
            if await self._append(meta, token, seq, *self._written[seq]) != AppendOutcome.OK:
                return False
            self._metrics.chunks_rewritten.inc()
        return True

    async def _lose(self, meta: MessageMeta, token: str, lease: Lease) -> None:
        """Redis lost chunks this worker cannot write again: end the answer at what is
        stored, with `state_lost`, so every client is told."""
        text, last_seq, done = cached_text(await self._store.read_entries(self.message_id))
        lease.forget()
        self._lease = None
        outcome = Outcome.DONE
        if done is None:
            log.error("redis lost chunks of this answer; ending it", extra={"detail": last_seq})
            usage = Usage(completion_tokens=meta.completion_tokens)
            final = DoneEntry(last_seq, FinishReason.ERROR, usage, ErrorCode.STATE_LOST)
            finished = await self._finish(meta, token, text, final, repair=False)
            if finished == FinishOutcome.LOST:
                outcome = Outcome.LOST
        self.progress.update(last_seq=last_seq, outcome=outcome)


def cached_text(entries: list[ChunkEntry | DoneEntry]) -> tuple[str, int, DoneEntry | None]:
    """The text and last seq already in the chunk cache (non-empty after a takeover),
    and its final record if the answer is done."""
    parts: list[str] = []
    last_seq = 0
    for entry in entries:
        if isinstance(entry, ChunkEntry):
            parts.append(entry.delta)
            last_seq = entry.seq
        else:
            return "".join(parts), last_seq, entry
    return "".join(parts), last_seq, None


def context_turns(items: list[HistoryItem], message_id: str, limit: int) -> list[ChatTurn]:
    """Earlier turns of the session for the model, at most `limit`, stopping at this
    message's own prompt (and anything after it)."""
    own = user_item_id(message_id)
    turns: list[ChatTurn] = []
    for item in items:
        if item.message_id in (own, message_id):
            break
        turns.append(ChatTurn(role=item.role, content=item.text))
    return turns[-limit:]
