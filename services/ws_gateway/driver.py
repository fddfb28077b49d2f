"""Driving an answer's generation: the open call to a worker, and takeover when it breaks.

The call to `POST /v1/generate` (through nginx's least_conn upstream) stays open
for the life of the generation, so nginx balances by generations in flight and this
node notices a dead worker at once. When the call breaks, the same message id goes
to another worker, which continues after the last cached seq. If nothing makes
progress for STREAM_RECOVERY_TIMEOUT, the answer ends with `upstream_unavailable`.

One gateway drives a message at a time (a lease of its own in Redis), so a gateway
that finds a stream nobody generates (its driver died too) can take over.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from enum import StrEnum

import httpx
from redis.asyncio import Redis
from redis.exceptions import RedisError

from services.common.keys import Keys
from services.common.logging import message_id_var, session_id_var
from services.common.message_store import FinishOutcome, MessageStore
from services.common.protocol import ErrorCode, FinishReason, MessageStatus, Usage
from services.common.settings import Settings
from services.common.streams import ChunkEntry
from services.ws_gateway.metrics import GatewayMetrics

log = logging.getLogger(__name__)

DRIVER_TTL_MS = 10_000


class CallResult(StrEnum):
    DONE = "done"
    LEASED = "leased"
    RETRY = "retry"


class Driver:
    def __init__(
        self,
        http: httpx.AsyncClient,
        redis: Redis,
        keys: Keys,
        store: MessageStore,
        settings: Settings,
        metrics: GatewayMetrics,
    ) -> None:
        self._http = http
        self._r = redis
        self._k = keys
        self._store = store
        self._settings = settings
        self._metrics = metrics
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._token = f"{settings.node_id}:{uuid.uuid4().hex[:8]}"

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
        async with self._r.pipeline(transaction=False) as pipe:
            pipe.exists(self._k.message_lease(message_id))
            pipe.exists(self._k.message_driver(message_id))
            pipe.hmget(self._k.message_meta(message_id), "status", "session_id")
            lease, driver, (status, session_id) = await pipe.execute()
        if lease or driver or status in (None, MessageStatus.DONE) or session_id is None:
            return
        log.info("adopting an orphaned answer", extra={"message_id": message_id})
        self.drive(message_id, session_id)

    async def close(self) -> None:
        """Stop driving; workers go on generating and another node can adopt."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _guarded(self, message_id: str, session_id: str) -> None:
        message_id_var.set(message_id)
        session_id_var.set(session_id)
        key = self._k.message_driver(message_id)
        if not await self._r.set(key, self._token, nx=True, px=DRIVER_TTL_MS):
            return
        renew = asyncio.create_task(self._renew(key))
        try:
            await self._drive(message_id, session_id)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - a driver must never die silently
            log.exception("driver failed")
        finally:
            renew.cancel()
            with contextlib.suppress(asyncio.CancelledError, RedisError):
                await renew
            with contextlib.suppress(RedisError):
                await asyncio.shield(self._release(key))

    async def _renew(self, key: str) -> None:
        while True:
            await asyncio.sleep(DRIVER_TTL_MS / 3000)
            with contextlib.suppress(RedisError):
                await self._r.pexpire(key, DRIVER_TTL_MS)

    async def _release(self, key: str) -> None:
        if await self._r.get(key) == self._token:
            await self._r.delete(key)

    async def _drive(self, message_id: str, session_id: str) -> None:
        last_progress = time.monotonic()
        backoff = 0.05
        attempt = 0
        while True:
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
                last_progress, backoff = now, 0.05
            if result == CallResult.DONE:
                return
            if result == CallResult.LEASED:
                if await self._wait_lease_gone(message_id):
                    last_progress = time.monotonic()
                attempt = 0
                continue
            if now - last_progress > self._settings.stream_recovery_timeout:
                await self._give_up(message_id, session_id)
                return
            if await self._store.is_cancelled(message_id):
                if await self._finish_unleased(
                    message_id, session_id, FinishReason.CANCELLED, None
                ):
                    return
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 1.0)

    async def _call(self, message_id: str) -> tuple[CallResult, bool]:
        """One generate call; returns how it ended and whether the answer progressed."""
        progressed = False
        url = self._settings.worker_url.rstrip("/") + "/v1/generate"
        try:
            async with self._http.stream("POST", url, json={"message_id": message_id}) as resp:
                if resp.status_code != 200:
                    log.warning("worker refused", extra={"detail": resp.status_code})
                    return CallResult.RETRY, False
                async for line in resp.aiter_lines():
                    if not line:
                        continue
                    event = json.loads(line).get("event")
                    if event == "progress":
                        progressed = True
                    elif event in ("done", "not_found"):
                        return CallResult.DONE, True
                    elif event == "leased":
                        return CallResult.LEASED, progressed
                    elif event in ("failed", "lost", "handed_over"):
                        return CallResult.RETRY, progressed
        except (httpx.HTTPError, ValueError) as exc:
            log.warning("generate call broke", extra={"detail": repr(exc)})
        return CallResult.RETRY, progressed

    async def _wait_lease_gone(self, message_id: str) -> bool:
        """Wait while another worker holds the lease; True if it made progress meanwhile."""
        start = await self._store.meta(message_id)
        start_seq = start.last_seq if start else 0
        while await self._store.lease_holder(message_id) is not None:  # noqa: ASYNC110 - Redis, not local state
            await asyncio.sleep(0.1)
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
        return outcome in (FinishOutcome.OK, FinishOutcome.ALREADY_DONE)
