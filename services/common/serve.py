"""Running a service's app factory under uvicorn: `python -m services.<svc> --port N`."""

from __future__ import annotations

import argparse
import socket
import sys
from types import FrameType

import uvicorn

from services.common.safety import install_log_redaction, startup_problems
from services.common.settings import Settings
from services.common.tasks import begin_drain


def listening_socket(host: str, port: int, send_buffer: int) -> socket.socket:
    """A bound socket whose accepted connections inherit SO_SNDBUF (Linux does)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if send_buffer > 0:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def refuse_unsafe(settings: Settings, host: str) -> None:
    """Exit (status 2, one line per reason on stderr) before listening if unsafe."""
    problems = startup_problems(settings, host)
    if problems:
        for problem in problems:
            print(f"refusing to start: {problem}", file=sys.stderr)  # noqa: T201
        raise SystemExit(2)


def serve(factory: str, default_port: int) -> None:
    """Run `factory` (a `module:function` returning the app) with uvloop and httptools.

    Per-message deflate is off: it costs about 300 KiB per socket.
    """
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=default_port)
    args = parser.parse_args()
    settings = Settings()
    refuse_unsafe(settings, args.host)
    # uvicorn's access log stays off; its handshake lines on uvicorn.error carry the
    # query string, so tokens in it are redacted.
    install_log_redaction()
    config = uvicorn.Config(
        factory,
        factory=True,
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
    sock = listening_socket(args.host, args.port, settings.socket_send_buffer_bytes)
    _DrainingServer(config).run(sockets=[sock])


class _DrainingServer(uvicorn.Server):
    """uvicorn's server, which also tells the app's long-lived responses (SSE and
    long-poll reads of durable streams) that the node is shutting down, so they end
    at once and their clients resume elsewhere (`tasks.on_drain`)."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        begin_drain()
        super().handle_exit(sig, frame)
