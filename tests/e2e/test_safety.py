"""Safe by default, through the real cluster (issue 7): no token in any file under the
run dir, logs 0640, public listeners on loopback, no test files on :3000, and a
deploy without JWT_SECRET generates one that `python -m deploy token` signs with."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
import stat
import subprocess
import sys
import time
import uuid
import warnings
from pathlib import Path

import httpx
import jwt
import pytest
import websockets
from websockets import Subprotocol
from websockets.asyncio.client import connect

from deploy.cluster import Cluster
from deploy.spec import ClusterSpec
from tests.conftest import ClusterHandle, wait_for

pytestmark = pytest.mark.e2e


def _session() -> str:
    return f"s-{uuid.uuid4().hex[:12]}"


def _source_address() -> str:
    """A loopback address of its own, so this test's access-log lines are findable."""
    a, b, c = secrets.randbelow(200) + 30, secrets.randbelow(250) + 1, secrets.randbelow(250) + 2
    return f"127.{a}.{b}.{c}"


def _token(secret: str, user: str) -> str:
    return jwt.encode({"sub": user, "exp": int(time.time()) + 600}, secret, algorithm="HS256")


async def _welcome(url: str, **kwargs: object) -> dict[str, object]:
    async with connect(url, open_timeout=10, **kwargs) as ws:  # type: ignore[arg-type]
        frame: dict[str, object] = json.loads(await ws.recv(decode=True))
    assert frame["type"] == "welcome", frame
    return frame


def _files_containing(run_dir: Path, needles: list[str]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for path in run_dir.rglob("*"):
        if not path.is_file():
            continue
        data = path.read_bytes()
        hits = [n for n in needles if n.encode() in data]
        if hits:
            found[str(path.relative_to(run_dir))] = hits
    return found


async def test_no_token_in_any_file_of_the_run_dir(cluster: ClusterHandle) -> None:
    # Every gateway up: nginx's error log quotes the request line (query included)
    # when an upstream fails, and a node restarted by an earlier test may still start.
    for name in cluster.gateway_names:
        cluster.wait_healthy(name)
    source = _source_address()
    user = f"logcheck{uuid.uuid4().hex[:6]}"
    in_query = _token(cluster.jwt_secret, user)
    in_protocol = _token(cluster.jwt_secret, user + "x")
    bad = "SECRET" + uuid.uuid4().hex  # not a JWT: refused, and logged as refused

    # wscat style: the token in the query string.
    frame = await _welcome(cluster.ws_url(_session(), token=in_query), local_addr=(source, 0))
    assert frame["user_id"] == user
    # A refused token.
    with pytest.raises(websockets.ConnectionClosed) as closed:
        async with connect(
            cluster.ws_url(_session(), token=bad), open_timeout=10, local_addr=(source, 0)
        ) as ws:
            await ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
    # The browser app's way: the bearer subprotocol, nothing in the URL.
    frame = await _welcome(
        cluster.ws_url(_session(), token=None),
        subprotocols=[Subprotocol("bearer"), Subprotocol(in_protocol)],
        local_addr=(source, 0),
    )
    assert frame["user_id"] == user + "x"

    # Past the per-address handshake limit nginx refuses (429) and writes an error
    # line quoting the request line, query string and token included, unless the
    # public server keeps such lines out of its error log.
    stormer = _source_address()
    url = cluster.ws_url(_session(), token=in_query).replace("ws://", "http://")
    transport = httpx.AsyncHTTPTransport(local_address=stormer)
    async with httpx.AsyncClient(transport=transport, timeout=10) as http:
        statuses = [(await http.get(url)).status_code for _ in range(150)]
    assert 429 in statuses, "the storm did not reach the limit"

    access_log = cluster.run_dir / "logs" / "nginx-access.log"

    def our_lines() -> list[str]:
        lines = access_log.read_text(errors="replace").splitlines()
        ours = [ln for ln in lines if ln.startswith(source + " ") and "/ws/chat" in ln]
        return ours if len(ours) == 3 else []

    # nginx writes a WebSocket's line when the connection ends.
    lines = wait_for(our_lines, 15, "the three handshakes in nginx's access log")
    assert _files_containing(cluster.run_dir, [in_query, in_protocol, bad]) == {}
    assert all('"GET /ws/chat HTTP/1.1"' in line for line in lines), lines


def test_log_and_secret_files_are_not_world_readable(cluster: ClusterHandle) -> None:
    logs = cluster.run_dir / "logs"
    names = {p.name for p in logs.iterdir() if p.is_file()}
    expected = {"supervisord.log", "nginx-access.log", "nginx-error.log", "redis.log"}
    expected |= {f"{n}.log" for n in ["kafka", "nginx", *cluster.gateway_names]}
    assert expected <= names, names
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in logs.iterdir() if p.is_file()}
    assert {name: oct(mode) for name, mode in modes.items() if mode != 0o640} == {}
    for private in ("supervisord.conf", "cluster.json"):  # they hold JWT_SECRET
        assert stat.S_IMODE((cluster.run_dir / private).stat().st_mode) == 0o600, private
    for path in (cluster.run_dir / "redis").rglob("*"):
        assert not stat.S_IMODE(path.stat().st_mode) & 0o007, f"{path} is world-accessible"


