"""The Durable Streams server of the gateways, checked from outside with the protocol's
own tools (the npm project in tests/durable_streams/): its conformance suite through
nginx, and @durable-streams/client following a chat answer over SSE while the gateway
serving it and then the worker generating it are killed -9."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from tests.chat_client import Answer, ChatClient
from tests.node_probes import generating_worker

pytestmark = pytest.mark.e2e

DS_DIR = Path(__file__).resolve().parents[1] / "durable_streams"

#: Conformance tests allowed to fail, each with the reason: full name as vitest reports it
#: ("describe title ... test title") -> why it fails and why that is acceptable.
KNOWN_FAILURES: dict[str, str] = {}

#: Tests in the pinned suite (@durable-streams/server-conformance-tests 0.3.6).
SUITE_SIZE = 338
#: The whole suite takes ~35 s against the reference server.
SUITE_TIMEOUT_S = 150.0


def mint(cluster: Any, user: str, ttl: int = 3600) -> str:
    """An HS256 token for `user`, signed with the cluster's secret."""
    claims = {"sub": user, "exp": int(time.time()) + ttl}
    return jwt.encode(claims, cluster.jwt_secret, algorithm="HS256")


def node_env(**extra: str) -> dict[str, str]:
    """The environment for node there: no colours in what we parse or show."""
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "DS_TOKEN")}
    return {**env, "NO_COLOR": "1", "CI": "1", **extra}


def run_node(args: list[str], env: dict[str, str], timeout: float) -> tuple[int, str]:
    """Run `args` in DS_DIR in a process group of its own (vitest forks workers), kill
    the whole group at the timeout; return (exit status, stdout and stderr)."""
    proc = subprocess.Popen(
        args,
        cwd=DS_DIR,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"{' '.join(args)} did not finish within {timeout}s:\n{out[-4000:]}")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # whatever it left behind
    return proc.returncode, out


def show(capsys: pytest.CaptureFixture[str], text: str) -> None:
    """Print past pytest's capture, so it shows in `make test`'s output."""
    with capsys.disabled():
        print(text)


def why_failed(test: dict[str, Any]) -> str:
    """The first line of a failed test's message, and how long it ran (vitest's JSON
    report says only `Error: STACK_TRACE_ERROR` for a test that timed out)."""
    messages = test.get("failureMessages") or [""]
    first = messages[0].strip().splitlines()[0] if messages[0].strip() else "(no message)"
    return f"{first} (after {test.get('duration') or 0:.0f} ms)"


