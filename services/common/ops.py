"""`/health`, `/ready` and `/metrics`, the same for every service."""

from __future__ import annotations

import os
from collections.abc import Callable

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from redis.asyncio import Redis
from redis.exceptions import RedisError


def ops_router(
    *,
    service: str,
    node_id: str,
    redis: Callable[[], Redis],
    registry: CollectorRegistry,
    ready: Callable[[], str | None],
) -> APIRouter:
    """`ready()` returns None when the node takes traffic, else the reason it does not."""
    router = APIRouter()
    pid = os.getpid()

    async def _redis_problem() -> str | None:
        try:
            await redis().ping()
        except (RedisError, OSError) as exc:
            return f"redis unreachable: {exc}"
        return None

    @router.get("/health")
    async def health() -> JSONResponse:
        body: dict[str, object] = {"service": service, "node_id": node_id, "pid": pid}
        problem = await _redis_problem()
        if problem:
            return JSONResponse({"status": "error", "reason": problem, **body}, status_code=503)
        return JSONResponse({"status": "ok", **body})

    @router.get("/ready")
    async def ready_route() -> JSONResponse:
        problem = ready() or await _redis_problem()
        if problem:
            return JSONResponse(
                {"status": "not_ready", "reason": problem, "node_id": node_id}, status_code=503
            )
        return JSONResponse({"status": "ready", "node_id": node_id})

    @router.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return router
