"""Driving an answer's generation: the open call to a worker, and takeover when it breaks.

The call to `POST /v1/generate` (through nginx's least_conn upstream) stays open
for the life of the generation, so nginx balances by generations in flight and this
node notices a dead worker at once. When the call breaks, the same message id goes
to another worker, which continues after the last cached seq. If nothing makes
progress for STREAM_RECOVERY_TIMEOUT, the answer ends with `upstream_unavailable`:
also when a worker is alive but stuck (its heartbeats keep the call open, or it keeps
the lease while another call waits), whose lease is then taken away with the finish.

One gateway drives a message at a time (the message's driver lease), so a gateway
that finds a stream nobody generates (its driver died too) can take over: the stall
watcher hands such streams to `adopt_if_orphaned`. Everything Redis-facing goes
through `MessageStore`; the decisions (what a call's outcome means, when to give up)
are pure functions below.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum

import httpx

from services.common.errors import StorageError
from services.common.generate import (
    GENERATE_PATH,
    EventKind,
    GenerateRequest,
    Outcome,
    parse_event,
)
from services.common.logging import message_id_var, session_id_var
from services.common.message_store import FinishOutcome, MessageStore
from services.common.protocol import ErrorCode, FinishReason, MessageStatus, Usage
from services.common.streams import ChunkEntry
from services.common.tasks import cancel_and_wait, raise_if_cancelling
from services.ws_gateway.hub import Hub
from services.ws_gateway.metrics import GatewayMetrics

log = logging.getLogger(__name__)

#: A followed stream with no entry for this long is checked for a missing generator.
STALL_AFTER_S = 2.0
LEASE_POLL_S = 0.1


class CallResult(StrEnum):
    DONE = "done"
    """The answer is finished (or gone): stop driving."""
    LEASED = "leased"
    """Another worker generates it: wait for its lease to end."""
    RETRY = "retry"
    """The call failed: call again (another worker), unless it is time to give up."""
    BUSY = "busy"
    """No worker had room for a new answer (429): wait and call again; meanwhile the
    node refuses new chats (`Admission.workers_busy`)."""


def call_result(outcome: Outcome) -> CallResult:
    """What the driver does after a worker reported `outcome`."""
    if outcome in (Outcome.DONE, Outcome.NOT_FOUND):
        return CallResult.DONE
    if outcome == Outcome.LEASED:
        return CallResult.LEASED
    return CallResult.RETRY


@dataclass
class Backoff:
    """The driver's retry schedule: doubling from `first` to `cap`, reset on progress."""

    first: float = 0.05
    cap: float = 1.0
    current: float = 0.05

    def next(self) -> float:
        delay = self.current
        self.current = min(self.current * 2, self.cap)
        return delay

    def reset(self) -> None:
        self.current = self.first


CallWorker = Callable[[str, bool], Awaitable[tuple[CallResult, float | None]]]
"""One generate call for a message id (and whether the answer has no chunk yet, see
`GenerateRequest.new`): (how it ended, when the answer last progressed during it, in
`time.monotonic()` seconds, or None if it did not)."""


