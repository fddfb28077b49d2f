"""The bare ceiling: one uvicorn process answering chats in-process.

`python -m tests.bench.baselines.bare --port N` (model shape from SIM_* / BATCH_*).
It speaks the CHAT_V1 subset the load generator uses (welcome, chat -> ack, chunk...,
done; ping -> pong) as a raw ASGI app with stdlib json: no framework, no validation
models, no Redis, no nginx. Whatever it reaches is the most one Python process can
stream with this model, the yardstick for our gateways.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import uuid
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

from tests.bench.baselines.model import ModelConfig, SimulatedAnswers
from tests.bench.baselines.serving import run_app

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

CHAT_PATH = "/ws/chat"
HEALTH_PATH = "/health"
NODE_ID = "bare"

_dumps = json.JSONEncoder(separators=(",", ":")).encode
"""Compact JSON; one shared encoder skips json.dumps' per-call argument handling."""


def create_app(answers: SimulatedAnswers) -> App:
    """The ASGI app: WebSocket chat on /ws/chat, `GET /health` for readiness."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "websocket":
            if scope["path"] == CHAT_PATH:
                await _session(scope, receive, send, answers)
            else:
                await send({"type": "websocket.close", "code": 1008})
        elif kind == "http":
            status, body = (200, b"ok\n") if scope["path"] == HEALTH_PATH else (404, b"")
            await send({"type": "http.response.start", "status": status, "headers": []})
            await send({"type": "http.response.body", "body": body})
        elif kind == "lifespan":
            await _lifespan(receive, send)

    return app


async def _lifespan(receive: Receive, send: Send) -> None:
    """Nothing to open or close; answer so uvicorn does not log a lifespan failure."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _session(scope: Scope, receive: Receive, send: Send, answers: SimulatedAnswers) -> None:
    """One connection: welcome, then frames until the client goes; its answers stop with it."""
    if (await receive())["type"] != "websocket.connect":
        return
    query = parse_qs(scope["query_string"].decode("latin-1"))

    async def send_frame(frame: dict[str, Any]) -> None:
        await send({"type": "websocket.send", "text": _dumps(frame)})

    await send({"type": "websocket.accept"})
    await send_frame(
        {
            "type": "welcome",
            "protocol": 1,
            "session_id": query.get("session_id", [""])[0],
            "user_id": query.get("user_id", [""])[0],
            "node_id": NODE_ID,
            "server_time": datetime.now(UTC).isoformat(),
            "streams": [],
        }
    )
    running: set[asyncio.Task[None]] = set()
    try:
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            frame = _parse(message.get("text"))
            kind = frame.get("type") if frame is not None else None
            if frame is not None and kind == "chat" and _valid_chat(frame):
                task = asyncio.create_task(
                    _answer(send_frame, answers, frame["text"], frame.get("client_msg_id"))
                )
                running.add(task)
                task.add_done_callback(running.discard)
            elif frame is not None and kind == "ping":
                await send_frame({"type": "pong", "ts": frame.get("ts")})
            else:
                await send_frame(
                    {"type": "error", "code": "bad_request", "message": "unsupported frame"}
                )
    finally:
        # The answers belong to this connection: a gone client's are not finished.
        for task in running:
            task.cancel()
        if running:
            await asyncio.wait(running)


def _parse(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        frame = json.loads(text)
    except ValueError:
        return None
    return frame if isinstance(frame, dict) else None


def _valid_chat(frame: dict[str, Any]) -> bool:
    text, client_msg_id = frame.get("text"), frame.get("client_msg_id")
    return (
        isinstance(text, str)
        and text != ""
        and (client_msg_id is None or isinstance(client_msg_id, str))
    )


async def _answer(
    send_frame: Callable[[dict[str, Any]], Awaitable[None]],
    answers: SimulatedAnswers,
    prompt: str,
    client_msg_id: str | None,
) -> None:
    """ack, then each chunk as the batcher flushes it, then done."""
    message_id = f"m_{uuid.uuid4().hex}"
    try:
        await send_frame({"type": "ack", "client_msg_id": client_msg_id, "message_id": message_id})
        seq = 0
        async with aclosing(answers.stream(prompt, message_id)) as events:
            async for event in events:
                if isinstance(event, str):
                    seq += 1
                    await send_frame(
                        {"type": "chunk", "message_id": message_id, "seq": seq, "delta": event}
                    )
                    continue
                await send_frame(
                    {
                        "type": "done",
                        "message_id": message_id,
                        "last_seq": seq,
                        "finish_reason": event.reason.value,
                        "usage": {
                            "prompt_tokens": event.prompt_tokens,
                            "completion_tokens": event.completion_tokens,
                        },
                    }
                )
    except OSError:
        return  # the client went away mid-answer (uvicorn's ClientDisconnected)


def main() -> None:
    """`python -m tests.bench.baselines.bare [--host H] --port N`."""
    parser = argparse.ArgumentParser(description="The bare ceiling baseline.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    answers = SimulatedAnswers(ModelConfig.from_env(os.environ))
    run_app(create_app(answers), args.host, args.port)


if __name__ == "__main__":
    main()
