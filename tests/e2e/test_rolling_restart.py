"""Planned changes fail nobody (issue 7): while clients keep chatting, reconnecting and
resuming, `rolling-restart` restarts every node and `scale` adds and removes nodes, and
every handshake succeeds and every answer arrives exactly once, equal to history.

Both tests use one 2-gateway, 2-worker cluster with short answers (the rolling restart
leaves it as it was, with new processes; the scale test goes back to 2 + 2), stopped at
the end of the module."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from deploy.cluster import Cluster
from deploy.spec import ClusterSpec
from tests.chat_client import Answer, ChatClient, Frame
from tests.conftest import ClusterHandle, StartCluster
from tests.integration.redis_helpers import eventually
from tests.node_probes import metric

pytestmark = pytest.mark.e2e

CLIENTS = 10
FAST = {
    # Answers of 20..80 tokens at 80 tokens/s: a quarter of a second to one second, so
    # that answers are in flight at every step without making the test slow.
    "SIM_MIN_TOKENS": "20",
    "SIM_MAX_TOKENS": "80",
    "SIM_TOKENS_PER_SECOND": "80",
    # Each client chats about once a second; the limits are not what this test is
    # about (a refusal would only be waited out).
    "CHAT_RATE_PER_MINUTE": "1000",
    "USER_CHATS_PER_MINUTE": "1000",
}
# `"GET /ws/chat HTTP/1.1" 502` in nginx's access log (see the template's log_format).
_ACCESS = re.compile(r'"[A-Z]+ (/ws/\S*) HTTP/[\d.]+" (\d{3}) ')


@pytest.fixture(scope="module")
def small_cluster(cluster_factory: StartCluster) -> Iterator[ClusterHandle]:
    handle = cluster_factory(gateways=2, workers=2, extra_env=FAST)
    yield handle
    report = handle.stop()  # stop() sees the spec as scaled last
    assert report.clean, report


@dataclass
class Tally:
    """Everything the clients saw."""

    handshakes: int = 0
    failed: list[str] = field(default_factory=list)
    answers: list[tuple[Answer, str | None]] = field(default_factory=list)
    """Each finished answer with the text history holds for it."""
    rate_limited: int = 0

    def check(self) -> None:
        assert not self.failed, f"{len(self.failed)} failed handshakes: {self.failed[:5]}"
        for answer, history in self.answers:
            answer.assert_exactly_once()
            assert answer.done is not None and answer.done["finish_reason"] == "stop", answer
            assert not answer.errors, answer.errors
            assert history == answer.text, f"history differs for {answer.message_id}"

    def summary(self) -> str:
        reconnects = sum(a.reconnects for a, _ in self.answers)
        codes = sorted({c for a, _ in self.answers for c in a.close_codes})
        return (
            f"handshakes {self.handshakes} attempted, {len(self.failed)} failed; "
            f"answers {len(self.answers)} (all exactly once, equal to history); "
            f"resumes mid-answer {reconnects} (close codes {codes}); "
            f"chats refused as rate_limited {self.rate_limited}"
        )


class CountingClient(ChatClient):
    """A ChatClient that counts every handshake it tries and every one that fails."""

    def __init__(self, url: str, local_ip: str, tally: Tally) -> None:
        super().__init__(url, local_ip=local_ip)
        self.tally = tally

    async def connect(self) -> Frame:
        self.tally.handshakes += 1
        # Frames of the previous socket still to be read stay for after the welcome.
        kept, self.backlog = self.backlog, []
        try:
            return await super().connect()
        except Exception as exc:
            what = f"HTTP {exc.response.status_code}" if isinstance(exc, InvalidStatus) else exc
            self.tally.failed.append(f"{self.local_ip}: {what!r}")
            raise
        finally:
            self.backlog = kept + self.backlog

    async def refused(self, frame: Frame) -> bool:
        if frame.get("code") == "rate_limited":
            self.tally.rate_limited += 1
        return await super().refused(frame)

    async def history_text(self, message_id: str) -> str | None:
        while True:
            try:
                await self.send({"type": "history", "limit": 10})
                frame = await self.recv_until(lambda f: f["type"] == "history")
                break
            except ConnectionClosed:
                await self.reconnect()
        texts = {m["message_id"]: m["text"] for m in frame["messages"]}
        return texts.get(message_id)


async def chatter(
    handle: ClusterHandle, local_ip: str, tally: Tally, stop: asyncio.Event, user: str
) -> None:
    """Chat until `stop`, each answer read to its done through any close."""
    session = f"rr-{uuid.uuid4().hex[:12]}"
    client = CountingClient(handle.ws_url(session, user_id=user), local_ip, tally)
    await client.reconnect()
    n = 0
    while not stop.is_set():
        n += 1
        answer = await client.ask(f"Question {n} from {user}: tell me about restarts", f"{n}")
        await client.follow_resilient(answer, timeout=60)
        tally.answers.append((answer, await client.history_text(answer.message_id)))
    await client.close()


class Workload:
    """CLIENTS chatters, each from its own address (nginx limits each address)."""

    def __init__(self, handle: ClusterHandle) -> None:
        self.handle = handle
        self.tally = Tally()
        self.stop = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []

    def add(self, local_ip: str) -> None:
        user = f"u{len(self.tasks)}"
        coro = chatter(self.handle, local_ip, self.tally, self.stop, user)
        self.tasks.append(asyncio.create_task(coro))

    async def __aenter__(self) -> Workload:
        for n in range(CLIENTS):
            self.add(f"127.0.{60 + n}.1")
        try:
            await eventually(
                lambda: len(self.tally.answers) >= CLIENTS, 30, "every client's first answers"
            )
        except BaseException:
            await self._cancel()
            raise
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        self.stop.set()
        if exc_type is not None:  # the test failed already: just clean up
            await self._cancel()
            return
        done, pending = await asyncio.wait(self.tasks, timeout=60)
        await self._cancel()
        assert not pending, f"{len(pending)} clients still busy a minute after the change"
        for task in done:
            task.result()  # a client's own failure, if any

    async def _cancel(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.wait(self.tasks)


def access_log_since(handle: ClusterHandle, offset: int) -> list[tuple[str, int]]:
    """(path, status) of the /ws/ requests nginx logged after `offset`."""
    with open(handle.run_dir / "logs" / "nginx-access.log", "rb") as log:
        log.seek(offset)
        text = log.read().decode(errors="replace")
    return [(m.group(1), int(m.group(2))) for m in _ACCESS.finditer(text)]


def status_lines(handle: ClusterHandle) -> tuple[bool, str]:
    """What `make status` prints: a Cluster from the run dir's saved spec."""
    spec = ClusterSpec.load(handle.run_dir)
    assert spec is not None
    lines: list[str] = []
    healthy = Cluster(spec, out=lines.append).status()
    return healthy, "\n".join(lines)


