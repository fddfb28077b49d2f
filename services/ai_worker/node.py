"""The worker node: its in-flight generations, one task per message, owned here.

A generation's `message.completed` event is written by the finish script itself (see
MessageStore.finish), in the same step as the final record. What a generation wrote
of an answer it finished stays in `recent` for a while, for aftercare.py.
"""

from __future__ import annotations

import asyncio
import logging
import time

import httpx

from services.ai_worker.aftercare import RecentlyFinished
from services.ai_worker.batcher import AdaptiveFlush
from services.ai_worker.generation import Generation
from services.ai_worker.metrics import WorkerMetrics
from services.ai_worker.providers import build_provider
from services.common.generate import Outcome
from services.common.message_store import MessageStore
from services.common.overload import Admission, LoopLag, Refusal
from services.common.settings import Settings
from services.common.tasks import cancel_and_wait

log = logging.getLogger(__name__)


class Worker:
    """Starts generations (at most one per message id) and drains them on shutdown."""

    def __init__(
        self,
        settings: Settings,
        store: MessageStore,
        metrics: WorkerMetrics,
        http: httpx.AsyncClient,
    ) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.provider = build_provider(settings, http)
        self.running: dict[str, tuple[Generation, asyncio.Task[None]]] = {}
        self.draining = False
        self.recent = RecentlyFinished(settings.finished_watch_s, settings.finished_watch_max)
        """What was written of the answers finished lately (see aftercare.py)."""
        self.flush = (
            AdaptiveFlush(
                settings.batch_flush_ms / 1000,
                settings.batch_max_flush_ms / 1000,
                settings.worker_max_chunks_per_s,
            )
            if settings.worker_max_chunks_per_s > 0
            else None
        )
        """The flush interval of all this worker's answers (adaptive batching)."""
        self.admission = Admission(
            settings.worker_max_answers,
            settings.overload_lag_ms / 1000,
            settings.overload_retry_after,
        )
        self.lag = LoopLag(on_sample=lambda value: self.admission.observe(value, len(self.running)))
        metrics.loop_lag.set_function(lambda: self.lag.value)

    def ready_problem(self) -> str | None:
        return "draining" if self.draining else None

    def refusal(self, message_id: str, new: bool) -> Refusal | None:
        """Why this worker will not take the answer now, or None. Only an answer with no
        chunk yet (`new`) that this worker does not already run is ever refused."""
        if not new or message_id in self.running:
            return None
        refusal = self.admission.refusal(len(self.running), self.lag.value, time.monotonic())
        if refusal is not None:
            self.metrics.refused.labels(refusal.reason).inc()
        return refusal

    def start(self, message_id: str) -> Generation:
        current = self.running.get(message_id)
        if current is not None:
            return current[0]
        gen = Generation(
            message_id,
            store=self.store,
            provider=self.provider,
            settings=self.settings,
            metrics=self.metrics,
            flush=self.flush,
        )
        task = asyncio.create_task(self._run(gen), name=f"generate-{message_id}")
        self.running[message_id] = (gen, task)
        self._load_changed()
        return gen

    def _load_changed(self) -> None:
        if self.flush is not None:
            self.flush.update(len(self.running))

    async def _run(self, gen: Generation) -> None:
        self.metrics.in_flight.inc()
        try:
            await gen.run()
        finally:
            self.metrics.in_flight.dec()
            self.running.pop(gen.message_id, None)
            self._load_changed()
            if gen.finished is not None:
                self.recent.add(gen.finished)
            if gen.progress.outcome == Outcome.LEASED:
                self.metrics.leased_elsewhere.inc()

    async def drain(self) -> None:
        """Let in-flight answers finish for a while, then hand the rest over."""
        self.draining = True
        tasks = [task for _, task in self.running.values()]
        if tasks:
            log.info("draining generations", extra={"detail": len(tasks)})
            _, pending = await asyncio.wait(tasks, timeout=self.settings.worker_drain_timeout)
            await cancel_and_wait(*pending)
        await self.provider.aclose()
