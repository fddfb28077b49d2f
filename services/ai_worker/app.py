"""The worker's app factory: the lifespan builds the node and yields it as state.

The event drainer (unless KAFKA_ENABLED=false) runs under a `TaskSupervisor`, as the
gateway's loops do: restarted if it dies, and `/ready` false meanwhile.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import httpx
from fastapi import FastAPI

from services.ai_worker.aftercare import Aftercare
from services.ai_worker.metrics import WorkerMetrics
from services.ai_worker.node import Worker
from services.ai_worker.routes import generate_router
from services.common.event_outbox import EventOutbox
from services.common.kafka import EventDrainer
from services.common.keys import Keys
from services.common.logging import configure_logging
from services.common.message_store import MessageStore
from services.common.metrics import node_registry
from services.common.ops import NodeHealth, ops_router
from services.common.redis_client import redis_from_settings
from services.common.settings import Settings
from services.common.tasks import TaskSupervisor, watch_shutdown


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    configure_logging(settings.node_id, "ai_worker", settings.log_level)
    registry = node_registry()
    metrics = WorkerMetrics(registry)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, object]]:
        async with AsyncExitStack() as stack:
            redis = redis_from_settings(settings)
            stack.push_async_callback(redis.aclose)
            http = await stack.enter_async_context(
                httpx.AsyncClient(timeout=httpx.Timeout(settings.openai_timeout, connect=5.0))
            )
            loops = TaskSupervisor()
            stack.push_async_callback(loops.close)
            if settings.kafka_enabled:
                outboxes = EventOutbox.every_bucket(redis, Keys.from_settings(settings))
                loops.start("event-drainer", EventDrainer(outboxes, settings, registry).run)
            store = MessageStore.from_settings(redis, settings)
            worker = Worker(settings, store, metrics, http)
            loops.start("loop-lag", worker.lag.run)
            if settings.finished_watch_s > 0:
                aftercare = Aftercare(store, worker.recent, metrics, settings.node_id)
                loops.start("aftercare", aftercare.run)
            # Drained first: the answers finishing now write their events while the
            # drainer still runs.
            stack.push_async_callback(worker.drain)
            health = NodeHealth(redis, [worker.ready_problem, loops.problem])
            stack.push_async_callback(watch_shutdown, settings.shutdown_timeout)
            yield {"worker": worker, "health": health}

    app = FastAPI(lifespan=lifespan, title="ai_worker")
    app.include_router(generate_router())
    app.include_router(ops_router(service="ai_worker", node_id=settings.node_id, registry=registry))
    return app
