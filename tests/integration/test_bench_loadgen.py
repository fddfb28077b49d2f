"""The bench load generator (tests/bench/loadgen.py) against two tiny fake targets:
a CHAT_V1 server (websockets, in this test process) and a python-socketio AsyncServer
(uvicorn, in a subprocess). Each fake acks a chat, streams 20 chunks 2 ms apart, then
sends done, so every recorded answer can be checked exactly: complete, exactly once,
timings that add up, and sockets held idle without drops."""

from __future__ import annotations

import asyncio
import json
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from urllib.parse import parse_qs, urlparse

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from tests.bench.loadgen import IdleResult, StreamsResult, hold_idle, run_streams
from tests.bench.targets import CHAT_V1, SOCKETIO, ModelShape, Target, source_ip

pytestmark = pytest.mark.integration

CHUNKS = 20
PACE = 0.002
"""Seconds between the fakes' chunks."""
SHAPE = ModelShape(tokens_per_second=1 / PACE, min_tokens=CHUNKS, max_tokens=CHUNKS)
"""A model whose ideal answer takes as long as the fakes' (19 gaps of PACE)."""
TEXT_LEN = sum(len(f"t{seq} ") for seq in range(1, CHUNKS + 1))


class FakeChatServer:
    """CHAT_V1 as docs/protocol.md has it, minus everything the load generator does not
    use, plus the awkward parts it must cope with: a `pong` before the ack, a refused
    first chat (rate_limited) for every third user, and, for every fourth, the first
    chunk sent before the ack (a race the protocol allows)."""

    def __init__(self) -> None:
        self.remote_ips: set[str] = set()
        self.open = 0
        self.drop_every: int | None = None
        """Close the connections of every user whose number is a multiple of this, 0.3 s
        after the welcome (for hold_idle's drop count)."""
        self.stall_after: int | None = None
        """Stop every answer after this many chunks (a stuck target, for the deadline)."""

    async def handler(self, ws: ServerConnection) -> None:
        self.open += 1
        try:
            await self._serve(ws)
        except ConnectionClosed:
            pass
        finally:
            self.open -= 1

    async def _serve(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        query = parse_qs(urlparse(ws.request.path).query)
        if query.get("token") != ["dev-token"]:
            await ws.close(4401, "bad token")
            return
        session, user = query["session_id"][0], query["user_id"][0]
        n = int(user.removeprefix("b"))
        self.remote_ips.add(ws.remote_address[0])
        welcome = {"type": "welcome", "protocol": 1, "session_id": session, "user_id": user}
        await ws.send(json.dumps({**welcome, "node_id": "fake", "streams": []}))
        if self.drop_every and n % self.drop_every == 0:
            await asyncio.sleep(0.3)
            await ws.close(1011, "dropped by the test")
            return
        refused: set[str] = set()
        async for raw in ws:
            frame = json.loads(raw)
            if frame.get("type") != "chat":
                continue
            cmid = frame["client_msg_id"]
            if n % 3 == 0 and cmid not in refused:
                refused.add(cmid)
                error = {"type": "error", "code": "rate_limited", "message": "slow down"}
                await ws.send(json.dumps({**error, "client_msg_id": cmid, "retry_after": 0.05}))
                continue
            await self._answer(ws, n, cmid)

    async def _answer(self, ws: ServerConnection, n: int, cmid: str) -> None:
        mid = f"m_{cmid}"
        first = 1
        await ws.send(json.dumps({"type": "pong", "ts": None}))
        if n % 4 == 1:
            await ws.send(_chunk(mid, 1))
            first = 2
        await ws.send(json.dumps({"type": "ack", "client_msg_id": cmid, "message_id": mid}))
        for seq in range(first, CHUNKS + 1):
            if self.stall_after is not None and seq > self.stall_after:
                return
            await asyncio.sleep(PACE)
            await ws.send(_chunk(mid, seq))
        usage = {"prompt_tokens": 3, "completion_tokens": CHUNKS}
        done = {"type": "done", "message_id": mid, "last_seq": CHUNKS, "finish_reason": "stop"}
        await ws.send(json.dumps({**done, "usage": usage}))


def _chunk(mid: str, seq: int) -> str:
    return json.dumps({"type": "chunk", "message_id": mid, "seq": seq, "delta": f"t{seq} "})


@pytest.fixture
async def chat_server() -> AsyncIterator[tuple[FakeChatServer, Target]]:
    fake = FakeChatServer()
    async with serve(fake.handler, "127.0.0.1", 0, compression=None, ping_interval=None) as srv:
        port = next(iter(srv.sockets)).getsockname()[1]
        yield fake, Target("fake-chat", CHAT_V1, f"ws://127.0.0.1:{port}/ws/chat")


SOCKETIO_SERVER = f"""
import asyncio, socket
import socketio, uvicorn

sio = socketio.AsyncServer(async_mode="asgi", ping_interval=1, ping_timeout=1)

@sio.on("chat")
async def chat(sid, data):
    cmid = data["client_msg_id"]
    mid = "m_" + cmid
    await sio.emit("ack", {{"client_msg_id": cmid, "message_id": mid}}, to=sid)
    for seq in range(1, {CHUNKS} + 1):
        if seq > 1:
            await asyncio.sleep({PACE})
        chunk = {{"message_id": mid, "seq": seq, "delta": f"t{{seq}} ", "t": 0.0}}
        await sio.emit("chunk", chunk, to=sid)
    usage = {{"prompt_tokens": 3, "completion_tokens": {CHUNKS}}}
    done = {{"message_id": mid, "last_seq": {CHUNKS}, "finish_reason": "stop", "usage": usage}}
    await sio.emit("done", done, to=sid)

sock = socket.socket()
sock.bind(("127.0.0.1", 0))
sock.listen(1024)
print(sock.getsockname()[1], flush=True)
config = uvicorn.Config(
    socketio.ASGIApp(sio), log_level="warning", ws="websockets-sansio", lifespan="off"
)
uvicorn.Server(config).run(sockets=[sock])
"""
"""python-socketio under uvicorn; pings every second and drops a client that does not
answer within another second, so a hold longer than 2 s proves the pongs."""


@pytest.fixture(scope="module")
def socketio_target() -> Iterator[Target]:
    proc = subprocess.Popen(
        [sys.executable, "-c", SOCKETIO_SERVER],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 20.0)
        line = proc.stdout.readline() if ready else ""
        if not line.strip().isdigit():
            pytest.fail(f"the socket.io fake did not start (exit code {proc.poll()})")
        port = int(line)
        _wait_listening(port, 10.0)
        yield Target(
            "fake-socketio", SOCKETIO, f"ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket"
        )
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def _wait_listening(port: int, timeout: float) -> None:
    """uvicorn prints nothing when it serves: wait until a TCP connect succeeds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _assert_complete(r: StreamsResult, streams: int, answers: int) -> None:
    """Every answer complete, exactly once, timings consistent, barrier respected."""
    assert r.crashed == []
    assert (r.connected, r.connect_failures, r.connect_errors) == (streams, 0, {})
    assert r.errors == {}
    assert (r.ok, r.failed, r.not_exactly_once, r.total) == (streams * answers, 0, 0, r.total)
    assert [(a.stream, a.index) for a in r.answers] == [
        (n, i) for n in range(streams) for i in range(answers)
    ]
    for a in r.answers:
        assert (a.chunks, a.last_seq, a.text_len) == (CHUNKS, CHUNKS, TEXT_LEN)
        assert a.exactly_once and a.finish_reason == "stop"
        assert a.usage == {"prompt_tokens": 3, "completion_tokens": CHUNKS}
        assert a.ttfc is not None and a.duration is not None and a.ack is not None
        assert 0 < a.ttfc <= a.duration < 10
        assert len(a.gaps) == CHUNKS - 1 and min(a.gaps) >= 0
        assert sum(a.gaps) <= a.duration
        assert a.duration >= (CHUNKS - 1) * PACE * 0.9  # the fakes sleep PACE per gap
        assert a.sent is not None and a.done_at is not None
        assert 0 < a.done_at - a.sent < 10
    assert r.chunks == streams * answers * CHUNKS
    # The barrier: no chat before every process finished connecting.
    assert len(r.procs) == 2
    connected = [p.connected for p in r.procs]
    assert all(c is not None for c in connected)
    assert min(a.sent for a in r.answers if a.sent) >= max(c for c in connected if c)
    for p in r.procs:
        assert p.connected is not None and p.go is not None and p.end is not None
        assert p.start <= p.connected <= p.go <= p.end
    assert r.chunks_per_second > 0
    assert sum(rate for _, rate in r.throughput(0.1)) > 0
    ttfc, gaps, ratio = r.ttfc(), r.gaps(), r.duration_ratio(SHAPE)
    assert ttfc is not None and gaps is not None and ratio is not None
    assert ttfc.n == streams * answers and gaps.n == streams * answers * (CHUNKS - 1)
    assert ttfc.p50 <= ttfc.p95 <= ttfc.p99 <= ttfc.max
    assert 0.85 < ratio.min and ratio.p50 < 50


async def test_chat_v1_streams_are_complete_and_exactly_once(
    chat_server: tuple[FakeChatServer, Target],
) -> None:
    fake, target = chat_server
    r = await asyncio.to_thread(
        run_streams, target, streams=10, answers_per_stream=2, first_octet=20, timeout=30,
        progress=False,
    )  # fmt: skip
    _assert_complete(r, streams=10, answers=2)
    # Every client came from its own address.
    assert fake.remote_ips == {source_ip(n, 20) for n in range(10)}
    # Users 0, 3, 6, 9 had each chat refused once, then sent it again.
    assert r.refusals == {"rate_limited": 8}
    assert [a.refusals for a in r.answers if a.stream % 3 == 0] == [1] * 8
    assert all(a.refusals == 0 for a in r.answers if a.stream % 3)


async def test_socketio_streams_are_complete_and_exactly_once(socketio_target: Target) -> None:
    r = await asyncio.to_thread(
        run_streams, socketio_target, streams=10, answers_per_stream=2, timeout=30,
        progress=False,
    )  # fmt: skip
    _assert_complete(r, streams=10, answers=2)
    assert r.refusals == {}


async def test_chat_v1_hold_idle_signals_connected_and_stops_early(
    chat_server: tuple[FakeChatServer, Target],
) -> None:
    fake, target = chat_server
    connected, stop = threading.Event(), threading.Event()
    open_when_called: list[int] = []
    held = asyncio.create_task(
        asyncio.to_thread(
            hold_idle, target, connections=50, hold_s=60, progress=False,
            connected=connected, stop=stop,
            on_connected=lambda: open_when_called.append(fake.open),
        )
    )  # fmt: skip
    try:
        assert await asyncio.to_thread(connected.wait, 20)
        assert fake.open == 50
        stopped = time.monotonic()
        stop.set()
        r: IdleResult = await asyncio.wait_for(asyncio.shield(held), 20)
    finally:
        stop.set()
        await held
    assert time.monotonic() - stopped < 10  # the 60 s hold ended on `stop`
    assert open_when_called == [50]
    assert (r.requested, r.connected, r.connect_failures, r.dropped) == (50, 50, 0, 0)
    assert r.open_at_end == 50 and r.crashed == []
    assert r.held_s is not None and r.held_s < 10
    assert r.connect_s is not None and r.connect_s > 0
    assert len(r.connect_times) == 50
    # Closed on the way out.
    deadline = time.monotonic() + 5
    while fake.open and time.monotonic() < deadline:  # noqa: ASYNC110 - the fake's own count
        await asyncio.sleep(0.01)
    assert fake.open == 0


async def test_chat_v1_hold_idle_counts_the_sockets_the_server_dropped(
    chat_server: tuple[FakeChatServer, Target],
) -> None:
    fake, target = chat_server
    fake.drop_every = 10
    r = await asyncio.to_thread(hold_idle, target, connections=50, hold_s=1.0, progress=False)
    assert (r.connected, r.dropped, r.drop_reasons) == (50, 5, {"closed 1011": 5})
    assert r.open_at_end == 45


async def test_socketio_hold_idle_answers_pings(socketio_target: Target) -> None:
    """The server pings every second and drops a client silent for 2 s: holding 3.5 s
    without a drop means every socket answered its pings."""
    r = await asyncio.to_thread(
        hold_idle, socketio_target, connections=50, hold_s=3.5, progress=False
    )
    assert (r.connected, r.connect_failures, r.dropped, r.crashed) == (50, 0, 0, [])
    assert r.held_s is not None and r.held_s >= 3.5


async def test_an_unreachable_target_fails_every_connect_within_the_deadline() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    target = Target("nobody", CHAT_V1, f"ws://127.0.0.1:{port}/ws/chat")
    began = time.monotonic()
    r = await asyncio.to_thread(
        run_streams, target, streams=6, connect_timeout=1.0, timeout=10, progress=False
    )
    assert time.monotonic() - began < 8
    assert (r.connected, r.connect_failures, r.connect_errors) == (0, 6, {"refused": 6})
    assert r.connect_retries > 6  # each client retried with backoff until the deadline
    assert r.failed == 6 and r.errors == {"not connected: refused": 6}
    assert r.window is None and r.chunks_per_second == 0.0


async def test_a_stuck_target_ends_the_run_at_its_deadline(
    chat_server: tuple[FakeChatServer, Target],
) -> None:
    fake, target = chat_server
    fake.stall_after = 2
    began = time.monotonic()
    r = await asyncio.to_thread(
        run_streams, target, streams=4, answers_per_stream=2, timeout=3, progress=False
    )
    assert time.monotonic() - began < 10
    assert r.crashed == [] and r.connected == 4
    # The first answer of each stream timed out with what it had; the second was never sent.
    assert r.errors == {"timeout": 4, "not sent: timeout": 4}
    assert [a.chunks for a in r.answers if a.index == 0] == [2] * 4
    assert all(a.ttfc is not None and a.duration is None for a in r.answers if a.index == 0)
    assert r.chunks == 8 and r.ok == 0


async def test_a_load_process_that_crashes_is_reported_not_waited_for() -> None:
    target = Target("bad", CHAT_V1, "http://127.0.0.1:1/not-a-websocket-url")
    r = await asyncio.to_thread(run_streams, target, streams=2, timeout=10, progress=False)
    assert len(r.crashed) == 2 and all("InvalidURI" in c for c in r.crashed)
    assert (r.total, r.failed, r.errors) == (2, 2, {"load process crashed": 2})
