"""Admission under overload: when a node stops taking new answers, and for how long.

A node that takes every answer offered slows all of them down together once its CPU
is spent (every answer late, none refused). So both kinds of node admit new answers
against three signals and refuse the rest up front, before anything is written:

- how many answers the node has in hand (`max_answers`), and how many of them are
  still starting (`max_starting`: accepted, not a chunk yet), so that a burst of
  chats is let in a slice at a time rather than all at once, each slice served fast;
- its event loop's lag, smoothed (`LoopLag`): how late a 100 ms timer fires, which
  is how late every chunk on the node is. The lag also moves the node's own limit of
  answers in hand (`Admission.observe`, additive increase, multiplicative decrease):
  while the loop lags the limit drops below what the node holds, so new answers wait
  until enough have finished; while it keeps up the limit climbs back towards
  `max_answers`. The node settles near the most answers it serves at pace;
- on a gateway, the workers' own refusals: a worker that is full answers 429, and
  the gateway then refuses new chats while any answer it accepted still waits for a
  worker (and for `retry_after` after the last refusal), rather than accepting
  answers no worker will start.

A refused chat gets `busy` with `retry_after` (the client sends it again then); the
answers already admitted keep their pace. The decision is pure (`Admission.refusal`);
the lag is sampled by the one loop `LoopLag.run`.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

#: How often the loop lag is sampled.
LAG_SAMPLE_S = 0.1
#: Weight of the newest sample in the smoothed lag (about the last second counts).
LAG_ALPHA = 0.2
#: The adaptive limit of answers in hand never goes below this.
MIN_LIMIT = 10


class LoopLag:
    """The event loop's lag, an exponentially weighted mean of how late a timer fires."""

    def __init__(
        self,
        interval: float = LAG_SAMPLE_S,
        alpha: float = LAG_ALPHA,
        on_sample: Callable[[float], object] | None = None,
    ) -> None:
        self.interval = interval
        self.alpha = alpha
        self.value = 0.0
        """Smoothed lag in seconds."""
        self.on_sample = on_sample
        """Told the smoothed lag after every sample."""

    def sample(self, late_s: float) -> float:
        self.value += self.alpha * (max(0.0, late_s) - self.value)
        return self.value

    async def run(self) -> None:
        while True:
            start = time.monotonic()
            await asyncio.sleep(self.interval)
            value = self.sample(time.monotonic() - start - self.interval)
            if self.on_sample is not None:
                self.on_sample(value)


@dataclass(frozen=True)
class Refusal:
    reason: str
    """Why, for the client's message and the refusal metric's label."""
    retry_after: float
    """Seconds the client should wait before it sends the chat again."""


#: The refusal metric's label of each reason.
AT_CAPACITY = "at_capacity"
STARTING = "starting"
LAGGING = "lagging"
WORKERS_BUSY = "workers_busy"

REASONS = (AT_CAPACITY, STARTING, LAGGING, WORKERS_BUSY)
MESSAGES = {
    AT_CAPACITY: "this node is at capacity; retry later",
    STARTING: "this node is starting many answers; retry later",
    LAGGING: "this node is overloaded; retry later",
    WORKERS_BUSY: "no worker can take a new answer now; retry later",
}


class Slot:
    """One chat's place in `Admission.admitting`; released once."""

    __slots__ = ("_admission",)

    def __init__(self, admission: Admission) -> None:
        self._admission: Admission | None = admission

    def release(self) -> None:
        if self._admission is not None:
            self._admission.admitting -= 1
            self._admission = None


class Admission:
    """Whether a node takes one more answer now (pure: time and load are passed in)."""

    def __init__(
        self,
        max_answers: int,
        max_lag_s: float,
        retry_after: float,
        *,
        max_starting: int | None = None,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.max_answers = max_answers
        self.limit = max_answers
        """The answers in hand admitted now: `max_answers`, lowered while the loop lags."""
        self.max_starting = max_starting if max_starting is not None else max_answers
        self.max_lag_s = max_lag_s
        self.retry_after = retry_after
        self._jitter = jitter
        self._busy_until = 0.0
        self.admitting = 0
        """Chats admitted whose answer is not counted by the caller yet (see `slot`)."""

    def observe(self, lag_s: float, in_hand: int) -> int:
        """Move the limit by the loop's lag: below 90% of what the node holds while it
        lags past `max_lag_s` (never under MIN_LIMIT), else up by 5% (at least one)
        once the node holds about as many as the limit allows."""
        if lag_s > self.max_lag_s:
            floor = min(MIN_LIMIT, self.max_answers)
            self.limit = max(floor, min(self.limit, int(in_hand * 0.9)))
        elif in_hand >= self.limit - 1:
            self.limit = min(self.max_answers, self.limit + max(1, self.limit // 20))
        return self.limit

    @contextmanager
    def slot(self) -> Iterator[Slot]:
        """Hold while an admitted chat is being accepted: it counts as an answer in hand
        and starting, so chats checked meanwhile (every await of the accept lets others
        run) see it, and a burst cannot all pass the check before any is counted.
        `Slot.release` ends it early, once the caller counts the answer itself."""
        slot = Slot(self)
        self.admitting += 1
        try:
            yield slot
        finally:
            slot.release()

    def workers_busy(self, now: float) -> None:
        """A worker refused an answer for lack of room: refuse new ones for a while."""
        self._busy_until = max(self._busy_until, now + self.retry_after)

    def refusal(
        self, in_hand: int, lag_s: float, now: float, starting: int = 0, waiting: int = 0
    ) -> Refusal | None:
        """None to admit; else why not and when to try again. Retry times are spread
        over 0.5-1.5x so refused clients do not all come back in the same instant."""
        if in_hand + self.admitting >= self.limit:
            reason, wait = AT_CAPACITY, self.retry_after
        elif starting + self.admitting >= self.max_starting:
            reason, wait = STARTING, self.retry_after
        elif lag_s > self.max_lag_s:
            reason, wait = LAGGING, self.retry_after
        elif waiting > 0:
            reason, wait = WORKERS_BUSY, self.retry_after
        elif now < self._busy_until:
            reason, wait = WORKERS_BUSY, self._busy_until - now
        else:
            return None
        return Refusal(reason, round(wait * (0.5 + self._jitter()), 2))