class Driver:
    def __init__(
        self,
        store: MessageStore,
        call_worker: CallWorker,
        *,
        node_id: str,
        recovery_timeout: float,
        metrics: GatewayMetrics,
        on_workers_busy: Callable[[float], None] = lambda _now: None,
    ) -> None:
        self._store = store
        self._on_workers_busy = on_workers_busy
        self._call = call_worker
        self._node_id = node_id
        self._recovery_timeout = recovery_timeout
        self._metrics = metrics
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._waiting: set[str] = set()
        """Answers whose last call found no worker with room (they wait to start)."""

    @property
    def driving(self) -> int:
        return len(self._tasks)

    @property
    def waiting_for_room(self) -> int:
        """Answers this node accepted that no worker had room for yet: while there are
        any, new chats would only queue behind them (admission refuses them)."""
        return len(self._waiting)

    def drive(self, message_id: str, session_id: str) -> None:
        """Start driving the message unless this node already does."""
        if message_id in self._tasks:
            return
        task = asyncio.create_task(
            self._guarded(message_id, session_id), name=f"drive-{message_id}"
        )
        self._tasks[message_id] = task
        task.add_done_callback(lambda _t: self._ended(message_id))

    def _ended(self, message_id: str) -> None:
        self._tasks.pop(message_id, None)
        self._waiting.discard(message_id)

    async def adopt_if_orphaned(self, message_id: str) -> None:
        """Drive a followed stream that nobody generates or drives (both died)."""
        if message_id in self._tasks:
            return
        session_id = await self._store.orphaned(message_id)
        if session_id is None:
            return
        log.info("adopting an orphaned answer", extra={"message_id": message_id})
        self.drive(message_id, session_id)

    async def watch_stalls(self, hub: Hub, interval: float) -> None:
        """Check followed streams that stopped moving: one whose message record is gone
        (storage lost it) ends with `state_lost`; one nobody generates is adopted."""
        while True:
            await asyncio.sleep(interval)
            for message_id in hub.stalled(time.monotonic(), STALL_AFTER_S):
                try:
                    if await self._store.meta(message_id) is None:
                        log.error(
                            "a followed answer has no record", extra={"message_id": message_id}
                        )
                        hub.lose(message_id)
                        continue
                    await self.adopt_if_orphaned(message_id)
                except StorageError as exc:
                    raise_if_cancelling()
                    log.warning("stall check failed", extra={"detail": str(exc)})

    async def close(self) -> None:
        """Stop driving; workers go on generating and another node can adopt."""
        await cancel_and_wait(*self._tasks.values())

    async def _guarded(self, message_id: str, session_id: str) -> None:
        message_id_var.set(message_id)
        session_id_var.set(session_id)
        try:
            lease = await self._store.drivers.acquire(message_id, self._node_id)
            if lease is None:
                return
            async with lease.kept():
                await self._drive(message_id, session_id)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - a driver must never die silently
            log.exception("driver failed")

    async def _drive(self, message_id: str, session_id: str) -> None:
        last_progress = time.monotonic()
        backoff = Backoff()
        attempt = 0
        while True:
            raise_if_cancelling()  # a library may turn a cancel into a failed call
            meta = await self._store.meta(message_id)
            if meta is None or meta.status == MessageStatus.DONE:
                return
            if attempt:
                self._metrics.takeovers.inc()
                log.info("handing the answer to another worker", extra={"detail": attempt})
            attempt += 1
            self._waiting.discard(message_id)  # trying again (a worker may have room)
            result, progressed_at = await self._call(message_id, meta.last_seq == 0)
            if progressed_at is not None:
                last_progress = max(last_progress, progressed_at)
                backoff.reset()
            if result == CallResult.DONE:
                return
            if result == CallResult.BUSY:
                self._metrics.workers_busy.inc()
                self._waiting.add(message_id)
                self._on_workers_busy(time.monotonic())
                attempt = 0  # not a takeover: the answer has not started
            if result == CallResult.LEASED:
                last_progress = await self._wait_lease_gone(message_id, last_progress)
                attempt = 0
                if not self._stalled(last_progress):
                    continue
            if self._stalled(last_progress):
                if await self._give_up(message_id, session_id):
                    return
                last_progress = time.monotonic()  # it moved on after all
                continue
            if await self._store.is_cancelled(message_id) and await self._finish_unleased(
                message_id, session_id, FinishReason.CANCELLED, None
            ):
                return
            await asyncio.sleep(backoff.next())

    def _stalled(self, last_progress: float) -> bool:
        return time.monotonic() - last_progress > self._recovery_timeout

    async def _wait_lease_gone(self, message_id: str, last_progress: float) -> float:
        """Wait while another worker holds the lease and makes progress; return when the
        answer last progressed (it stops waiting once that is the recovery timeout ago)."""
        meta = await self._store.meta(message_id)
        seq = meta.last_seq if meta else 0
        while await self._store.generators.holder(message_id) is not None:
            await asyncio.sleep(LEASE_POLL_S)
            meta = await self._store.meta(message_id)
            if meta is not None and meta.last_seq != seq:
                seq, last_progress = meta.last_seq, time.monotonic()
            if self._stalled(last_progress):
                break
        return last_progress

    async def _give_up(self, message_id: str, session_id: str) -> bool:
        """End the answer with `upstream_unavailable`, taking the lease from a worker
        that holds it without progress. False if it moved on meanwhile (keep driving)."""
        stuck = await self._store.generators.holder(message_id) or ""
        log.error(
            "no worker could finish the answer",
            extra={"message_id": message_id, "detail": f"stuck holder {stuck}" if stuck else ""},
        )
        if await self._finish_unleased(
            message_id, session_id, FinishReason.ERROR, ErrorCode.UPSTREAM_UNAVAILABLE, stuck
        ):
            self._metrics.upstream_failures.inc()
            return True
        return False

    async def _finish_unleased(
        self,
        message_id: str,
        session_id: str,
        reason: FinishReason,
        error: ErrorCode | None,
        evict: str = "",
    ) -> bool:
        """Write the final record ourselves, keeping the partial text, if no worker holds
        it (or only `evict`, found stalled). True if the answer is over."""
        meta = await self._store.meta(message_id)
        entries = await self._store.read_entries(message_id)
        chunks = [e for e in entries if isinstance(e, ChunkEntry)]
        last_seq = chunks[-1].seq if chunks else 0
        outcome = await self._store.finish(
            message_id,
            session_id,
            token="",
            # An evicted holder may write after `meta` was read: the finish then finds
            # another last_seq and refuses (GAP), and the answer is not over.
            last_seq=max(last_seq, meta.last_seq) if meta else last_seq,
            text="".join(c.delta for c in chunks),
            reason=reason,
            usage=Usage(completion_tokens=meta.completion_tokens if meta else 0),
            error=error,
            evict=evict,
        )
        return outcome in (FinishOutcome.OK, FinishOutcome.ALREADY_DONE, FinishOutcome.GONE)