def test_public_listeners_are_loopback_only(cluster: ClusterHandle) -> None:
    spec = cluster.spec
    for port in (spec.public_port, spec.status_port, spec.frontend_port):
        assert httpx.get(f"http://127.0.0.1:{port}/", timeout=5).status_code in (200, 404)
        with pytest.raises(OSError), socket.create_connection(("127.0.0.2", port), timeout=2):
            pass


def test_frontend_serves_no_source_package_or_test(cluster: ClusterHandle) -> None:
    for path in (
        "/src/core/client.ts",
        "/src/core/client.test.ts",
        "/package.json",
        "/package-lock.json",
        "/node_modules/react/package.json",
        "/.gitignore",
    ):
        assert httpx.get(f"{cluster.frontend_url}{path}", timeout=5).status_code == 404, path


async def test_deploy_generates_its_secret_and_mints_tokens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`make deploy` with no JWT_SECRET anywhere: a random one in run/jwt_secret (0600),
    the nodes use it, `python -m deploy token USER` signs with it, and `dev-token`
    (the README's wscat line) still works on loopback."""
    monkeypatch.delenv("JWT_SECRET", raising=False)
    monkeypatch.setattr("deploy.tokens.CHECKOUT", tmp_path)  # no checkout .env either
    run_dir = tmp_path / "run"
    spec = ClusterSpec.on_free_ports(run_dir, 1, 1)
    lines: list[str] = []
    cluster = Cluster(spec, out=lines.append)
    try:
        cluster.up()
        secret_file = run_dir / "jwt_secret"
        assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
        secret = secret_file.read_text().strip()
        assert len(secret) == 64 and int(secret, 16) >= 0
        printed = "\n".join(lines)
        assert "-m deploy token USER" in printed and str(secret_file) in printed
        assert secret not in printed

        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "deploy", "token", "alice", "--ttl", "120"],
            env={**os.environ, "RUN_DIR": str(run_dir)},
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        minted = done.stdout.strip()
        assert jwt.decode(minted, secret, algorithms=["HS256"])["sub"] == "alice"
        base = f"ws://127.0.0.1:{spec.public_port}/ws/chat"
        frame = await _welcome(
            f"{base}?session_id={_session()}",
            subprotocols=[Subprotocol("bearer"), Subprotocol(minted)],
        )
        assert frame["user_id"] == "alice"
        # The README's wscat line: dev-token, on localhost.
        base = f"ws://localhost:{spec.public_port}/ws/chat"
        frame = await _welcome(
            f"{base}?session_id=test-{uuid.uuid4().hex[:6]}&user_id=test&token=dev-token"
        )
        assert frame["user_id"] == "test"
        # A token signed with the old placeholder is worthless.
        with warnings.catch_warnings():  # PyJWT warns about the short key, rightly
            warnings.simplefilter("ignore", jwt.warnings.InsecureKeyLengthWarning)
            forged = _token("change-me-in-production", "alice")
        with pytest.raises(websockets.ConnectionClosed) as closed:
            async with connect(f"{base}?session_id={_session()}&token={forged}") as ws:
                await ws.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
    finally:
        report = cluster.stop()
    assert report.clean, report
