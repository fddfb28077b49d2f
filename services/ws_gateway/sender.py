"""A connection's writer: the bounded outbox, the wake-ups, and the slow-client verdict.

Frames are queued with `send` from anywhere in the connection and written by `run`,
which the connection's main task awaits. A client that lets the queue stay full past
the grace period (or overflow twice the limit) is closed with 4008 (`Outbox` decides).
`wait_for_room` paces catch-up reads to the rate the client reads.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from pydantic import BaseModel

from services.common.protocol import CloseCode, encode
from services.ws_gateway.metrics import GatewayMetrics
from services.ws_gateway.outbox import Outbox

log = logging.getLogger(__name__)


class Signal:
    """`asyncio.Event`'s set / clear / wait without its waiter deque (about 700 bytes,
    two per connection): the futures exist only while someone waits."""

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = False
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> None:
        if self._set:
            return
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if self._waiters is not None and waiter in self._waiters:
                self._waiters.remove(waiter)


class Sender:
    def __init__(
        self,
        *,
        limit: int,
        grace: float,
        metrics: GatewayMetrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.outbox = Outbox(limit=limit, grace=grace)
        self._metrics = metrics
        self._clock = clock
        self._ready = Signal()
        self._drained = Signal()
        self._stopped = False
        self.close_code: int | None = None
        """Set once the connection must be closed, with the code to close with."""

    @property
    def closing(self) -> bool:
        return self.close_code is not None

    def send(self, frame: BaseModel) -> None:
        """Queue a frame; a client too slow to take it is closed with 4008."""
        if not self.outbox.push(encode(frame), self._clock()):
            self._too_slow()
            return
        self._ready.set()

    def close(self, code: int) -> None:
        """Stop sending and have the connection closed with `code` (the first one wins)."""
        if self.close_code is None:
            self.close_code = code
            self._ready.set()
            self._drained.set()

    def stop(self) -> None:
        """The client is gone: make `run` return without closing."""
        self._stopped = True
        self._ready.set()
        self._drained.set()

    async def run(self, send_text: Callable[[str], Awaitable[None]]) -> None:
        """Write queued frames until `close` or `stop`; exceptions of `send_text` propagate."""
        outbox = self.outbox
        while not self.closing and not self._stopped:
            await self._ready.wait()
            self._ready.clear()
            while len(outbox) and not self.closing and not self._stopped:
                if not outbox.check(self._clock()):
                    self._too_slow()
                    return
                self._metrics.queue_depth.observe(len(outbox))
                for text in outbox.pop_batch():
                    await send_text(text)
                if len(outbox) <= outbox.limit // 4:
                    self._drained.set()

    async def wait_for_room(self) -> None:
        """Block while the client still has half a queue of frames to read."""
        while len(self.outbox) > self.outbox.limit // 2 and not self.closing and not self._stopped:
            self._drained.clear()
            await self._drained.wait()

    def _too_slow(self) -> None:
        if not self.closing:
            self._metrics.slow_closes.inc()
            log.info("client too slow, closing with 4008")
            self.close(CloseCode.TOO_SLOW)