class WorkerClient:
    """Calls `POST /v1/generate` through nginx and reads the NDJSON to its outcome.

    A call that brings nothing but heartbeats for `idle_limit` seconds is left (the
    worker lives but its answer does not move): the driver then decides, by the same
    recovery timeout, to try again or to give up."""

    def __init__(self, http: httpx.AsyncClient, worker_url: str, idle_limit: float) -> None:
        self._http = http
        self._url = worker_url.rstrip("/") + GENERATE_PATH
        self._idle_limit = idle_limit

    async def __call__(self, message_id: str, new: bool) -> tuple[CallResult, float | None]:
        progressed_at: float | None = None
        moved = time.monotonic()
        body = GenerateRequest(message_id=message_id, new=new).model_dump()
        try:
            async with self._http.stream("POST", self._url, json=body) as resp:
                if resp.status_code == 429:
                    return CallResult.BUSY, None
                if resp.status_code != 200:
                    log.warning("worker refused", extra={"detail": resp.status_code})
                    return CallResult.RETRY, None
                async for line in resp.aiter_lines():
                    if not line:
                        continue
                    event = parse_event(line)
                    now = time.monotonic()
                    if event.outcome is not None:
                        result = call_result(event.outcome)
                        return result, now if result == CallResult.DONE else progressed_at
                    if event.event == EventKind.PROGRESS:
                        progressed_at = moved = now
                    elif now - moved > self._idle_limit:
                        log.warning(
                            "the worker's answer stopped moving; leaving the call",
                            extra={"detail": f"{now - moved:.1f}s"},
                        )
                        return CallResult.RETRY, progressed_at
        except (httpx.HTTPError, ValueError) as exc:
            log.warning("generate call broke", extra={"detail": repr(exc)})
        return CallResult.RETRY, progressed_at
