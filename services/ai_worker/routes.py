"""`POST /v1/generate`: start (or join) a message's generation and report on it.

The response is the NDJSON of `services.common.generate`; the generation itself
runs in a task the worker owns, so it outlives this request.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from services.ai_worker.generation import Generation
from services.ai_worker.node import Worker
from services.common.generate import (
    GENERATE_PATH,
    EventKind,
    GenerateEvent,
    GenerateRequest,
    heartbeat_line,
    outcome_line,
    progress_line,
)

#: Seconds between the lines of an open generate call (progress or heartbeat).
HEARTBEAT_S = 1.0


def generate_router() -> APIRouter:
    router = APIRouter()

    @router.post(GENERATE_PATH, response_model=None)
    async def generate(request: Request, body: GenerateRequest) -> StreamingResponse | JSONResponse:
        worker: Worker = request.state.worker
        if worker.draining:
            draining = GenerateEvent(event=EventKind.DRAINING)
            return JSONResponse(draining.model_dump(mode="json"), status_code=503)
        refusal = worker.refusal(body.message_id, body.new)
        if refusal is not None:
            busy = GenerateEvent(event=EventKind.BUSY, detail=refusal.reason)
            return JSONResponse(
                busy.model_dump(mode="json"),
                status_code=429,
                headers={"Retry-After": str(max(1, round(refusal.retry_after)))},
            )
        gen = worker.start(body.message_id)
        return StreamingResponse(progress_lines(gen), media_type="application/x-ndjson")

    return router


async def progress_lines(gen: Generation) -> AsyncIterator[bytes]:
    """A line every HEARTBEAT_S: `progress` with the last seq written when it moved,
    else a heartbeat; then the outcome as soon as it is known. Never a line per chunk:
    the gateway needs to know the answer moves, not each chunk (those go through Redis),
    and a line per chunk cost the worker a third of its CPU at full speed."""
    progress = gen.progress
    ended = progress.listen()
    sent_seq = -1
    try:
        while True:
            if progress.outcome is not None:
                yield outcome_line(progress.outcome, progress.last_seq, progress.detail)
                return
            if progress.last_seq != sent_seq:
                sent_seq = progress.last_seq
                yield progress_line(sent_seq)
            else:
                yield heartbeat_line()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(HEARTBEAT_S):
                    await ended.wait()
    finally:
        progress.unlisten(ended)
