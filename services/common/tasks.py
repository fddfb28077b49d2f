"""Background tasks: stop them cleanly, and keep a node's long-lived ones alive.

`cancel_and_wait` replaces the cancel-then-await blocks. `TaskSupervisor` runs a
node's loops (the relay reader, the stall watcher, the notifier): a loop that dies
is logged and restarted with backoff, and while it is down `problem()` says so,
which turns the node's `/ready` false.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


def raise_if_cancelling() -> None:
    """Re-raise a cancellation a library swallowed: redis-py can turn a cancel that lands
    in a read into a connection error, and a retry loop that caught it would then run
    on after its task was cancelled (hanging the shutdown that waits for it)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


#: How long a cancelled task gets to end before it is cancelled again.
RECANCEL_S = 3.0


async def cancel_and_wait(*tasks: asyncio.Task[Any] | None) -> None:
    """Cancel the tasks and wait for them to end; their errors are logged and dropped.

    Waiting uses `asyncio.wait`, which never raises the tasks' own cancellation, so a
    cancellation of the caller (and only that) still propagates. A task still running
    RECANCEL_S after its cancellation is cancelled again, until it ends."""
    live = [t for t in tasks if t is not None]
    pending = set(live)
    while pending:
        for task in pending:
            task.cancel()
        _done, pending = await asyncio.wait(pending, timeout=RECANCEL_S)
        for task in pending:
            # A library swallowed the cancellation (redis-py can, mid-command) and the
            # task went on waiting: cancel it again rather than hang a shutdown.
            log.warning("a task outlived its cancellation", extra={"detail": task.get_name()})
    for task in live:
        if not task.cancelled() and task.exception() is not None:
            log.debug("task %s ended with an error", task.get_name(), exc_info=task.exception())


def task_stacks(limit: int = 40) -> str:
    """Where every live task of this loop is waiting, one stack each (for a stuck
    shutdown's log line)."""
    out = io.StringIO()
    tasks = sorted(asyncio.all_tasks(), key=lambda t: t.get_name())
    for task in tasks[:limit]:
        if task is asyncio.current_task():
            continue
        task.print_stack(limit=12, file=out)
    if len(tasks) > limit:
        out.write(f"... and {len(tasks) - limit} more tasks\n")
    return out.getvalue()


_watches: set[asyncio.Task[None]] = set()


_drain_callbacks: list[Callable[[], None]] = []


def on_drain(callback: Callable[[], None]) -> Callable[[], None]:
    """Call `callback` when the node starts shutting down (SIGTERM/SIGINT), before the
    server waits for its open requests: a long-lived response ends then instead of
    holding the shutdown for the whole graceful timeout. Returns a remover."""
    _drain_callbacks.append(callback)
    return lambda: _drain_callbacks.remove(callback) if callback in _drain_callbacks else None


def begin_drain() -> None:
    """The node is shutting down (called from the server's signal handler)."""
    for callback in list(_drain_callbacks):
        try:
            callback()
        except Exception:  # noqa: BLE001 - one callback must not stop the others
            log.exception("a drain callback failed")


async def watch_shutdown(after: float) -> None:
    """Start a watchdog for a node's shutdown: if the process is still running `after`
    seconds later, log where every task waits (a step that swallowed its cancellation
    shows up here). Push it last on the lifespan's exit stack so it starts first."""

    async def watch() -> None:
        await asyncio.sleep(after)
        log.error(
            "shutdown is taking longer than expected",
            extra={"detail": f"after {after:.0f}s; tasks:\n{task_stacks()}"},
        )

    task = asyncio.create_task(watch(), name="shutdown-watch")
    _watches.add(task)
    task.add_done_callback(_watches.discard)


@dataclass
class _Supervised:
    name: str
    factory: Callable[[], Awaitable[None]]
    task: asyncio.Task[None] | None = None
    crashes: int = 0
    down_since: float | None = None
    """Monotonic time of the last crash while the loop is not yet back."""


class TaskSupervisor:
    """Runs named forever-loops; restarts one that returns or raises, with backoff."""

    def __init__(self, *, backoff: float = 0.1, max_backoff: float = 5.0) -> None:
        self._backoff = backoff
        self._max_backoff = max_backoff
        self._loops: dict[str, _Supervised] = {}
        self._closing = False

    def start(self, name: str, factory: Callable[[], Awaitable[None]]) -> None:
        loop = _Supervised(name, factory)
        self._loops[name] = loop
        loop.task = asyncio.create_task(self._keep(loop), name=f"supervised-{name}")

    def problem(self) -> str | None:
        """None when every loop runs, else which ones are down."""
        down = [
            f"{n} restarting after {s.crashes} crash(es)"
            for n, s in self._loops.items()
            if s.down_since is not None
        ]
        return "; ".join(down) or None

    def crashes(self, name: str) -> int:
        return self._loops[name].crashes

    async def close(self) -> None:
        self._closing = True
        await cancel_and_wait(*(s.task for s in self._loops.values()))

    async def _keep(self, loop: _Supervised) -> None:
        delay = self._backoff
        while not self._closing:
            started = time.monotonic()
            try:
                await loop.factory()
                log.error("background loop returned; restarting", extra={"detail": loop.name})
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - logged, counted and restarted
                log.exception("background loop crashed; restarting", extra={"detail": loop.name})
            loop.crashes += 1
            loop.down_since = time.monotonic()
            # A loop that ran for a while before dying starts again at the short delay.
            if loop.down_since - started > 10 * self._max_backoff:
                delay = self._backoff
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._max_backoff)
            loop.down_since = None
