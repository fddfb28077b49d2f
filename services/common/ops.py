"""`/health`, `/ready` and `/metrics`, the same for every service.

The lifespan of each service yields a `NodeHealth` as `health` in the app state;
`/health` says whether the process can reach its storage, `/ready` whether it
should take traffic (storage reachable, every background loop running, not
shutting down).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from redis.asyncio import Redis
from redis.exceptions import RedisError


class NodeHealth:
    """What `/health` and `/ready` ask: Redis, then each readiness check in turn.

    A check returns None when all is well, else the reason the node is not ready.
    """

    def __init__(self, redis: Redis, checks: Sequence[Callable[[], str | None]] = ()) -> None:
        self._redis = redis
        self._checks = list(checks)

    async def storage_problem(self) -> str | None:
        try:
            await self._redis.ping()
        except (RedisError, OSError) as exc:
            return f"redis unreachable: {exc}"
        return None

    async def ready_problem(self) -> str | None:
        for check in self._checks:
            if problem := check():
                return problem
        return await self.storage_problem()


def ops_router(*, service: str, node_id: str, registry: CollectorRegistry) -> APIRouter:
    router = APIRouter()
    pid = os.getpid()

    @router.get("/health")
    async def health(request: Request) -> JSONResponse:
        body: dict[str, object] = {"service": service, "node_id": node_id, "pid": pid}
        node: NodeHealth = request.state.health
        problem = await node.storage_problem()
        if problem:
            return JSONResponse({"status": "error", "reason": problem, **body}, status_code=503)
        return JSONResponse({"status": "ok", **body})

    @router.get("/ready")
    async def ready(request: Request) -> JSONResponse:
        node: NodeHealth = request.state.health
        problem = await node.ready_problem()
        if problem:
            return JSONResponse(
                {"status": "not_ready", "reason": problem, "node_id": node_id}, status_code=503
            )
        return JSONResponse({"status": "ready", "node_id": node_id})

    @router.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return router
