"""Run a baseline's ASGI app under uvicorn the way services/common/serve.py runs ours.

Same loop, parsers, WebSocket implementation, socket options and pings, so that the
comparison measures the architecture, not a different server setup.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import uvicorn

from services.common.serve import listening_socket
from services.common.settings import Settings


def run_app(app: Callable[..., Any], host: str, port: int) -> None:
    """Serve `app` on host:port until SIGTERM/SIGINT; errors go to stderr."""
    defaults = Settings.model_fields
    config = uvicorn.Config(
        app,
        loop="uvloop",
        http="httptools",
        ws="websockets-sansio",
        # It costs about 300 KiB per socket (see serve.py).
        ws_per_message_deflate=False,
        ws_max_size=defaults["max_frame_bytes"].default,
        ws_ping_interval=20.0,
        ws_ping_timeout=20.0,
        # Bounded so that stopping a baseline mid-stream never waits long.
        timeout_graceful_shutdown=5,
        timeout_keep_alive=75,
        backlog=4096,
        log_level="warning",
        access_log=False,
    )
    sock = listening_socket(host, port, defaults["socket_send_buffer_bytes"].default)
    uvicorn.Server(config).run(sockets=[sock])
