"""The two bench baselines come up, stream every chunk exactly once, and stop cleanly.

Each test starts a real baseline (one uvicorn process; or redis-server, three
python-socketio servers, three workers and nginx), drives three clients at once over
raw WebSockets, the way the load generator speaks CHAT_V1 and Engine.IO v4, and
checks that stopping leaves no process running.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from nginx.render import find_nginx
from services.ai_worker.providers.simulated import answer_tokens
from tests.bench.baselines.launch import Baseline, start_bare, start_socketio
from tests.bench.baselines.model import ModelConfig
from tests.bench.baselines.procs import running
from tests.bench.targets import CHAT_V1, SOCKETIO, ModelShape, source_ip

pytestmark = pytest.mark.integration

SHAPE = ModelShape(tokens_per_second=0, min_tokens=30, max_tokens=30, batch_max_tokens=4)
CLIENTS = 3
SEED = 0
"""SIM_SEED is not part of a ModelShape: the baselines run the services' default."""
ANSWER_TIMEOUT = 10.0

Frame = dict[str, Any]


@pytest.fixture
def bare(tmp_path: Path) -> Iterator[Baseline]:
    with start_bare(SHAPE, tmp_path) as baseline:
        yield baseline


@pytest.fixture
def socketio_peer(tmp_path: Path) -> Iterator[Baseline]:
    if find_nginx() is None or shutil.which("redis-server") is None:
        pytest.skip("the socket.io peer needs nginx and redis-server (apt-get install them)")
    with start_socketio(SHAPE, tmp_path, servers=3, workers=3) as baseline:
        yield baseline


def prompt(n: int) -> str:
    return f"Question {n} about streaming answers through sockets"


async def chat_v1(url: str, n: int) -> list[Frame]:
    """Client n: welcome, one chat, and every frame up to its done."""
    query = f"?session_id=bench-{n}&user_id=u{n}&token=dev-token"
    async with connect(url + query, local_addr=(source_ip(n), 0)) as ws:
        welcome = json.loads(await ws.recv())
        assert welcome["type"] == "welcome" and welcome["node_id"] == "bare"
        await ws.send(json.dumps({"type": "chat", "text": prompt(n), "client_msg_id": f"c{n}"}))
        frames: list[Frame] = []
        while not frames or frames[-1]["type"] != "done":
            frames.append(json.loads(await ws.recv()))
        await ws.send(json.dumps({"type": "ping", "ts": n}))
        assert json.loads(await ws.recv()) == {"type": "pong", "ts": n}
    return frames


async def _engineio_recv(ws: ClientConnection) -> str:
    """The next packet that is not an Engine.IO ping (which is answered)."""
    while True:
        packet = await ws.recv()
        assert isinstance(packet, str), "the baseline sends text packets only"
        if packet == "2":
            await ws.send("3")
            continue
        return packet


async def chat_socketio(url: str, n: int) -> list[Frame]:
    """Client n over raw Engine.IO v4: open, connect, emit chat, events up to done,
    each as a frame {"type": event, **data} so both protocols are checked alike."""
    async with connect(url, local_addr=(source_ip(n), 0)) as ws:
        opened = await _engineio_recv(ws)
        assert opened.startswith("0") and "sid" in json.loads(opened[1:])
        await ws.send("40")
        assert (await _engineio_recv(ws)).startswith("40")
        await ws.send("42" + json.dumps(["chat", {"text": prompt(n), "client_msg_id": f"c{n}"}]))
        frames: list[Frame] = []
        while not frames or frames[-1]["type"] != "done":
            packet = await _engineio_recv(ws)
            assert packet.startswith("42"), packet
            event, data = json.loads(packet[2:])
            frames.append({"type": event, **data})
    return frames


def check_answer(frames: list[Frame], n: int) -> None:
    """ack, chunks with seq 1..N exactly once that join to the whole answer, done at N."""
    ack, *chunks, done = frames
    assert ack["type"] == "ack" and ack["client_msg_id"] == f"c{n}"
    message_id = ack["message_id"]
    assert message_id.startswith("m_")
    assert all(c["type"] == "chunk" and c["message_id"] == message_id for c in chunks)
    assert [c["seq"] for c in chunks] == list(range(1, len(chunks) + 1))
    tokens = answer_tokens(prompt(n), SEED, SHAPE.min_tokens, SHAPE.max_tokens)
    assert "".join(c["delta"] for c in chunks) == "".join(tokens)
    assert done["type"] == "done" and done["message_id"] == message_id
    assert done["last_seq"] == len(chunks) > 0
    assert done["finish_reason"] == "stop"
    assert done["usage"]["completion_tokens"] == len(tokens)


def check_stopped(baseline: Baseline) -> None:
    pids = [pid for kind in baseline.target.pids.values() for pid in kind]
    baseline.stop()
    assert [pid for pid in pids if running(pid)] == []


def test_model_config_reads_the_shape() -> None:
    config = ModelConfig.from_env(SHAPE.env())
    assert (config.tokens_per_second, config.min_tokens, config.max_tokens) == (0.0, 30, 30)
    assert (config.flush_ms, config.max_batch, config.seed) == (25.0, 4, SEED)


async def test_bare_streams_each_chunk_once(bare: Baseline) -> None:
    target = bare.target
    assert (target.name, target.protocol) == ("bare", CHAT_V1)
    assert list(target.pids) == ["server"] and len(target.pids["server"]) == 1
    async with asyncio.timeout(ANSWER_TIMEOUT):
        answers = await asyncio.gather(*(chat_v1(target.url, n) for n in range(CLIENTS)))
    for n, frames in enumerate(answers):
        check_answer(frames, n)
    check_stopped(bare)


async def test_socketio_peer_streams_each_chunk_once(socketio_peer: Baseline) -> None:
    target = socketio_peer.target
    assert (target.name, target.protocol) == ("socketio", SOCKETIO)
    pids = target.pids
    assert (len(pids["redis"]), len(pids["server"]), len(pids["worker"])) == (1, 3, 3)
    assert len(pids["nginx"]) >= 2, "the nginx master and at least one worker"
    async with asyncio.timeout(ANSWER_TIMEOUT):
        answers = await asyncio.gather(*(chat_socketio(target.url, n) for n in range(CLIENTS)))
    for n, frames in enumerate(answers):
        check_answer(frames, n)
    check_stopped(socketio_peer)
