"""The usage service's app factory: the lifespan opens Redis, runs the consumer loop
under a TaskSupervisor, and the routes read the totals.

`GET /usage/{user_id}` answers `{"prompt_tokens", "completion_tokens", "answers"}`
(zeros for a user never counted; 503 while Redis is unreachable). The API has no
authentication: it is for other services on the internal network, never published.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial

from fastapi import FastAPI, HTTPException, Request

from services.common.errors import StorageError
from services.common.metrics import node_registry
from services.common.ops import NodeHealth, ops_router
from services.common.redis_client import redis_from_settings
from services.common.tasks import TaskSupervisor
from services.usage.accounting import UsageTotals
from services.usage.consumer import UsageConsumer, build_consumer
from services.usage.keys import UsageKeys
from services.usage.settings import UsageSettings
from services.usage.store import UsageStore


def create_app(settings: UsageSettings) -> FastAPI:
    registry = node_registry()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, object]]:
        async with AsyncExitStack() as stack:
            redis = redis_from_settings(settings.redis_settings())
            stack.push_async_callback(redis.aclose)
            store = UsageStore(
                redis, UsageKeys(settings.redis_key_prefix), seen_ttl_s=settings.seen_ttl_s
            )
            consumer = UsageConsumer(
                store,
                partial(build_consumer, settings),
                registry,
                batch_max=settings.batch_max,
            )
            loops = TaskSupervisor()
            stack.push_async_callback(loops.close)
            loops.start("usage-consumer", consumer.run)
            yield {"store": store, "health": NodeHealth(redis, [loops.problem])}

    app = FastAPI(lifespan=lifespan, title="usage")
    app.include_router(ops_router(service="usage", node_id=settings.node_id, registry=registry))

    @app.get("/usage/{user_id}")
    async def usage(user_id: str, request: Request) -> UsageTotals:
        store: UsageStore = request.state.store
        try:
            return await store.totals(user_id)
        except StorageError as exc:
            raise HTTPException(503, "redis unreachable") from exc

    return app
