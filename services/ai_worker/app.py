"""The worker's app factory: `POST /v1/generate` and the ops routes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import httpx
from fastapi import FastAPI
from fastapi.responses import JSONResponse, StreamingResponse
from prometheus_client import CollectorRegistry
from pydantic import BaseModel, Field

from services.ai_worker.generation import Generation, Outcome
from services.ai_worker.metrics import WorkerMetrics
from services.ai_worker.providers import build_provider
from services.common.events import ChatEvent, EventType
from services.common.kafka import EventPublisher
from services.common.keys import Keys
from services.common.logging import configure_logging
from services.common.message_store import MessageStore
from services.common.ops import ops_router
from services.common.redis_client import redis_from_settings
from services.common.settings import Settings

log = logging.getLogger(__name__)

#: Seconds between heartbeat lines on an open generate call with nothing new to say.
HEARTBEAT_S = 1.0


class GenerateRequest(BaseModel):
    """The gateway asks for an answer; idempotent per message_id."""

    message_id: str = Field(min_length=1, max_length=128)


class Worker:
    """This node's in-flight generations; one task per message, owned here."""

    def __init__(
        self,
        settings: Settings,
        store: MessageStore,
        publisher: EventPublisher,
        metrics: WorkerMetrics,
        http: httpx.AsyncClient,
    ) -> None:
        self.settings = settings
        self.store = store
        self.publisher = publisher
        self.metrics = metrics
        self.provider = build_provider(settings, http)
        self.running: dict[str, tuple[Generation, asyncio.Task[None]]] = {}
        self.draining = False

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
        )
        task = asyncio.create_task(self._run(gen), name=f"generate-{message_id}")
        self.running[message_id] = (gen, task)
        return gen

    async def _run(self, gen: Generation) -> None:
        self.metrics.in_flight.inc()
        try:
            await gen.run()
        finally:
            self.metrics.in_flight.dec()
            self.running.pop(gen.message_id, None)
            if gen.progress.outcome == Outcome.LEASED:
                self.metrics.leased_elsewhere.inc()
            if gen.finished_with is not None:
                session_id, reason, usage = gen.finished_with
                self.publisher.publish(
                    ChatEvent(
                        type=EventType.MESSAGE_COMPLETED,
                        session_id=session_id,
                        node_id=self.settings.node_id,
                        message_id=gen.message_id,
                        data={"finish_reason": reason.value, "usage": usage.model_dump()},
                    )
                )

    async def drain(self) -> None:
        """Let in-flight answers finish for a while, then hand the rest over."""
        self.draining = True
        tasks = [task for _, task in self.running.values()]
        if tasks:
            log.info("draining generations", extra={"detail": len(tasks)})
            _, pending = await asyncio.wait(tasks, timeout=self.settings.worker_drain_timeout)
            for task in pending:
                task.cancel()
            for task in pending:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.provider.aclose()


async def _progress_lines(gen: Generation) -> AsyncIterator[bytes]:
    """NDJSON: `progress` lines with the last seq written, heartbeats, then the outcome."""
    progress = gen.progress
    changed = progress.listen()
    sent_seq = -1
    try:
        while True:
            changed.clear()
            if progress.last_seq != sent_seq:
                sent_seq = progress.last_seq
                yield _line({"event": "progress", "last_seq": sent_seq})
            if progress.outcome is not None:
                yield _line(
                    {
                        "event": progress.outcome.value,
                        "last_seq": progress.last_seq,
                        "detail": progress.detail,
                    }
                )
                return
            try:
                async with asyncio.timeout(HEARTBEAT_S):
                    await changed.wait()
            except TimeoutError:
                yield _line({"event": "heartbeat"})
    finally:
        progress.unlisten(changed)


def _line(obj: dict[str, object]) -> bytes:
    return json.dumps(obj).encode() + b"\n"


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    configure_logging(settings.node_id, "ai_worker", settings.log_level)
    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry)
    holder: dict[str, Worker] = {}
    redis = redis_from_settings(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            stack.push_async_callback(redis.aclose)
            http = await stack.enter_async_context(
                httpx.AsyncClient(timeout=httpx.Timeout(settings.openai_timeout, connect=5.0))
            )
            publisher = EventPublisher(settings, registry)
            await publisher.start()
            stack.push_async_callback(publisher.stop)
            store = MessageStore(
                redis,
                Keys(settings.redis_key_prefix),
                stream_ttl=settings.stream_cache_ttl,
                meta_ttl=settings.message_meta_ttl,
                history_max=settings.history_max,
            )
            worker = Worker(settings, store, publisher, metrics, http)
            holder["worker"] = worker
            stack.push_async_callback(worker.drain)
            yield

    app = FastAPI(lifespan=lifespan, title="ai_worker")

    @app.post("/v1/generate", response_model=None)
    async def generate(body: GenerateRequest) -> StreamingResponse | JSONResponse:
        worker = holder["worker"]
        if worker.draining:
            return JSONResponse({"event": "draining"}, status_code=503)
        gen = worker.start(body.message_id)
        return StreamingResponse(_progress_lines(gen), media_type="application/x-ndjson")

    app.include_router(
        ops_router(
            service="ai_worker",
            node_id=settings.node_id,
            redis=lambda: redis,
            registry=registry,
            ready=lambda: (
                "draining" if holder.get("worker") and holder["worker"].draining else None
            ),
        )
    )
    return app
