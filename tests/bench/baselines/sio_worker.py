"""The socket.io peer's worker: jobs from a Redis list, answers through the Redis manager.

`python -m tests.bench.baselines.sio_worker --redis-url URL [--name NAME]` (model
shape from SIM_* / BATCH_*). Each job gets its own task, so one worker streams many
answers at once, like our workers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import time
from contextlib import aclosing
from typing import Any

import socketio
import uvloop
from redis.asyncio import Redis

from tests.bench.baselines.model import ModelConfig, SimulatedAnswers
from tests.bench.baselines.sio_server import CHANNEL, JOBS_KEY

log = logging.getLogger("sio_worker")


async def run_worker(redis_url: str, answers: SimulatedAnswers, name: str) -> None:
    """Take jobs until cancelled. `name` is the Redis client name of the BRPOP
    connection, by which the launcher sees that the worker is waiting for jobs."""
    manager = socketio.AsyncRedisManager(redis_url, channel=CHANNEL, write_only=True)
    jobs = Redis.from_url(redis_url, client_name=name)
    try:
        async with asyncio.TaskGroup() as group:
            while True:
                # A short block, again and again: redis-py 8 times out a read that
                # waits longer than its socket timeout, even under BRPOP 0.
                reply = await jobs.brpop([JOBS_KEY], timeout=1)
                if reply is None:
                    continue
                group.create_task(_answer(manager, answers, json.loads(reply[1])))
    finally:
        await jobs.aclose()


async def _answer(manager: Any, answers: SimulatedAnswers, job: dict[str, Any]) -> None:
    """Stream one answer: a `chunk` event per batch, then `done`, all to the job's sid."""
    sid, message_id = job["sid"], job["message_id"]
    try:
        seq = 0
        async with aclosing(answers.stream(job["prompt"], message_id)) as events:
            async for event in events:
                if isinstance(event, str):
                    seq += 1
                    chunk = {"message_id": message_id, "seq": seq, "delta": event, "t": time.time()}
                    await manager.emit("chunk", chunk, to=sid)
                    continue
                usage = {
                    "prompt_tokens": event.prompt_tokens,
                    "completion_tokens": event.completion_tokens,
                }
                done = {
                    "message_id": message_id,
                    "last_seq": seq,
                    "finish_reason": event.reason.value,
                    "usage": usage,
                }
                await manager.emit("done", done, to=sid)
    except Exception:  # noqa: BLE001 - one failed answer must not stop the worker's others
        log.exception("answer %s failed", message_id)


def main() -> None:
    """`python -m tests.bench.baselines.sio_worker --redis-url URL [--name NAME]`."""
    parser = argparse.ArgumentParser(description="The socket.io peer's worker.")
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--name", default="sio-worker")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    answers = SimulatedAnswers(ModelConfig.from_env(os.environ))

    async def run() -> None:
        # SIGTERM cancels the loop, so the worker closes its connections and exits 0.
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        try:
            await run_worker(args.redis_url, answers, args.name)
        except asyncio.CancelledError:
            return

    uvloop.run(run())


if __name__ == "__main__":
    main()
