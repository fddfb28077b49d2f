"""Clients caught mid-answer by a storage fault (a Redis restart, an emptied Redis, a
failover): each answer is followed to its `done` while timing the longest silence, and
checked to have ended as the protocol promises."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass

from tests.chat_client import Answer, ChatClient
from tests.conftest import ClusterHandle

RECOVERY_S = 8.0
"""STREAM_RECOVERY_TIMEOUT of the clusters these tests start."""
CLIENTS = 6
ENV = {
    "STREAM_RECOVERY_TIMEOUT": str(RECOVERY_S),
    # Answers of about 3 s (start_answers starts the six in well under a second, or
    # one after another in about one), so each is mid-stream when the fault comes.
    "SIM_MIN_TOKENS": "200",
    "SIM_MAX_TOKENS": "220",
    "SIM_TOKENS_PER_SECOND": "70",
}


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


async def start_answers(
    cluster: ClusterHandle, tag: str, prompt: str, *, together: bool = True
) -> list[Timed]:
    """CLIENTS clients, each with an answer that has streamed its first chunks. They
    start at once (`together`), so every answer is early in its course when the caller's
    fault comes; or one after another, over about a second."""

    async def start(i: int) -> Timed:
        session, user = f"{tag}-{uuid.uuid4().hex[:10]}", f"{tag}{i}"
        client = ChatClient(cluster.ws_url(session, user_id=user), local_ip=f"127.0.{90 + i}.1")
        await client.connect()
        ack = await client.chat(prompt)
        assert ack["type"] == "ack", ack
        answer = await client.read_answer(Answer(ack["message_id"]), stop_after=3, timeout=30)
        return Timed(client, answer, session, user)

    if together:
        return list(await asyncio.gather(*(start(i) for i in range(CLIENTS))))
    return [await start(i) for i in range(CLIENTS)]


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


async def assert_history_kept(cluster: ClusterHandle, runs: list[Timed]) -> None:
    """What the client assembled of each completed answer is what history kept."""
    for run in runs:
        if run.answer.done is not None and run.answer.done["finish_reason"] == "stop":
            check = ChatClient(cluster.ws_url(run.session, user_id=run.user))
            await check.connect()
            await check.send({"type": "history"})
            history = await check.recv_until(lambda f: f["type"] == "history")
            await check.close()
            kept = history["messages"][-1]["text"]
            assert kept == run.answer.text, (run.session, len(kept), len(run.answer.text))


async def finish_with(cluster: ClusterHandle, runs: list[Timed], restart: str) -> tuple[int, int]:
    """Start the stopped program `restart` again while every answer is followed to its
    end; then every answer ended and what completed is what history kept. Returns
    (completed, lost) as `assert_never_silent`."""
    await asyncio.gather(
        asyncio.to_thread(cluster.start_process, restart), *(run.follow() for run in runs)
    )
    for run in runs:
        await run.client.close()
    outcome = assert_never_silent(runs)
    await assert_history_kept(cluster, runs)
    return outcome
