"""The worker's app factory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from services.common.logging import configure_logging
from services.common.ops import ops_router
from services.common.redis_client import redis_from_settings
from services.common.settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    configure_logging(settings.node_id, "ai_worker", settings.log_level)
    registry = CollectorRegistry()
    state: dict[str, object] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            redis = redis_from_settings(settings)
            stack.push_async_callback(redis.aclose)
            state["redis"] = redis
            yield

    app = FastAPI(lifespan=lifespan, title="ai_worker")
    app.include_router(
        ops_router(
            service="ai_worker",
            node_id=settings.node_id,
            redis=lambda: state["redis"],  # type: ignore[return-value,arg-type]
            registry=registry,
            ready=lambda: None,
        )
    )
    return app
