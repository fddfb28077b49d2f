"""Token batching: group model tokens into chunks so each Redis write carries several.

`TokenBatcher` is the pure core (time is passed in); `batch_events` runs it over a
provider's event stream with a producer task, so a slow model still flushes on time.

Adaptive batching (`AdaptiveFlush`): every chunk costs the cluster about the same CPU
whatever it carries (a Redis append, a relay read, a frame), so a worker with many
answers flushes each of them less often, to keep its total chunk rate near
`WORKER_MAX_CHUNKS_PER_S`: each chunk then carries more tokens, and every client still
gets the same tokens per second. The interval never exceeds BATCH_MAX_FLUSH_MS, and an
answer's first chunk always goes out after BATCH_FLUSH_MS, so time to first chunk is
unchanged.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass

from services.ai_worker.providers.base import Finish, ProviderError, ProviderEvent
from services.common.tasks import cancel_and_wait

# Enough to absorb a burst from a fast model; a full queue makes the producer wait,
# which in turn paces reading from the provider.
_QUEUE_SIZE = 256


class AdaptiveFlush:
    """A worker's flush interval for all its answers: `base_s` while the worker is light;
    with `streams` answers, `streams / max_chunks_per_s` (their chunks together then
    stay near that rate), up to `max_s`."""

    def __init__(self, base_s: float, max_s: float, max_chunks_per_s: float) -> None:
        self.base_s = base_s
        self.max_s = max(max_s, base_s)
        self.max_chunks_per_s = max_chunks_per_s
        self.value = base_s

    def update(self, streams: int) -> float:
        self.value = min(self.max_s, max(self.base_s, streams / self.max_chunks_per_s))
        return self.value


class TokenBatcher:
    """Groups tokens into chunks: flush when flush_ms passed since the first pending token,
    or max_tokens are pending. With `adaptive`, chunks after the first wait its current
    interval instead (never less than flush_ms)."""

    def __init__(
        self, flush_ms: float, max_tokens: int, adaptive: AdaptiveFlush | None = None
    ) -> None:
        """Raises ValueError if max_tokens < 1."""
        if max_tokens < 1:
            raise ValueError("max_tokens must be at least 1")
        self._base = max(flush_ms, 0.0) / 1000.0
        self._adaptive = adaptive
        self._flushed = False
        """A chunk went out (the next ones may wait the adaptive interval)."""
        self._max_tokens = max_tokens
        self._pending: list[str] = []
        self._first_at = 0.0

    def add(self, text: str, now: float) -> str | None:
        """Add a token; return the chunk if this made max_tokens pending. Empty text is ignored."""
        if not text:
            return None
        if not self._pending:
            self._first_at = now
        self._pending.append(text)
        if len(self._pending) >= self._max_tokens:
            return self.flush()
        return None

    def due_in(self, now: float) -> float | None:
        """Seconds until the pending chunk is due (0 if overdue); None if nothing is pending."""
        if not self._pending:
            return None
        return max(0.0, self._first_at + self._flush_after() - now)

    def take_due(self, now: float) -> str | None:
        """Return the pending chunk if it is due, else None."""
        if self._pending and now >= self._first_at + self._flush_after():
            return self.flush()
        return None

    def flush(self) -> str | None:
        """Return whatever is pending (None if nothing) and start afresh."""
        if not self._pending:
            return None
        chunk = "".join(self._pending)
        self._pending.clear()
        self._flushed = True
        return chunk

    def _flush_after(self) -> float:
        """The first chunk goes out at the base pace; the next ones at the worker's."""
        if self._adaptive is None or not self._flushed:
            return self._base
        return max(self._base, self._adaptive.value)


@dataclass(frozen=True, slots=True)
class _Failed:
    error: Exception


class _End:
    pass


_END = _End()
_Item = ProviderEvent | _Failed | _End


async def batch_events(
    events: AsyncIterator[ProviderEvent],
    batcher: TokenBatcher,
    clock: Callable[[], float] = time.monotonic,
) -> AsyncGenerator[str | Finish, None]:
    """Yield non-empty chunk strings as they become due, then the provider's `Finish`.

    Pending text is flushed before the `Finish` and before an error propagates, so
    nothing the model produced is lost. Errors of `events` propagate unchanged; a
    stream that ends without a `Finish` raises ProviderError. Close this generator
    (e.g. `contextlib.aclosing`) when stopping early: that cancels and awaits the
    reading task and closes `events`.
    """
    queue: asyncio.Queue[_Item] = asyncio.Queue(maxsize=_QUEUE_SIZE)
    producer = asyncio.create_task(_produce(events, queue))
    try:
        while True:
            chunk = batcher.take_due(clock())
            if chunk:
                yield chunk
            try:
                # A timeout here means the pending chunk fell due while the model was
                # silent; loop round to flush it.
                async with asyncio.timeout(batcher.due_in(clock())):
                    item = await queue.get()
            except TimeoutError:
                continue
            # A chunk already due when the next token arrives goes out without it.
            chunk = batcher.take_due(clock())
            if chunk:
                yield chunk
            if isinstance(item, Finish):
                if (rest := batcher.flush()) is not None:
                    yield rest
                yield item
                return
            if isinstance(item, _Failed | _End):
                if (rest := batcher.flush()) is not None:
                    yield rest
                if isinstance(item, _Failed):
                    raise item.error
                raise ProviderError("provider stream ended without a finish")
            chunk = batcher.add(item.text, clock())
            if chunk:
                yield chunk
    finally:
        await cancel_and_wait(producer)


async def _produce(events: AsyncIterator[ProviderEvent], queue: asyncio.Queue[_Item]) -> None:
    """Move events into the queue; end with `_END`, or `_Failed` carrying the error."""
    try:
        async for event in events:
            await queue.put(event)
            if isinstance(event, Finish):
                return
        await queue.put(_END)
    except Exception as exc:  # noqa: BLE001 - handed to the consumer, which re-raises it
        await queue.put(_Failed(exc))
    finally:
        # Close the provider's generator now (its HTTP response, ...), not at GC.
        if isinstance(events, AsyncGenerator):
            await events.aclose()
