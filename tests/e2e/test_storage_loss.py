"""Storage trouble mid-answer is never silent: after a Redis restart (kill -9) or an
empty Redis, every streaming answer ends with `done` within STREAM_RECOVERY_TIMEOUT:
complete and exactly once, or with a `state_lost` error; nobody waits forever."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import pytest
from redis.asyncio import Redis

from tests.chat_client import Answer, ChatClient
from tests.conftest import ClusterHandle

pytestmark = pytest.mark.e2e

RECOVERY_S = 8.0
CLIENTS = 6
ENV = {
    "STREAM_RECOVERY_TIMEOUT": str(RECOVERY_S),
    # Long answers, so each is mid-stream when the fault comes.
    "SIM_MIN_TOKENS": "200",
    "SIM_MAX_TOKENS": "220",
}


@pytest.fixture(scope="module")
def storage_cluster(cluster_factory):  # type: ignore[no-untyped-def]
    return cluster_factory(gateways=2, workers=2, extra_env=ENV)


@dataclass
class Timed:
    """A client's answer, with the longest gap between frames it received."""

    client: ChatClient
    answer: Answer
    session: str
    user: str
    longest_silence: float = 0.0

    async def follow(self) -> None:
        last = time.monotonic()
        answer = self.answer
        while answer.done is None:
            frames = len(answer.seqs) + len(answer.errors)
            await self.client.read_answer(answer, stop_after=len(answer.seqs) + 1, timeout=60)
            now = time.monotonic()
            if len(answer.seqs) + len(answer.errors) > frames or answer.done is not None:
                self.longest_silence = max(self.longest_silence, now - last)
                last = now

    async def kept_text(self, cluster: ClusterHandle) -> str:
        """The text of the last message the session's history kept, read over a
        connection of its own."""
        check = ChatClient(cluster.ws_url(self.session, user_id=self.user))
        await check.connect()
        await check.send({"type": "history"})
        history = await check.recv_until(lambda f: f["type"] == "history")
        await check.close()
        text: str = history["messages"][-1]["text"]
        return text


async def start_answers(cluster, tag: str) -> list[Timed]:  # type: ignore[no-untyped-def]
    runs = []
    for i in range(CLIENTS):
        session, user = f"{tag}-{uuid.uuid4().hex[:10]}", f"{tag}{i}"
        client = ChatClient(cluster.ws_url(session, user_id=user), local_ip=f"127.0.{90 + i}.1")
        await client.connect()
        ack = await client.chat("Tell me a long story about storage.")
        assert ack["type"] == "ack", ack
        answer = await client.read_answer(Answer(ack["message_id"]), stop_after=3, timeout=30)
        runs.append(Timed(client, answer, session, user))
    return runs


async def run_fault(cluster, tag: str, fault: Callable[[], Awaitable[None]]) -> list[Timed]:  # type: ignore[no-untyped-def]
    runs = await start_answers(cluster, tag)
    await fault()
    await asyncio.gather(*(run.follow() for run in runs))
    for run in runs:
        await run.client.close()
    return runs


def assert_never_silent(runs: list[Timed]) -> tuple[int, int]:
    """Every answer ended; each one either completed exactly once or was told it was lost.
    Returns (completed, lost)."""
    completed = lost = 0
    for run in runs:
        answer = run.answer
        assert answer.done is not None
        codes = [e["code"] for e in answer.errors]
        if answer.done["finish_reason"] == "stop":
            assert codes == []
            answer.assert_exactly_once()
            completed += 1
        else:
            assert answer.done["finish_reason"] == "error", answer.done
            assert codes == ["state_lost"], codes
            # The client is told at the seq it has: nothing shown twice, nothing skipped.
            assert answer.seqs == list(range(1, answer.done["last_seq"] + 1))
            lost += 1
        assert run.longest_silence < RECOVERY_S + 2.0, run.longest_silence
    return completed, lost


async def test_an_emptied_redis_ends_every_answer_with_state_lost(storage_cluster) -> None:
    async def flush() -> None:
        redis = Redis.from_url(storage_cluster.redis_url)
        try:
            await redis.flushall()
        finally:
            await redis.aclose()

    runs = await run_fault(storage_cluster, "flush", flush)
    completed, lost = assert_never_silent(runs)
    assert (completed, lost) == (0, CLIENTS)
    # A later resume is refused clearly.
    probe = ChatClient(storage_cluster.ws_url("flush-probe", user_id="flush0"))
    await probe.connect()
    await probe.send({"type": "resume", "message_id": runs[0].answer.message_id, "after_seq": 0})
    frame = await probe.recv_until(lambda f: f["type"] == "error")
    assert frame["code"] == "not_found"
    await probe.close()


async def test_redis_kill9_mid_stream_ends_every_answer(storage_cluster) -> None:
    async def kill_redis() -> None:
        storage_cluster.kill9("redis")

    runs = await run_fault(storage_cluster, "kill", kill_redis)
    completed, lost = assert_never_silent(runs)
    # What a client assembled of a completed answer is what history kept.
    for run in runs:
        if run.answer.done is not None and run.answer.done["finish_reason"] == "stop":
            assert await run.kept_text(storage_cluster) == run.answer.text
    print(f"\nredis kill -9 mid-stream: {completed} answers completed, {lost} told state_lost")
    storage_cluster.wait_healthy("redis", timeout=30)
