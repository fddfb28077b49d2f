"""Running a service's app factory under uvicorn: `python -m services.<svc> --port N`."""

from __future__ import annotations

import argparse

import uvicorn

from services.common.settings import Settings


def serve(factory: str, default_port: int) -> None:
    """Run `factory` (a `module:function` returning the app) with uvloop and httptools.

    Per-message deflate is off: it costs about 300 KiB per socket.
    """
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=default_port)
    args = parser.parse_args()
    settings = Settings()
    uvicorn.run(
        factory,
        factory=True,
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        ws="websockets-sansio",
        ws_per_message_deflate=False,
        ws_max_size=settings.max_frame_bytes,
        ws_ping_interval=20.0,
        ws_ping_timeout=20.0,
        timeout_graceful_shutdown=int(settings.shutdown_timeout),
        timeout_keep_alive=75,
        backlog=4096,
        log_config=None,
        access_log=False,
        proxy_headers=True,
        forwarded_allow_ips="127.0.0.1",
    )
