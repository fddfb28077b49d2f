"""Driving an answer's generation: the open call to a worker, and takeover when it breaks.

The call to `POST /v1/generate` (through nginx's least_conn upstream) stays open
for the life of the generation, so nginx balances by generations in flight and this
node notices a dead worker at once. When the call breaks, the same message id goes
to another worker, which continues after the last cached seq. If nothing makes
progress for STREAM_RECOVERY_TIMEOUT, the answer ends with `upstream_unavailable`.

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


CallWorker = Callable[[str], Awaitable[tuple[CallResult, bool]]]
"""One generate call for a message id: (how it ended, whether the answer progressed)."""


class Driver:
    def __init__(
        self,
        store: MessageStore,
        call_worker: CallWorker,
        *,
        node_id: str,
        recovery_timeout: float,
        metrics: GatewayMetrics,
    ) -> None:
        self._store = store
        self._call = call_worker
        self._node_id = node_id
        self._recovery_timeout = recovery_timeout
        self._metrics = metrics
        self._tasks: dict[str, asyncio.Task[None]] = {}

    @property
    def driving(self) -> int:
        return len(self._tasks)

    def drive(self, message_id: str, session_id: str) -> None:
        """Start driving the message unless this node already does."""
        if message_id in self._tasks:
            return
        task = asyncio.create_task(
            self._guarded(message_id, session_id), name=f"drive-{message_id}"
        )
        self._tasks[message_id] = task
        task.add_done_callback(lambda _t: self._tasks.pop(message_id, None))

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
            result, progressed = await self._call(message_id)
            now = time.monotonic()
            if progressed:
                last_progress = now
                backoff.reset()
            if result == CallResult.DONE:
                return
            if result == CallResult.LEASED:
                if await self._wait_lease_gone(message_id):
                    last_progress = time.monotonic()
                attempt = 0
                continue
            if now - last_progress > self._recovery_timeout:
                await self._give_up(message_id, session_id)
                return
            if await self._store.is_cancelled(message_id) and await self._finish_unleased(
                message_id, session_id, FinishReason.CANCELLED, None
            ):
                return
            await asyncio.sleep(backoff.next())

    async def _wait_lease_gone(self, message_id: str) -> bool:
        """Wait while another worker holds the lease; True if it made progress meanwhile."""
        start = await self._store.meta(message_id)
        start_seq = start.last_seq if start else 0
        while await self._store.generators.holder(message_id) is not None:  # noqa: ASYNC110 - Redis, not local state
            await asyncio.sleep(LEASE_POLL_S)
        end = await self._store.meta(message_id)
        return end is not None and end.last_seq > start_seq

    async def _give_up(self, message_id: str, session_id: str) -> None:
        log.error("no worker could finish the answer", extra={"message_id": message_id})
        if await self._finish_unleased(
            message_id, session_id, FinishReason.ERROR, ErrorCode.UPSTREAM_UNAVAILABLE
        ):
            self._metrics.upstream_failures.inc()

    async def _finish_unleased(
        self, message_id: str, session_id: str, reason: FinishReason, error: ErrorCode | None
    ) -> bool:
        """Write the final record ourselves, keeping the partial text, if no worker holds it."""
        entries = await self._store.read_entries(message_id)
        chunks = [e for e in entries if isinstance(e, ChunkEntry)]
        meta = await self._store.meta(message_id)
        outcome = await self._store.finish(
            message_id,
            session_id,
            token="",
            last_seq=chunks[-1].seq if chunks else 0,
            text="".join(c.delta for c in chunks),
            reason=reason,
            usage=Usage(completion_tokens=meta.completion_tokens if meta else 0),
            error=error,
        )
        return outcome in (FinishOutcome.OK, FinishOutcome.ALREADY_DONE, FinishOutcome.GONE)


class WorkerClient:
    """Calls `POST /v1/generate` through nginx and reads the NDJSON to its outcome."""

    def __init__(self, http: httpx.AsyncClient, worker_url: str) -> None:
        self._http = http
        self._url = worker_url.rstrip("/") + GENERATE_PATH

    async def __call__(self, message_id: str) -> tuple[CallResult, bool]:
        progressed = False
        body = GenerateRequest(message_id=message_id).model_dump()
        try:
            async with self._http.stream("POST", self._url, json=body) as resp:
                if resp.status_code != 200:
                    log.warning("worker refused", extra={"detail": resp.status_code})
                    return CallResult.RETRY, False
                async for line in resp.aiter_lines():
                    if not line:
                        continue
                    event = parse_event(line)
                    if event.outcome is not None:
                        result = call_result(event.outcome)
                        return result, progressed or result == CallResult.DONE
                    if event.event == EventKind.PROGRESS:
                        progressed = True
        except (httpx.HTTPError, ValueError) as exc:
            log.warning("generate call broke", extra={"detail": repr(exc)})
        return CallResult.RETRY, progressed