def test_conformance_suite(cluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = f"{cluster.public_url}/streams"
    # The suite itself sends no credentials; the server has no anonymous writers.
    anonymous = httpx.put(
        f"{base}/v1/stream/x", content=b"x", headers={"Content-Type": "text/plain"}, timeout=10
    )
    assert anonymous.status_code == 401, anonymous.text

    report = tmp_path / "conformance.json"
    env = node_env(
        CONFORMANCE_TEST_URL=base,
        # A user of its own: its streams are in a namespace nobody else uses.
        DS_TOKEN=mint(cluster, f"conformance-{uuid.uuid4().hex[:10]}"),
        DS_REPORT=str(report),
        # The reserved subscription APIs too (webhooks to this machine: the test cluster
        # is in dev mode, which lets a gateway call http://localhost).
        DS_SUBSCRIPTIONS="1",
    )
    started = time.monotonic()
    code, out = run_node(["npx", "--no-install", "vitest", "run"], env, SUITE_TIMEOUT_S)
    took = time.monotonic() - started
    if not report.exists():
        pytest.fail(
            f"vitest wrote no report (exit status {code}; its packages are installed by "
            f"`make test`, or `npm ci` in {DS_DIR}):\n{out[-4000:]}"
        )

    results = json.loads(report.read_text())
    tests = [t for suite in results["testResults"] for t in suite["assertionResults"]]
    by_status: dict[str, list[dict[str, Any]]] = {"passed": [], "failed": [], "skipped": []}
    for test in tests:
        status = test["status"] if test["status"] in ("passed", "failed") else "skipped"
        by_status[status].append(test)
    passed, failed, skipped = (len(by_status[s]) for s in ("passed", "failed", "skipped"))
    total = results["numTotalTests"]
    failures = {t["fullName"]: why_failed(t) for t in by_status["failed"]}
    unexpected = sorted(set(failures) - set(KNOWN_FAILURES))
    fixed = sorted(set(KNOWN_FAILURES) - set(failures))

    lines = [
        f"\ndurable streams conformance: {total} tests, {passed} passed, {failed} failed, "
        f"{skipped} skipped ({took:.0f} s)"
    ]
    lines += [f"  known failure: {name}" for name in sorted(set(failures) & set(KNOWN_FAILURES))]
    lines += [f"  UNEXPECTED FAILURE: {name}" for name in unexpected]
    lines += [f"  known failure now passes (drop it from KNOWN_FAILURES): {n}" for n in fixed]
    show(capsys, "\n".join(lines))

    assert passed + failed + skipped == total == len(tests), (passed, failed, skipped, total)
    assert total == SUITE_SIZE, f"the suite ran {total} tests, not {SUITE_SIZE}:\n{out[-4000:]}"
    assert skipped == 0, f"{skipped} tests of the suite did not run:\n{out[-4000:]}"
    assert not unexpected, "conformance failures not in KNOWN_FAILURES:\n" + "\n".join(
        f"- {name}: {failures[name]}" for name in unexpected
    )


def test_follow_survives_cut_connections_on_the_reference_server() -> None:
    """follow.mjs itself, on the reference server with no cluster: responses cut in
    flight (a node killed -9) and ended cleanly; every seq once, the whole text."""
    code, out = run_node(["node", "follow-selftest.mjs"], node_env(), 60)
    assert code == 0, out[-4000:]


class Follower:
    """`node follow.mjs URL` as a child process, its JSON lines collected as they come."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.events: list[dict[str, Any]] = []
        self.stderr = ""
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, url: str, token: str) -> Follower:
        proc = await asyncio.create_subprocess_exec(
            "node",
            "follow.mjs",
            url,
            cwd=DS_DIR,
            env=node_env(DS_TOKEN=token, FOLLOW_TIMEOUT_S="60"),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            limit=2**22,  # a catch-up batch is one line
        )
        return cls(proc)

    async def _read(self) -> None:
        assert self.proc.stdout is not None and self.proc.stderr is not None
        async for line in self.proc.stdout:
            self.events.append(json.loads(line))
        self.stderr = (await self.proc.stderr.read()).decode(errors="replace")

    def seqs(self) -> list[int]:
        return [
            item["seq"] for e in self.events if e.get("event") == "batch" for item in e["items"]
        ]

    def sse_responses(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == "response" and e["live"] == "sse"]

    def position(self, event: dict[str, Any]) -> int:
        return next(i for i, e in enumerate(self.events) if e is event)

    def items_since(self, response: dict[str, Any]) -> int:
        """Items received on the connection that `response` opened (and later ones)."""
        after = self.events[self.position(response) + 1 :]
        return sum(len(e["items"]) for e in after if e.get("event") == "batch")

    async def wait(self, timeout: float) -> int:
        try:
            async with asyncio.timeout(timeout):
                code = await self.proc.wait()
                await self._reader
        except TimeoutError:
            pytest.fail(f"follow.mjs did not finish within {timeout}s: {self.events[-5:]}")
        return code

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


async def until(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    """tests.conftest.wait_for without blocking the event loop."""
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)
    return result


async def rest_history(cluster, session: str, token: str) -> list[dict[str, Any]]:
    url = f"{cluster.public_url}/api/sessions/{session}/history"
    async with httpx.AsyncClient(timeout=10) as http:
        reply = await http.get(url, headers={"Authorization": f"Bearer {token}"})
    assert reply.status_code == 200, reply.text
    messages: list[dict[str, Any]] = reply.json()["messages"]
    return messages


async def test_sse_follow_survives_gateway_and_worker_kill9(cluster) -> None:
    """@durable-streams/client follows a chat answer at /streams/answers/{id} over SSE
    (follow.mjs); the gateway serving its SSE read (X-Served-By) is killed -9, then the
    worker generating the answer. The client gets every chunk once, in order, and the
    whole text, the same as the WebSocket client's and the history's."""
    user, session = f"dsf-{uuid.uuid4().hex[:10]}", f"dsf-{uuid.uuid4().hex[:10]}"
    token = mint(cluster, user)
    # An answer we know the text of, long enough (~6 s at 40 tokens/s) for two kills.
    prompt = "echo " + " ".join(f"word{i}" for i in range(240))
    expected = prompt.removeprefix("echo ")

    client = ChatClient(cluster.ws_url(session, token=token), local_ip="127.0.46.1")
    await client.connect()
    ack = await client.chat(prompt)
    assert ack["type"] == "ack", ack
    message_id = ack["message_id"]
    # The WebSocket client follows too (reconnecting as a careful client does), so the
    # answer has a follower on the chat side whichever gateway dies.
    ws_answer = asyncio.create_task(client.follow_resilient(Answer(message_id), timeout=60))

    follower = await Follower.start(f"{cluster.public_url}/streams/answers/{message_id}", token)
    killed: list[str] = []
    try:
        # A live SSE read that has brought a few chunks: kill the gateway serving it.
        first = await until(
            lambda: next(
                (r for r in follower.sse_responses() if follower.items_since(r) >= 3), None
            ),
            15,
            "follow.mjs to read 3 chunks over SSE",
        )
        gateway = first["served_by"]
        assert gateway in cluster.gateway_names, f"X-Served-By names no gateway: {first}"
        killed.append(gateway)
        killed_at = time.monotonic()
        cluster.kill9(gateway)

        # The client reads on over a new SSE connection (through another gateway, or
        # the same one restarted): then kill the worker generating the answer.
        def read_again() -> dict[str, Any] | None:
            later = (r for r in follower.sse_responses() if r is not first)
            start = follower.position(first)
            fresh = (r for r in later if follower.position(r) > start)
            return next((r for r in fresh if follower.items_since(r) >= 1), None)

        second = await until(read_again, 15, "follow.mjs to read on over a new SSE connection")
        resumed_after = time.monotonic() - killed_at
        worker = await generating_worker(cluster.redis_url, message_id)
        killed.append(worker)
        cluster.kill9(worker)

        code = await follower.wait(30)
        assert code == 0, f"follow.mjs exited {code}: {follower.events[-5:]} {follower.stderr}"
        final = follower.events[-1]
        assert final.get("closed") is True, final
        answer = await ws_answer
        print(
            f"\nSSE follow: kill -9 of {gateway}, reading again from {second['served_by']} "
            f"{resumed_after:.2f}s later; "
            f"kill -9 of {worker}; {len(follower.seqs())} chunks, "
            f"{final['resumes']} resumes by follow.mjs"
        )

        seqs = follower.seqs()
        assert answer.done is not None and answer.done["finish_reason"] == "stop", answer.done
        assert seqs == list(range(1, answer.done["last_seq"] + 1)), f"seqs: {seqs}"
        assert final["text"] == expected
        history = await rest_history(cluster, session, token)
        assert history[-1]["message_id"] == message_id
        assert history[-1]["text"] == final["text"] == answer.text
    finally:
        await follower.stop()
        if not ws_answer.done():
            ws_answer.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await ws_answer
        await client.close()
        for name in killed:  # supervisor restarts them; later tests want a full cluster
            cluster.wait_healthy(name, timeout=40)
