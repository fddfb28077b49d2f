"""Storage trouble mid-answer is never silent: after a Redis restart (kill -9) or an
empty Redis, every streaming answer ends with `done` within STREAM_RECOVERY_TIMEOUT:
complete and exactly once, or with a `state_lost` error; nobody waits forever."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from tests.chat_client import ChatClient
from tests.conftest import ClusterHandle, StartCluster
from tests.node_probes import metric
from tests.storage_faults import CLIENTS, ENV, Timed, assert_never_silent, start_answers

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def storage_cluster(cluster_factory: StartCluster) -> Iterator[ClusterHandle]:
    """Stopped at the end of the module: nothing else uses it."""
    handle = cluster_factory(gateways=2, workers=2, extra_env=ENV)
    yield handle
    report = handle.stop()
    assert report.clean, report


async def run_fault(cluster, tag: str, fault: Callable[[], Awaitable[None]]) -> list[Timed]:  # type: ignore[no-untyped-def]
    runs = await start_answers(cluster, tag, "Tell me a long story about storage.")
    await fault()
    await asyncio.gather(*(run.follow() for run in runs))
    for run in runs:
        await run.client.close()
    return runs


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


def newest_incr_aof(redis_dir: Path) -> Path:
    """The append-only file Redis (7) writes to now: the incr file of the highest number."""
    files = list((redis_dir / "appendonlydir").glob("*.incr.aof"))
    assert files, f"no incr AOF under {redis_dir}"
    return max(files, key=lambda p: int(p.name.split(".")[-3]))


async def test_answers_redis_lost_after_their_done_are_written_again(storage_cluster) -> None:
    """Redis comes back without its last writes (the second its append-only file had
    not synced; a failover to a replica that missed them) after the answers had ended
    with `done`: their last chunks, final records and history items are gone. The
    workers that finished them see another server and write them again from memory,
    identically, so history holds what each client was shown."""
    cluster = storage_cluster

    def rewritten() -> float:
        return sum(
            metric(cluster.node_url(w), "worker_finished_rewritten_total")
            for w in cluster.worker_names
        )

    before = rewritten()
    runs = await start_answers(cluster, "afterdone", "Tell me a long story about storage.")
    aof = newest_incr_aof(cluster.run_dir / "redis")
    kept = aof.stat().st_size  # Redis writes its AOF before it answers: all acked so far
    await asyncio.gather(*(run.follow() for run in runs))
    for run in runs:
        assert run.answer.done is not None and run.answer.done["finish_reason"] == "stop"
        run.answer.assert_exactly_once()
    cluster.stop_process("redis")
    assert aof.stat().st_size > kept
    with aof.open("r+b") as f:
        f.truncate(kept)  # what Redis will come back with
    cluster.start_process("redis")

    deadline = time.monotonic() + 20
    for run in runs:
        while (kept_text := await run.kept_text(cluster)) != run.answer.text:
            assert time.monotonic() < deadline, f"history kept {kept_text[:60]!r}..."
            await asyncio.sleep(0.2)
    assert rewritten() - before == len(runs)
    for run in runs:
        await run.client.close()