async def test_rolling_restart_fails_no_handshake_and_no_answer(small_cluster) -> None:
    handle = small_cluster
    cluster = handle.cluster
    log_offset = (handle.run_dir / "logs" / "nginx-access.log").stat().st_size
    before = cluster.pids()
    started = time.monotonic()
    async with Workload(handle) as work:
        await asyncio.to_thread(cluster.rolling_restart)
        restarted_in = time.monotonic() - started
        answers_during = len(work.tally.answers)
    after = cluster.pids()
    print(
        f"\nrolling restart of 2 gateways + 2 workers in {restarted_in:.1f}s: "
        f"{work.tally.summary()}"
    )

    for name in handle.gateway_names + handle.worker_names:
        assert after[name] and after[name] != before[name], f"{name} was not restarted"
    assert after["nginx"] == before["nginx"], "nginx must reload, not restart"
    work.tally.check()
    assert answers_during > 2 * CLIENTS, "the clients were not chatting through the restart"
    closes = [c for a, _ in work.tally.answers for c in a.close_codes]
    assert closes and set(closes) <= {1012}, f"sockets closed with {closes}, not only 1012"
    logged = access_log_since(handle, log_offset)
    assert logged, "nginx logged no /ws/ request"
    assert not [entry for entry in logged if entry[1] >= 500], logged


async def test_scale_up_then_down_fails_nobody_and_new_nodes_serve(small_cluster) -> None:
    handle = small_cluster
    cluster = handle.cluster
    log_offset = (handle.run_dir / "logs" / "nginx-access.log").stat().st_size
    took: dict[str, float] = {}
    async with Workload(handle) as work:
        mark = time.monotonic()
        await asyncio.to_thread(cluster.scale, 3, 3)
        took["scale up"] = time.monotonic() - mark
        assert (cluster.spec.gateways, cluster.spec.workers) == (3, 3)
        healthy, text = await asyncio.to_thread(status_lines, handle)
        assert healthy and "gateway-3" in text and "worker-3" in text, text

        # A client whose address hashes to gateway-3 lands there, and keeps chatting
        # (so that the scale-down closes a socket of the node it removes).
        for n in range(100, 160):
            probe = CountingClient(handle.ws_url(f"p-{n}"), f"127.0.{n}.1", work.tally)
            welcome = await probe.connect()
            await probe.close()
            if welcome["node_id"] == "gateway-3":
                work.add(f"127.0.{n}.1")
                break
        else:
            pytest.fail("no client address reached gateway-3")
        worker3 = f"http://127.0.0.1:{cluster.spec.node_port('worker-3')}"
        await eventually(
            lambda: metric(worker3, "worker_answers_finished_total") >= 3,
            20,
            "answers from worker-3",
        )
        finished_by_worker3 = metric(worker3, "worker_answers_finished_total")
        took["new nodes served"] = time.monotonic() - mark - took["scale up"]

        mark = time.monotonic()
        await asyncio.to_thread(cluster.scale, 2, 2)
        took["scale down"] = time.monotonic() - mark
        assert (cluster.spec.gateways, cluster.spec.workers) == (2, 2)
        healthy, text = await asyncio.to_thread(status_lines, handle)
        assert healthy and "gateway-3" not in text and "worker-3" not in text, text
        assert "gateway-2" in text and "worker-2" in text, text
    print(
        "\nscale 2/2 -> 3/3 -> 2/2 ("
        + ", ".join(f"{what} {seconds:.1f}s" for what, seconds in took.items())
        + f"): worker-3 finished {finished_by_worker3:.0f} answers; {work.tally.summary()}"
    )
    work.tally.check()
    assert ClusterSpec.load(handle.run_dir) == cluster.spec
    logged = access_log_since(handle, log_offset)
    assert not [entry for entry in logged if entry[1] >= 500], logged
