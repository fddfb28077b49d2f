"""Aftercare of finished answers: write them again if Redis lost them after the `done`.

A client that got `done` holds the whole answer. If Redis then comes back with less
(a restart that loses the last second of its append-only file, or a Sentinel failover
to a replica that missed the last writes, twice in a row included), the answer's last
chunks or final record may be gone, and with them its history item: the text the
client holds would be missing from history without anyone being told.

So a worker keeps, for FINISHED_WATCH_S after each answer it finished, what it wrote
(chunks with their write times, the final record, the event id). Whenever the Redis it
talks to is another server than before (its `run_id` changed: a restart or a
failover), it checks those answers and writes again, identically, whatever is missing
under a fresh generator lease. What it cannot write again (the message record itself
is gone, or chunks another worker wrote) is logged and counted.

`RecentlyFinished` and `repair_plan` are pure; `Aftercare` does the I/O.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from services.ai_worker.metrics import WorkerMetrics
from services.ai_worker.providers.base import chunk_tokens
from services.common.errors import StorageError
from services.common.message_store import AppendOutcome, FinishOutcome, MessageStore
from services.common.protocol import MessageStatus
from services.common.streams import DoneEntry
from services.common.tasks import raise_if_cancelling

log = logging.getLogger(__name__)

#: Seconds between two looks at which Redis server answers.
CHECK_INTERVAL_S = 1.0


@dataclass(frozen=True, slots=True)
class FinishedAnswer:
    """What one generation wrote of an answer it finished, to write it again."""

    message_id: str
    session_id: str
    text: str
    final: DoneEntry
    written: dict[int, tuple[str, int]]
    """seq -> (delta, written_ms) of the chunks this worker wrote."""
    event_id: str
    """The id of its `message.completed` event: a second copy dedupes with the first."""


class Repair(StrEnum):
    NONE = "none"
    """Stored as finished."""
    REWRITE = "rewrite"
    """Missing chunks and/or the final record, all in memory: write them again."""
    LOST = "lost"
    """Missing, and not all of it is this worker's to write (or the record is gone)."""


def repair_plan(
    answer: FinishedAnswer, status: MessageStatus | None, stored_last_seq: int
) -> tuple[Repair, range]:
    """What to do about `answer` given its stored record; with the seqs to write again."""
    if status == MessageStatus.DONE:
        return Repair.NONE, range(0)
    missing = range(stored_last_seq + 1, answer.final.last_seq + 1)
    if status is None or stored_last_seq > answer.final.last_seq:
        return Repair.LOST, missing
    if any(seq not in answer.written for seq in missing):
        return Repair.LOST, missing
    return Repair.REWRITE, missing


class RecentlyFinished:
    """The answers finished in the last `max_age` seconds, at most `max_count` of them
    (the oldest go first)."""

    def __init__(
        self, max_age: float, max_count: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._max_age = max_age
        self._max_count = max_count
        self._clock = clock
        self._items: OrderedDict[str, tuple[float, FinishedAnswer]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def add(self, answer: FinishedAnswer) -> None:
        if self._max_count <= 0:
            return
        self._items.pop(answer.message_id, None)
        self._items[answer.message_id] = (self._clock(), answer)
        while len(self._items) > self._max_count:
            self._items.popitem(last=False)

    def current(self) -> list[FinishedAnswer]:
        """The answers still watched, oldest first (older ones are dropped)."""
        horizon = self._clock() - self._max_age
        while self._items:
            _, (at, _answer) = next(iter(self._items.items()))
            if at >= horizon:
                break
            self._items.popitem(last=False)
        return [answer for _, answer in self._items.values()]


class Aftercare:
    """Checks the recently finished answers whenever the Redis server changes."""

    def __init__(
        self,
        store: MessageStore,
        recent: RecentlyFinished,
        metrics: WorkerMetrics,
        node_id: str,
    ) -> None:
        self._store = store
        self._recent = recent
        self._metrics = metrics
        self._node_id = node_id
        self._server: str | None = None

    async def run(self, interval: float = CHECK_INTERVAL_S) -> None:
        """Forever (a loop of the node's TaskSupervisor): look at the server's run_id,
        and check the watched answers when it changed."""
        while True:
            try:
                await self.check_once()
            except StorageError as exc:
                raise_if_cancelling()
                log.debug("aftercare could not reach redis", extra={"detail": str(exc)})
            await asyncio.sleep(interval)

    async def check_once(self) -> int:
        """One look; returns how many answers were written again."""
        server = await self._store.server_run_id()
        previous, self._server = self._server, server
        if previous is None or previous == server:
            return 0
        answers = self._recent.current()
        if not answers:
            return 0
        log.warning(
            "redis is another server now; checking recently finished answers",
            extra={"detail": len(answers)},
        )
        return await self.recheck(answers)

    async def recheck(self, answers: list[FinishedAnswer]) -> int:
        states = await self._store.finish_states([a.message_id for a in answers])
        repaired = 0
        for answer, (status, last_seq) in zip(answers, states, strict=True):
            plan, missing = repair_plan(answer, status, last_seq)
            if plan == Repair.NONE:
                continue
            if plan == Repair.LOST or not await self._rewrite(answer, missing):
                self._metrics.finished_lost.inc()
                log.error(
                    "redis lost a finished answer this worker cannot write again",
                    extra={"message_id": answer.message_id, "detail": f"seqs {missing}"},
                )
                continue
            repaired += 1
            self._metrics.finished_rewritten.inc()
            log.warning(
                "wrote a finished answer again after redis lost it",
                extra={"message_id": answer.message_id, "detail": f"seqs {missing}"},
            )
        return repaired

    async def _rewrite(self, answer: FinishedAnswer, missing: range) -> bool:
        lease = await self._store.generators.acquire(answer.message_id, self._node_id)
        if lease is None:
            return False  # somebody generates it again: not ours to write
        try:
            for seq in missing:
                delta, written_ms = answer.written[seq]
                outcome = await self._store.append_chunk(
                    answer.message_id,
                    answer.session_id,
                    token=lease.token,
                    seq=seq,
                    delta=delta,
                    tokens=chunk_tokens(delta),
                    written_ms=written_ms,
                )
                if outcome != AppendOutcome.OK:
                    return False
            final = answer.final
            finished = await self._store.finish(
                answer.message_id,
                answer.session_id,
                token=lease.token,
                last_seq=final.last_seq,
                text=answer.text,
                reason=final.finish_reason,
                usage=final.usage,
                error=final.error,
                event_id=answer.event_id,
            )
        finally:
            await lease.release()  # a no-op once the finish dropped it
        return finished in (FinishOutcome.OK, FinishOutcome.ALREADY_DONE)
