"""The socket.io peer's server: python-socketio behind nginx, a Redis manager between.

`python -m tests.bench.baselines.sio_server --port N --redis-url URL`. A `chat`
event gets an `ack` and becomes a job on the Redis list `sio:jobs`; a worker
(sio_worker) streams the answer back through the AsyncRedisManager's pub/sub, so
every chunk reaches every server and the one holding the client sends it. That is
python-socketio's documented way to emit from another process, and the cost the
bench compares ours with.
"""

from __future__ import annotations

import argparse
import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import socketio
from redis.asyncio import Redis

from tests.bench.baselines.serving import run_app

JOBS_KEY = "sio:jobs"
"""The Redis list servers LPUSH jobs on and workers BRPOP."""
CHANNEL = "socketio"
"""The manager's pub/sub channel (python-socketio's default), for readiness checks."""
HEALTH_PATH = "/health"

Message = dict[str, Any]


def create_app(redis_url: str) -> socketio.ASGIApp:
    """The ASGI app: Engine.IO on /socket.io/, `GET /health` for readiness."""
    sio = socketio.AsyncServer(
        async_mode="asgi",
        client_manager=socketio.AsyncRedisManager(redis_url, channel=CHANNEL),
        cors_allowed_origins="*",
    )
    jobs = Redis.from_url(redis_url)

    async def chat(sid: str, data: Any) -> None:
        if not isinstance(data, dict) or not isinstance(data.get("text"), str):
            return
        message_id = f"m_{uuid.uuid4().hex}"
        client_msg_id = data.get("client_msg_id")
        # The ack goes out before the job exists, so no chunk can overtake it.
        await sio.emit("ack", {"client_msg_id": client_msg_id, "message_id": message_id}, to=sid)
        job = {"sid": sid, "message_id": message_id, "prompt": data["text"]}
        await jobs.lpush(JOBS_KEY, json.dumps({**job, "client_msg_id": client_msg_id}))

    sio.on("chat", chat)

    async def startup() -> None:
        # python-socketio subscribes to the channel only when the first client
        # connects, so chunks published in the meantime would be lost. Subscribe now,
        # as that first connect would (AsyncServer._handle_eio_connect), so that
        # readiness can wait for the subscription.
        if not sio.manager_initialized:
            sio.manager_initialized = True
            sio.manager.initialize()

    async def shutdown() -> None:
        await jobs.aclose()

    return socketio.ASGIApp(sio, other_asgi_app=_health, on_startup=startup, on_shutdown=shutdown)


async def _health(
    scope: dict[str, Any],
    receive: Callable[[], Awaitable[Message]],
    send: Callable[[Message], Awaitable[None]],
) -> None:
    """200 on /health, 404 elsewhere (what is not /socket.io/ lands here)."""
    if scope["type"] != "http":
        await send({"type": "websocket.close", "code": 1008})
        return
    status, body = (200, b"ok\n") if scope["path"] == HEALTH_PATH else (404, b"")
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": body})


def main() -> None:
    """`python -m tests.bench.baselines.sio_server [--host H] --port N --redis-url URL`."""
    parser = argparse.ArgumentParser(description="The socket.io peer's server.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis-url", required=True)
    args = parser.parse_args()
    run_app(create_app(args.redis_url), args.host, args.port)


if __name__ == "__main__":
    main()
