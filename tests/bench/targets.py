"""What `make bench` measures, and what every piece of it agrees on.

A *target* is a running system the load generator drives: ours (the cluster), the
bare ceiling (one uvicorn process generating answers in-process) or the socket.io
peer (python-socketio behind nginx with a Redis manager and worker processes). The
load generator (loadgen.py) speaks each target's protocol and reports, per answer,
client-side timings; the orchestrator (__main__.py) samples the target's processes
(CPU, RSS) by kind and writes the report (report.py).

Every target generates the same simulated answers (services.ai_worker.providers.
simulated.SimulatedProvider, batched by services.ai_worker.batcher), set by a
`ModelShape`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: The wire protocols the load generator speaks.
CHAT_V1 = "chat-v1"
"""docs/protocol.md: `?session_id=&user_id=&token=dev-token`, then welcome, chat, ack,
chunk..., done (JSON text frames)."""
SOCKETIO = "socketio"
"""Engine.IO v4 over a raw WebSocket (`/socket.io/?EIO=4&transport=websocket`):
open `0{...}`, connect `40`, events `42["name", {...}]`, ping `2` / pong `3`. The
client emits `chat` {text, client_msg_id}; the server emits `ack` {client_msg_id,
message_id}, `chunk` {message_id, seq, delta, t} and `done` {message_id, last_seq,
finish_reason, usage}."""
DURABLE_STREAMS = "durable-streams"
"""The Durable Streams HTTP protocol (tests/bench/http_streams.py): PUT create, POST
append, GET `offset=&live=sse` at `{url}/{path}`, `Authorization: Bearer {token}`."""


@dataclass(frozen=True)
class ModelShape:
    """The simulated model every target runs (as SIM_* / BATCH_* settings)."""

    tokens_per_second: float = 40.0
    """0: full speed."""
    min_tokens: int = 200
    max_tokens: int = 200
    batch_flush_ms: float = 25.0
    batch_max_tokens: int = 16

    @property
    def ideal_duration(self) -> float:
        """Seconds a paced answer takes at the model's own pace (0 at full speed)."""
        if self.tokens_per_second <= 0:
            return 0.0
        return (self.max_tokens - 1) / self.tokens_per_second

    def env(self) -> dict[str, str]:
        """The settings (services.common.settings) that give this shape."""
        return {
            "SIM_TOKENS_PER_SECOND": str(self.tokens_per_second),
            "SIM_MIN_TOKENS": str(self.min_tokens),
            "SIM_MAX_TOKENS": str(self.max_tokens),
            "BATCH_FLUSH_MS": str(self.batch_flush_ms),
            "BATCH_MAX_TOKENS": str(self.batch_max_tokens),
        }


PACED = ModelShape()
"""200-token answers at 40 tokens/s, 25 ms / 16-token batching."""
FULL_SPEED = ModelShape(tokens_per_second=0.0, min_tokens=1000, max_tokens=1000, batch_max_tokens=1)
"""1,000 one-token chunks as fast as they go."""


@dataclass(frozen=True)
class Target:
    """A running system to drive. Picklable: it goes to the load generator processes."""

    name: str
    """"ours", "bare", "socketio" or "reference" (the Durable Streams reference server)."""
    protocol: str
    """CHAT_V1, SOCKETIO or DURABLE_STREAMS."""
    url: str
    """CHAT_V1: ws://127.0.0.1:PORT/ws/chat (the load generator adds the query);
    SOCKETIO: ws://127.0.0.1:PORT/socket.io/?EIO=4&transport=websocket;
    DURABLE_STREAMS: the streams' base, http://127.0.0.1:PORT/streams (or the root)."""
    pids: dict[str, list[int]] = field(default_factory=dict)
    """Process kind ("gateway", "worker", "nginx", "redis", "server", ...) -> pids, for
    CPU and RSS. Includes every process that serves the target, children too."""
    token: str | None = None
    """DURABLE_STREAMS: the bearer token sent with every request (None: none)."""


def source_ip(n: int, first_octet: int = 10) -> str:
    """Client n's own loopback address, on a /24 of its own (nginx limits per address)."""
    return f"127.{first_octet + n // 250}.{n % 250 + 1}.1"
