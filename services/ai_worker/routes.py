"""`POST /v1/generate`: start (or join) a message's generation and report on it.

The response is the NDJSON of `services.common.generate`; the generation itself
runs in a task the worker owns, so it outlives this request.
"""

from __future__ import annotations

import asyncio
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

#: Seconds between heartbeat lines on an open generate call with nothing new to say.
HEARTBEAT_S = 1.0


def generate_router() -> APIRouter:
    router = APIRouter()

    @router.post(GENERATE_PATH, response_model=None)
    async def generate(request: Request, body: GenerateRequest) -> StreamingResponse | JSONResponse:
        worker: Worker = request.state.worker
        if worker.draining:
            draining = GenerateEvent(event=EventKind.DRAINING)
            return JSONResponse(draining.model_dump(mode="json"), status_code=503)
        gen = worker.start(body.message_id)
        return StreamingResponse(progress_lines(gen), media_type="application/x-ndjson")

    return router


async def progress_lines(gen: Generation) -> AsyncIterator[bytes]:
    """`progress` lines with the last seq written, heartbeats, then the outcome."""
    progress = gen.progress
    changed = progress.listen()
    sent_seq = -1
    try:
        while True:
            changed.clear()
            if progress.last_seq != sent_seq:
                sent_seq = progress.last_seq
                yield progress_line(sent_seq)
            if progress.outcome is not None:
                yield outcome_line(progress.outcome, progress.last_seq, progress.detail)
                return
            try:
                async with asyncio.timeout(HEARTBEAT_S):
                    await changed.wait()
            except TimeoutError:
                yield heartbeat_line()
    finally:
        progress.unlisten(changed)
