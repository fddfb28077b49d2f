"""The load generator of `make bench`: many light clients in a few processes.

Why processes: one Python process reading 100 streams of 1,000 chunks each would be
the bottleneck of the benchmark, not the target. So the clients are spread over N
spawned processes (default 2), each running its own uvloop; the parent only starts
them, releases them together (a barrier, so that every stream starts at the same
moment), draws a progress line and merges what they measured into one picklable
result. Clients are kept light: one reader task per socket that handles every frame
as it comes (no polling, no per-frame timer; one deadline per answer), JSON parsed
once, counters kept incrementally instead of storing every seq.

Protocols (tests/bench/targets.py): CHAT_V1 (docs/protocol.md sections 1-2) and
SOCKETIO, spoken as raw Engine.IO v4 over the same websockets library so that both
targets are measured through the same client code.

Clocks: intervals (time to first chunk, gaps, durations) come from `time.monotonic()`
inside one process; anything compared across processes (the measured window, chunk
receive times for the throughput plot) from `time.time()`.

Every loop is bounded by a deadline; the only sleeps are backoff between retries and
the `retry_after` of a refused chat. Every process is joined (terminated, then killed,
if it hangs) before a call returns. Traffic goes only to the target's URL (loopback);
client n uses its own source address `source_ip(n, first_octet)`.

Callers: the load processes are started with "spawn", which imports the caller's
`__main__` module again in each of them, so a script that calls `run_streams` or
`hold_idle` must do its work under `if __name__ == "__main__":`.
"""

from __future__ import annotations

import asyncio
import errno
import json
import math
import multiprocessing
import os
import queue
import resource
import secrets
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from tests.bench.targets import CHAT_V1, SOCKETIO, ModelShape, Target, source_ip

if TYPE_CHECKING:
    from multiprocessing.queues import Queue
    from multiprocessing.synchronize import Event as MpEvent

DEFAULT_PROMPT = "Benchmark question about distributed systems: how do streams work?"
HANDSHAKES_IN_FLIGHT = 200
"""Per process: more would only queue in the target's accept backlog and time out."""
HANDSHAKE_TIMEOUT = 10.0
"""Seconds one connect attempt (TCP, upgrade, welcome or `40`) may take."""
BACKOFF_FIRST = 0.05
BACKOFF_MAX = 2.0
CLOSE_TIMEOUT = 3.0
"""websockets' wait for the peer's close frame; the whole close phase is bounded too."""
CLOSE_BUDGET = 10.0
PROGRESS_EVERY = 0.5
"""Seconds between a load process' progress messages (and progress line redraws)."""
SPAWN_GRACE = 30.0
"""Seconds past its own deadline the parent gives a load process (spawn, import, report)
before it terminates it."""
HOLD_SLACK = 30.0
"""Seconds an idle-holding process waits past connect deadline + hold_s for the release."""
MAX_FRAME = 2**22
COMPRESSION: str | None = None
"""No permessage-deflate: it would cost both sides CPU on tiny frames and measure zlib."""
REFUSALS = frozenset({"busy", "rate_limited"})
"""Error codes that mean "wait `retry_after` and send the chat again"."""
NORMAL_FINISH = frozenset({"stop", "length"})


# --------------------------------------------------------------------------- statistics
# Small pure functions, unit tested in tests/unit/test_bench_stats.py.


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) of already sorted values, interpolating linearly
    between closest ranks (numpy's default), so small samples give stable numbers."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile {q} is not within 0..100")
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    low = sorted_values[lo]
    return low + (sorted_values[hi] - low) * (pos - lo)


@dataclass(frozen=True, slots=True)
class Summary:
    """A distribution in the unit of its values (seconds, or a ratio)."""

    n: int
    mean: float
    min: float
    p50: float
    p95: float
    p99: float
    max: float


def summarize(values: Iterable[float]) -> Summary | None:
    """n, mean, min, p50/p95/p99, max of `values`; None when there are none (a report
    prints "-" rather than a made-up zero)."""
    data = sorted(values)
    if not data:
        return None
    return Summary(
        n=len(data),
        mean=math.fsum(data) / len(data),
        min=data[0],
        p50=percentile(data, 50),
        p95=percentile(data, 95),
        p99=percentile(data, 99),
        max=data[-1],
    )


def rate(count: int, start: float, end: float) -> float:
    """count per second over [start, end]; 0 for an empty or reversed window."""
    span = end - start
    return count / span if span > 0 else 0.0


def count_within(times: Iterable[float], start: float, end: float) -> int:
    """How many of `times` fall in [start, end]."""
    return sum(1 for t in times if start <= t <= end)


def throughput_bins(
    times: Iterable[float], start: float, end: float, bin_s: float = 1.0
) -> list[tuple[float, float]]:
    """Events per second in consecutive bins of `bin_s` over [start, end], as
    (bin start in seconds since `start`, rate); the last bin may be shorter and is
    divided by its own width. Times outside the window are left out."""
    if bin_s <= 0:
        raise ValueError("bin_s must be > 0")
    span = end - start
    if span <= 0:
        return []
    nbins = max(1, math.ceil(span / bin_s - 1e-9))
    counts = [0] * nbins
    for t in times:
        if start <= t <= end:
            counts[min(int((t - start) / bin_s), nbins - 1)] += 1
    out = []
    for i, c in enumerate(counts):
        width = min(bin_s, span - i * bin_s)
        out.append((i * bin_s, c / width if width > 0 else 0.0))
    return out


def ratios(values: Iterable[float], ideal: float) -> list[float]:
    """Each value divided by `ideal` (e.g. duration / the model's own pace); [] when
    there is no ideal (a full-speed model has none)."""
    if ideal <= 0:
        return []
    return [v / ideal for v in values]


def merge_counts(parts: Iterable[dict[str, int]]) -> dict[str, int]:
    """Sum of per-process {key: count} maps."""
    total: Counter[str] = Counter()
    for part in parts:
        total.update(part)
    return dict(total)


# --------------------------------------------------------------------------- results


@dataclass(slots=True)
class AnswerRecord:
    """One answer as a client saw it. Intervals are seconds (monotonic, in the client's
    process); `sent`/`done_at` are wall-clock seconds (time.time())."""

    stream: int
    """Client index n (its source address is source_ip(n, first_octet))."""
    index: int
    """Which of the stream's answers (0-based, asked one after another)."""
    proc: int
    """Load process that ran it."""
    first_sent: float | None = None
    """Wall clock when the chat was first sent (before any refusal)."""
    sent: float | None = None
    """Wall clock when the chat that was accepted was sent (after any refusals)."""
    done_at: float | None = None
    """Wall clock when `done` arrived."""
    ack: float | None = None
    """Seconds from chat sent to its ack."""
    ttfc: float | None = None
    """Seconds from chat sent to the first chunk."""
    gaps: list[float] = field(default_factory=list)
    """Seconds between consecutive chunks (chunks - 1 values)."""
    duration: float | None = None
    """Seconds from chat sent to done."""
    chunks: int = 0
    text_len: int = 0
    """Characters of all deltas."""
    last_seq: int | None = None
    """From done."""
    exactly_once: bool = False
    """Seqs were exactly 1..last_seq, in order, no duplicate, and done came."""
    finish_reason: str | None = None
    usage: dict[str, int] | None = None
    refusals: int = 0
    """Times this chat was refused (busy/rate_limited) before it was accepted."""
    resumes: int = 0
    """Times the server said the follow failed (`internal` with the message id) and the
    client resumed after its last seq, as a real client does."""
    error: str | None = None
    """Why it failed: "timeout", "closed 1006", "error <code>", "finish error",
    "not connected: <why>", ...; None when it ended with done stop/length."""


@dataclass(slots=True)
class ProcSpan:
    """One load process' timeline, wall clock seconds (time.time())."""

    proc: int
    pid: int
    clients: int
    """Sockets it was asked to open."""
    start: float
    """Its run began (after its imports)."""
    connected: float | None = None
    """Its connect phase ended (every socket open or given up)."""
    go: float | None = None
    """It saw the barrier released (run_streams) or the hold ended (hold_idle)."""
    end: float | None = None
    """It had closed every socket."""


@dataclass
class StreamsResult:
    """Everything `run_streams` measured, merged over its processes. Picklable."""

    target: str
    protocol: str
    streams: int
    answers_per_stream: int
    answers: list[AnswerRecord] = field(default_factory=list)
    """streams * answers_per_stream records, sorted by (stream, index); answers never
    sent (no connection, deadline, a crashed load process) are there with their `error`."""
    chunk_times: list[float] = field(default_factory=list)
    """Wall clock (time.time()) of every chunk received, all processes, unsorted."""
    procs: list[ProcSpan] = field(default_factory=list)
    connected: int = 0
    """Clients whose handshake completed."""
    connect_failures: int = 0
    connect_errors: dict[str, int] = field(default_factory=dict)
    """Last error of each failed client, by kind ("refused", "http 503", "timeout", ...)."""
    connect_retries: int = 0
    """Failed handshake attempts that were retried (successful clients included)."""
    connect_times: list[float] = field(default_factory=list)
    """Seconds the successful handshake attempt of each client took."""
    refusals: dict[str, int] = field(default_factory=dict)
    """Chats refused then sent again, by error code (busy, rate_limited)."""
    crashed: list[str] = field(default_factory=list)
    """Load processes that died or hung (their clients are missing from the records)."""

    @property
    def total(self) -> int:
        return len(self.answers)

    @property
    def ok(self) -> int:
        """Answers that ended with done stop/length and were received exactly once."""
        return sum(1 for a in self.answers if a.error is None and a.exactly_once)

    @property
    def failed(self) -> int:
        return sum(1 for a in self.answers if a.error is not None)

    @property
    def not_exactly_once(self) -> int:
        """Answers that ended normally but whose seqs were not exactly 1..last_seq."""
        return sum(1 for a in self.answers if a.error is None and not a.exactly_once)

    @property
    def errors(self) -> dict[str, int]:
        """Failed answers by error string."""
        return dict(Counter(a.error for a in self.answers if a.error is not None))

    @property
    def chunks(self) -> int:
        return len(self.chunk_times)

    @property
    def window(self) -> tuple[float, float] | None:
        """Wall clock (first chat sent, last done): the measured window. If no answer
        got its done, the last chunk ends it."""
        sent = [a.sent for a in self.answers if a.sent is not None]
        if not sent:
            return None
        ends = [a.done_at for a in self.answers if a.done_at is not None]
        end = max(ends) if ends else max(self.chunk_times, default=min(sent))
        return min(sent), end

    @property
    def measured_s(self) -> float:
        """Seconds of the measured window."""
        w = self.window
        return w[1] - w[0] if w else 0.0

    @property
    def chunks_per_second(self) -> float:
        """Chunks received within the window, per second of the window."""
        w = self.window
        if w is None:
            return 0.0
        return rate(count_within(self.chunk_times, *w), *w)

    @property
    def text_per_second(self) -> float:
        """Characters of answer text per second of the window."""
        return rate(sum(a.text_len for a in self.answers), *(self.window or (0.0, 0.0)))

    def ttfc(self) -> Summary | None:
        """Seconds from chat sent to first chunk, over answers that got one."""
        return summarize(a.ttfc for a in self.answers if a.ttfc is not None)

    def gaps(self) -> Summary | None:
        """Seconds between consecutive chunks, over every gap of every answer."""
        return summarize(g for a in self.answers for g in a.gaps)

    def refused_waits(self) -> Summary | None:
        """Seconds from a chat's first send to the send that was accepted, over the
        answers refused at least once (how long admission made them wait)."""
        return summarize(
            a.sent - a.first_sent
            for a in self.answers
            if a.refusals and a.sent is not None and a.first_sent is not None
        )

    def stalled(self, silence_s: float) -> int:
        """Answers that went silent for more than `silence_s` between two chunks, or
        before the first chunk once accepted."""
        return sum(
            1
            for a in self.answers
            if (a.ttfc is not None and a.ttfc > silence_s) or any(g > silence_s for g in a.gaps)
        )

    def durations(self) -> Summary | None:
        """Seconds from chat sent to done, over answers that got their done."""
        return summarize(a.duration for a in self.answers if a.duration is not None)

    def duration_ratio(self, shape: ModelShape) -> Summary | None:
        """duration / shape.ideal_duration (1.0 = as fast as the model itself); None for
        a full-speed shape, which has no ideal."""
        values = [a.duration for a in self.answers if a.duration is not None]
        return summarize(ratios(values, shape.ideal_duration))

    def throughput(self, bin_s: float = 1.0) -> list[tuple[float, float]]:
        """(seconds since the first chat, chunks/s) per bin over the measured window."""
        w = self.window
        return throughput_bins(self.chunk_times, w[0], w[1], bin_s) if w else []


@dataclass
class IdleResult:
    """What `hold_idle` measured, merged over its processes. Picklable."""

    target: str
    protocol: str
    requested: int
    connected: int = 0
    """Sockets whose handshake completed."""
    connect_failures: int = 0
    connect_errors: dict[str, int] = field(default_factory=dict)
    connect_retries: int = 0
    connect_times: list[float] = field(default_factory=list)
    """Seconds the successful handshake attempt of each socket took."""
    dropped: int = 0
    """Sockets the other side closed before the hold ended."""
    drop_reasons: dict[str, int] = field(default_factory=dict)
    """Dropped sockets by reason ("closed 1011", "disconnected", ...)."""
    all_connected: float | None = None
    """Wall clock when every process had finished connecting (the hold began)."""
    released: float | None = None
    """Wall clock when the hold ended (hold_s elapsed or `stop` set)."""
    procs: list[ProcSpan] = field(default_factory=list)
    crashed: list[str] = field(default_factory=list)

    @property
    def open_at_end(self) -> int:
        return self.connected - self.dropped

    @property
    def connect_s(self) -> float | None:
        """Seconds from the first process start to the hold's start."""
        if self.all_connected is None or not self.procs:
            return None
        return self.all_connected - min(p.start for p in self.procs)

    @property
    def held_s(self) -> float | None:
        """Seconds the sockets were held open after all connected."""
        if self.all_connected is None or self.released is None:
            return None
        return self.released - self.all_connected


class Flag(Protocol):
    """threading.Event or multiprocessing.Event (what the caller may pass)."""

    def set(self) -> None: ...

    def is_set(self) -> bool: ...


# --------------------------------------------------------------------------- load process


@dataclass(frozen=True, slots=True)
class _Job:
    """What one load process is asked to do (pickled to it)."""

    mode: str
    """"streams" or "idle"."""
    target: Target
    proc: int
    procs: int
    count: int
    """All clients of the run; this process takes n = proc, proc + procs, ..."""
    first_octet: int
    run: str
    connect_timeout: float
    """Seconds from the process' own start (spawning is not the target's fault) to stop
    retrying handshakes; never past `deadline`."""
    deadline: float
    """Wall clock: streams: every answer must be done; idle: the latest release."""
    answers: int = 1
    prompt: str = DEFAULT_PROMPT


@dataclass(slots=True)
class _Counts:
    """A load process' running totals, sent to the parent for the progress line."""

    connected: int = 0
    connect_failures: int = 0
    answers: int = 0
    failed: int = 0
    chunks: int = 0
    dropped: int = 0


@dataclass
class _ProcResult:
    span: ProcSpan
    counts: _Counts
    records: list[AnswerRecord] = field(default_factory=list)
    chunk_times: list[float] = field(default_factory=list)
    connect_errors: dict[str, int] = field(default_factory=dict)
    connect_retries: int = 0
    connect_times: list[float] = field(default_factory=list)
    refusals: dict[str, int] = field(default_factory=dict)
    drop_reasons: dict[str, int] = field(default_factory=dict)


class _HandshakeError(Exception):
    """The target answered the handshake with something we cannot use (not retried)."""


class _Pending:
    """The answer a client is waiting for; fed by the client's reader task."""

    __slots__ = (
        "rec",
        "cmid",
        "mid",
        "sent",
        "last",
        "expected",
        "in_order",
        "early",
        "future",
        "error_code",
    )

    def __init__(self, rec: AnswerRecord, cmid: str, future: asyncio.Future[tuple[Any, ...]]):
        self.rec = rec
        self.cmid = cmid
        self.mid: str | None = None
        self.sent = 0.0
        self.last: float | None = None
        self.expected = 1
        self.in_order = True
        self.early: list[tuple[str, dict[str, Any], float, float]] = []
        """Chunks/done that came before the ack (a narrow race the protocol allows)."""
        self.future = future
        self.error_code: str | None = None

    def resolve(self, outcome: tuple[Any, ...]) -> None:
        if not self.future.done():
            self.future.set_result(outcome)


class _Client:
    """One socket and its reader task. The reader handles every frame as it arrives
    (Engine.IO pings, chunks, done), so waiting never needs polling or a timer."""

    __slots__ = (
        "ws",
        "sio",
        "pending",
        "closed",
        "reader",
        "counts",
        "chunk_times",
        "refusals",
        "sends",
    )

    def __init__(
        self,
        ws: ClientConnection,
        sio: bool,
        counts: _Counts,
        chunk_times: list[float],
        refusals: Counter[str],
    ) -> None:
        self.ws = ws
        self.sio = sio
        self.pending: _Pending | None = None
        self.closed: str | None = None
        self.reader: asyncio.Task[None] | None = None
        self.counts = counts
        self.chunk_times = chunk_times
        self.refusals = refusals
        self.sends: set[asyncio.Task[None]] = set()
        """Frames the reader sends (a resume), kept until sent."""

    def start(self) -> None:
        self.reader = asyncio.create_task(self._read())

    def _sent(self, task: asyncio.Task[None]) -> None:
        """A send task ended; a socket that closed meanwhile shows in the reader."""
        self.sends.discard(task)
        if not task.cancelled():
            task.exception()

    async def _read(self) -> None:
        ws = self.ws
        loads = json.loads
        monotonic = time.monotonic
        reason: str | None = None
        try:
            async for raw in ws:
                if not isinstance(raw, str):
                    continue
                now = monotonic()
                if self.sio:
                    if raw == "2":
                        await ws.send("3")
                        continue
                    if not raw.startswith("42"):
                        if raw == "1" or raw.startswith("41"):
                            reason = "disconnected"
                            break
                        continue
                    try:
                        event = loads(raw[raw.index("[", 2) :])
                        name = event[0]
                        data = event[1] if len(event) > 1 else {}
                    except (ValueError, TypeError, IndexError, KeyError):
                        continue
                    if isinstance(data, dict):
                        self._frame(name, data, now)
                else:
                    try:
                        frame = loads(raw)
                    except ValueError:
                        continue
                    if isinstance(frame, dict):
                        self._frame(frame.get("type"), frame, now)
        except ConnectionClosed:
            pass
        finally:
            self.closed = self.closed or reason or f"closed {ws.close_code or 1006}"
            if self.pending is not None:
                self.pending.resolve(("closed", self.closed))
        if reason is not None:
            # Engine.IO said goodbye: close the socket too (bounded by close_timeout).
            await ws.close()

    def _frame(self, typ: Any, data: dict[str, Any], now: float) -> None:
        p = self.pending
        if p is None:
            return  # pong, a frame between answers, ...
        if typ == "chunk":
            if data.get("message_id") != p.mid:
                if p.mid is None:
                    p.early.append((typ, data, now, time.time()))
                return
            self._chunk(p, data, now, time.time())
        elif typ == "done":
            if data.get("message_id") != p.mid:
                if p.mid is None:
                    p.early.append((typ, data, now, time.time()))
                return
            self._done(p, data, now, time.time())
        elif typ == "ack":
            cmid = data.get("client_msg_id")
            mid = data.get("message_id")
            if p.mid is None and cmid in (p.cmid, None) and isinstance(mid, str):
                p.mid = mid
                p.rec.ack = now - p.sent
                early, p.early = p.early, []
                for kind, frame, t, wall in early:
                    if frame.get("message_id") != mid:
                        continue
                    if kind == "chunk":
                        self._chunk(p, frame, t, wall)
                    else:
                        self._done(p, frame, t, wall)
        elif typ == "error":
            code = str(data.get("code"))
            if p.mid is not None:
                if data.get("message_id") != p.mid:
                    return
                if code == "internal" and not self.sio:
                    # The server could not follow (or replay) the answer for us: resume
                    # after the last seq shown, as the protocol's checklist says.
                    p.rec.resumes += 1
                    resume = {"type": "resume", "message_id": p.mid, "after_seq": p.expected - 1}
                    task = asyncio.create_task(self.ws.send(json.dumps(resume)))
                    self.sends.add(task)
                    task.add_done_callback(self._sent)
                else:
                    p.error_code = code  # done follows
            elif data.get("client_msg_id") in (p.cmid, None):
                if code in REFUSALS:
                    retry = data.get("retry_after")
                    wait = float(retry) if isinstance(retry, int | float) else 1.0
                    p.resolve(("refused", code, max(0.0, wait)))
                else:
                    p.resolve(("error", code))

    def _chunk(self, p: _Pending, data: dict[str, Any], now: float, wall: float) -> None:
        rec = p.rec
        if p.last is None:
            rec.ttfc = now - p.sent
        else:
            rec.gaps.append(now - p.last)
        p.last = now
        if data.get("seq") == p.expected:
            p.expected += 1
        else:
            p.in_order = False
        rec.chunks += 1
        delta = data.get("delta")
        if isinstance(delta, str):
            rec.text_len += len(delta)
        self.chunk_times.append(wall)
        self.counts.chunks += 1

    def _done(self, p: _Pending, data: dict[str, Any], now: float, wall: float) -> None:
        rec = p.rec
        rec.duration = now - p.sent
        rec.done_at = wall
        last_seq = data.get("last_seq")
        rec.last_seq = last_seq if isinstance(last_seq, int) else None
        reason = data.get("finish_reason")
        rec.finish_reason = reason if isinstance(reason, str) else None
        usage = data.get("usage")
        if isinstance(usage, dict):
            rec.usage = {k: v for k, v in usage.items() if isinstance(v, int)}
        rec.exactly_once = p.in_order and last_seq == p.expected - 1
        if p.error_code is not None:
            rec.error = f"error {p.error_code}"
        elif rec.finish_reason not in NORMAL_FINISH:
            rec.error = f"finish {rec.finish_reason}"
        p.resolve(("done",))

    async def ask(self, rec: AnswerRecord, text: str, cmid: str) -> None:
        """Send one chat and wait for its done, sending it again after a refusal. The
        caller bounds it with the run's deadline."""
        loop = asyncio.get_running_loop()
        if self.sio:
            payload = "42" + json.dumps(["chat", {"text": text, "client_msg_id": cmid}])
        else:
            payload = json.dumps({"type": "chat", "text": text, "client_msg_id": cmid})
        try:
            while True:
                if self.closed:
                    rec.error = self.closed
                    return
                p = _Pending(rec, cmid, loop.create_future())
                self.pending = p
                rec.sent = time.time()
                if rec.first_sent is None:
                    rec.first_sent = rec.sent
                p.sent = time.monotonic()
                try:
                    await self.ws.send(payload)
                except ConnectionClosed:
                    rec.error = self.closed or f"closed {self.ws.close_code or 1006}"
                    return
                outcome = await p.future
                if outcome[0] == "refused":
                    rec.refusals += 1
                    self.refusals[outcome[1]] += 1
                    self.pending = None
                    await asyncio.sleep(outcome[2])
                    continue
                if outcome[0] == "error":
                    rec.error = f"error {outcome[1]}"
                elif outcome[0] == "closed":
                    rec.error = outcome[1]
                return
        finally:
            self.pending = None

    async def close(self) -> None:
        await self.ws.close()


def _connect_error(exc: BaseException) -> tuple[str, bool]:
    """(kind for the report, whether a retry may help)."""
    if isinstance(exc, InvalidStatus):
        status = exc.response.status_code
        return f"http {status}", status in (408, 429) or status >= 500
    if isinstance(exc, ConnectionClosed):
        code = exc.rcvd.code if exc.rcvd else 1006
        return f"closed {code}", code not in (1008, 4401, 4403)
    if isinstance(exc, _HandshakeError):
        return str(exc), False
    if isinstance(exc, TimeoutError):
        return "timeout", True
    if isinstance(exc, ConnectionRefusedError):
        return "refused", True
    if isinstance(exc, OSError):
        return f"oserror {errno.errorcode.get(exc.errno or 0, exc.errno)}", True
    return type(exc).__name__, True


async def _handshake(ws: ClientConnection, sio: bool) -> None:
    """CHAT_V1: read up to the welcome. SOCKETIO: open packet, `40`, wait for `40`."""
    if sio:
        raw = await ws.recv()
        if not (isinstance(raw, str) and raw.startswith("0{")):
            raise _HandshakeError("no engine.io open packet")
        await ws.send("40")
        while True:
            raw = await ws.recv()
            if not isinstance(raw, str):
                continue
            if raw == "2":
                await ws.send("3")
            elif raw.startswith("40"):
                return
            elif raw.startswith("44"):
                raise _HandshakeError("socket.io connect_error")
            elif raw == "1" or raw.startswith("41"):
                raise _HandshakeError("socket.io disconnected")
    while True:
        raw = await ws.recv()
        try:
            frame = json.loads(raw)
        except ValueError as exc:
            raise _HandshakeError("frame is not JSON") from exc
        if not isinstance(frame, dict):
            continue
        if frame.get("type") == "welcome":
            return
        if frame.get("type") == "error":
            raise _HandshakeError(f"error {frame.get('code')}")


class _Connector:
    """Opens a process' sockets: bounded handshakes in flight, retries with backoff up
    to the connect deadline, every outcome counted."""

    def __init__(self, job: _Job, res: _ProcResult, refusals: Counter[str]) -> None:
        self.job = job
        self.res = res
        self.refusals = refusals
        self.sem = asyncio.Semaphore(HANDSHAKES_IN_FLIGHT)
        self.sio = job.target.protocol == SOCKETIO
        loop = asyncio.get_running_loop()
        until = min(time.time() + job.connect_timeout, job.deadline)
        self.deadline = loop.time() + (until - time.time())
        self.errors: Counter[str] = Counter()

    def url(self, n: int) -> str:
        url = self.job.target.url
        if self.sio:
            return url
        sep = "&" if "?" in url else "?"
        return f"{url}{sep}session_id=bench-{self.job.run}-{n}&user_id=b{n}&token=dev-token"

    async def open(self, n: int) -> _Client | str:
        """Client n's socket, or why it could not be opened."""
        loop = asyncio.get_running_loop()
        url = self.url(n)
        ip = source_ip(n, self.job.first_octet)
        delay = BACKOFF_FIRST
        kind = "no time left to connect"
        retry = True
        while True:
            remaining = self.deadline - loop.time()
            if remaining <= 0:
                break
            async with self.sem:
                began = time.monotonic()
                try:
                    ws = await self._attempt(url, ip, min(remaining, HANDSHAKE_TIMEOUT))
                except (OSError, InvalidHandshake, ConnectionClosed, _HandshakeError) as exc:
                    kind, retry = _connect_error(exc)
                else:
                    self.res.connect_times.append(time.monotonic() - began)
                    self.res.counts.connected += 1
                    client = _Client(
                        ws, self.sio, self.res.counts, self.res.chunk_times, self.refusals
                    )
                    client.start()
                    return client
            if not retry or loop.time() + delay >= self.deadline:
                break
            self.res.connect_retries += 1
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)
        self.errors[kind] += 1
        self.res.counts.connect_failures += 1
        return kind

    async def _attempt(self, url: str, ip: str, limit: float) -> ClientConnection:
        ws: ClientConnection | None = None
        try:
            async with asyncio.timeout(limit):
                ws = await connect(
                    url,
                    local_addr=(ip, 0),
                    open_timeout=None,
                    ping_interval=None,
                    close_timeout=CLOSE_TIMEOUT,
                    compression=COMPRESSION,
                    proxy=None,
                    max_size=MAX_FRAME,
                )
                await _handshake(ws, self.sio)
                return ws
        except BaseException:
            if ws is not None:
                ws.transport.abort()
            raise


async def _close_all(clients: Sequence[_Client]) -> None:
    """Close every socket (bounded), then make sure every reader task has ended."""
    if clients:
        try:
            async with asyncio.timeout(CLOSE_BUDGET):
                await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
        except TimeoutError:
            for c in clients:
                c.ws.transport.abort()
    readers = [c.reader for c in clients if c.reader is not None]
    for r in readers:
        if not r.done():
            r.cancel()
    await asyncio.gather(*readers, return_exceptions=True)


async def _report(out: Queue[Any], proc: int, counts: _Counts) -> None:
    """Send this process' totals every PROGRESS_EVERY seconds (until cancelled)."""
    while True:
        out.put(("progress", proc, _Counts(**_fields(counts))))
        await asyncio.sleep(PROGRESS_EVERY)


def _fields(counts: _Counts) -> dict[str, int]:
    return {k: getattr(counts, k) for k in _Counts.__slots__}


async def _wait_flag(flag: MpEvent, until_wall: float) -> bool:
    """Wait (in a thread, the loop keeps serving sockets) for `flag` or the deadline."""
    return await asyncio.to_thread(flag.wait, max(0.0, until_wall - time.time()))


async def _stream_answers(
    client: _Client, n: int, job: _Job, deadline: float
) -> list[AnswerRecord]:
    recs: list[AnswerRecord] = []
    counts = client.counts
    try:
        async with asyncio.timeout_at(deadline):
            for i in range(job.answers):
                rec = AnswerRecord(stream=n, index=i, proc=job.proc)
                recs.append(rec)
                await client.ask(rec, job.prompt, f"{job.run}-{n}-{i}")
                counts.answers += 1
                counts.failed += rec.error is not None
                if client.closed:
                    break
    except TimeoutError:
        # The deadline interrupted the last answer (not counted yet).
        if recs:
            rec = recs[-1]
            if rec.error is None and rec.done_at is None:
                rec.error = "timeout"
            counts.answers += 1
            counts.failed += rec.error is not None
    why = client.closed or "timeout"
    for i in range(len(recs), job.answers):
        recs.append(AnswerRecord(stream=n, index=i, proc=job.proc, error=f"not sent: {why}"))
    return recs


async def _proc_async(job: _Job, out: Queue[Any], go: MpEvent) -> _ProcResult:
    loop = asyncio.get_running_loop()
    mine = list(range(job.proc, job.count, job.procs))
    res = _ProcResult(
        span=ProcSpan(proc=job.proc, pid=os.getpid(), clients=len(mine), start=time.time()),
        counts=_Counts(),
    )
    refusals: Counter[str] = Counter()
    reporter = asyncio.create_task(_report(out, job.proc, res.counts))
    clients: list[_Client] = []
    try:
        connector = _Connector(job, res, refusals)
        opened = await asyncio.gather(*(connector.open(n) for n in mine))
        res.connect_errors = dict(connector.errors)
        res.span.connected = time.time()
        out.put(("connected", job.proc, None))
        clients = [c for c in opened if isinstance(c, _Client)]
        released = await _wait_flag(go, job.deadline)
        res.span.go = time.time()
        if job.mode == "idle":
            drops = Counter(c.closed for c in clients if c.closed is not None)
            res.drop_reasons = dict(drops)
            res.counts.dropped = sum(drops.values())
        else:
            deadline = loop.time() + (job.deadline - time.time())
            tasks = [
                _stream_answers(c, n, job, deadline)
                for n, c in zip(mine, opened, strict=True)
                if isinstance(c, _Client) and released
            ]
            res.records = [r for recs in await asyncio.gather(*tasks) for r in recs]
            for n, c in zip(mine, opened, strict=True):
                if isinstance(c, _Client) and released:
                    continue
                why = f"not connected: {c}" if isinstance(c, str) else "never released"
                res.records.extend(
                    AnswerRecord(stream=n, index=i, proc=job.proc, error=why)
                    for i in range(job.answers)
                )
            res.refusals = dict(refusals)
    finally:
        await _close_all(clients)
        reporter.cancel()
        await asyncio.gather(reporter, return_exceptions=True)
    res.span.end = time.time()
    out.put(("progress", job.proc, _Counts(**_fields(res.counts))))
    return res


def _raise_nofile() -> None:
    """Raise this process' open-files limit to its hard limit: 5,000 idle sockets per
    process need more than the usual 1,024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft == resource.RLIM_INFINITY or soft >= want:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    except (ValueError, OSError):
        pass


def _proc_main(job: _Job, out: Queue[Any], go: MpEvent) -> None:
    """Entry point of a spawned load process: its own uvloop; the result (or the
    traceback) goes back on `out`."""
    _raise_nofile()
    try:
        import uvloop

        result = uvloop.run(_proc_async(job, out, go))
    except BaseException:  # noqa: BLE001 - any failure, even ^C, is reported to the parent
        out.put(("crash", job.proc, traceback.format_exc()))
        raise SystemExit(1) from None
    out.put(("result", job.proc, result))


# --------------------------------------------------------------------------- parent


class _Bar:
    """One progress line on stderr, redrawn with \\r; silent unless stderr is a TTY."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self.drawn = 0
        self.last = 0.0

    def show(self, text: str, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self.last < PROGRESS_EVERY:
            return
        self.last = now
        sys.stderr.write("\r" + text.ljust(self.drawn))
        sys.stderr.flush()
        self.drawn = len(text)

    def end(self) -> None:
        if self.enabled and self.drawn:
            sys.stderr.write("\n")
            sys.stderr.flush()


class _Fleet:
    """The parent's side: start the load processes, collect their messages, join them."""

    def __init__(self, jobs: list[_Job]) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.out: Queue[Any] = ctx.Queue()
        self.go: MpEvent = ctx.Event()
        self.procs = [
            ctx.Process(
                target=_proc_main,
                args=(job, self.out, self.go),
                name=f"loadgen-{job.proc}",
                daemon=True,
            )
            for job in jobs
        ]
        self.counts: dict[int, _Counts] = {}
        self.connected: set[int] = set()
        self.results: dict[int, _ProcResult] = {}
        self.crashed: dict[int, str] = {}
        self._exited: dict[int, float] = {}

    @property
    def all_connected(self) -> bool:
        return len(self.connected | self.crashed.keys()) == len(self.procs)

    @property
    def finished(self) -> bool:
        return len(self.results) + len(self.crashed) == len(self.procs)

    def total(self, name: str) -> int:
        return sum(getattr(c, name) for c in self.counts.values())

    def run(self, tick: Callable[[], None], hard_deadline: float) -> None:
        """Until every process reported (or the deadline): handle messages, call `tick`
        (phase changes, the progress line) at least every 0.1 s. Always joins."""
        try:
            for p in self.procs:
                p.start()
            while not self.finished:
                now = time.monotonic()
                if now > hard_deadline:
                    for i in range(len(self.procs)):
                        if i not in self.results:
                            self.crashed.setdefault(i, f"proc {i}: no result by the deadline")
                    break
                try:
                    kind, i, payload = self.out.get(timeout=0.1)
                except queue.Empty:
                    pass
                else:
                    self._handle(kind, i, payload)
                self._check_dead(now)
                tick()
        finally:
            self.go.set()
            self._join()

    def _handle(self, kind: str, i: int, payload: Any) -> None:
        if kind == "progress":
            self.counts[i] = payload
        elif kind == "connected":
            self.connected.add(i)
        elif kind == "result":
            self.results[i] = payload
            self.counts[i] = payload.counts
            self.connected.add(i)
        elif kind == "crash":
            self.crashed[i] = f"proc {i} crashed:\n{payload}"

    def _check_dead(self, now: float) -> None:
        """A process that exited without a result: give its last message 2 s to arrive."""
        for i, p in enumerate(self.procs):
            if i in self.results or i in self.crashed or p.exitcode is None:
                continue
            since = self._exited.setdefault(i, now)
            if now - since > 2.0:
                self.crashed[i] = f"proc {i} exited with {p.exitcode} without a result"

    def _join(self) -> None:
        deadline = time.monotonic() + 10.0
        for p in self.procs:
            if p.pid is None:
                continue  # never started
            p.join(max(0.1, deadline - time.monotonic()))
            if p.exitcode is None:
                p.terminate()
                p.join(5.0)
            if p.exitcode is None:
                p.kill()
                p.join(5.0)
        for p in self.procs:
            if p.exitcode is not None:
                p.close()
        self.out.close()
        self.out.join_thread()


def _jobs(
    mode: str,
    target: Target,
    count: int,
    procs: int,
    first_octet: int,
    connect_timeout: float,
    deadline: float,
    answers: int = 1,
    prompt: str = DEFAULT_PROMPT,
) -> list[_Job]:
    if count < 1:
        raise ValueError("need at least one client")
    if target.protocol not in (CHAT_V1, SOCKETIO):
        raise ValueError(f"unknown protocol {target.protocol!r}")
    procs = max(1, min(procs, count))
    run = secrets.token_hex(3)
    return [
        _Job(
            mode=mode,
            target=target,
            proc=i,
            procs=procs,
            count=count,
            first_octet=first_octet,
            run=run,
            connect_timeout=connect_timeout,
            deadline=deadline,
            answers=answers,
            prompt=prompt,
        )
        for i in range(procs)
    ]


def run_streams(
    target: Target,
    *,
    streams: int,
    answers_per_stream: int = 1,
    procs: int = 2,
    first_octet: int = 10,
    timeout: float = 300.0,
    prompt: str = DEFAULT_PROMPT,
    progress: bool = True,
    connect_timeout: float = 60.0,
) -> StreamsResult:
    """`streams` clients connect (client n from source_ip(n, first_octet)), wait until
    all are connected, then each asks `answers_per_stream` questions one after another
    and reads every answer to its done. `timeout` bounds the whole run (seconds);
    `connect_timeout` the connect phase within it. Blocks; returns when every load
    process has reported and been joined."""
    start = time.time()
    jobs = _jobs(
        "streams",
        target,
        streams,
        procs,
        first_octet,
        connect_timeout=connect_timeout,
        deadline=start + timeout,
        answers=answers_per_stream,
        prompt=prompt,
    )
    fleet = _Fleet(jobs)
    bar = _Bar(progress)
    total = streams * answers_per_stream
    label = f"[{target.name}]"
    last = [time.monotonic(), 0]
    shown = [0.0]

    def tick(final: bool = False) -> None:
        if not fleet.go.is_set():
            if fleet.all_connected:
                fleet.go.set()
            bar.show(
                f"{label} connected {fleet.total('connected')}/{streams}, "
                f"{fleet.total('connect_failures')} failed",
                force=final,
            )
            return
        now = time.monotonic()
        if now - last[0] >= PROGRESS_EVERY:
            chunks = fleet.total("chunks")
            shown[0] = (chunks - last[1]) / (now - last[0])
            last[0], last[1] = now, chunks
        bar.show(
            f"{label} answers {fleet.total('answers')}/{total}, {shown[0]:,.0f} chunks/s, "
            f"{fleet.total('failed')} failed",
            force=final,
        )

    try:
        fleet.run(tick, time.monotonic() + timeout + CLOSE_BUDGET + SPAWN_GRACE)
        tick(final=True)
    finally:
        bar.end()
    return _merge_streams(target, streams, answers_per_stream, fleet)


def _merge_streams(
    target: Target, streams: int, answers_per_stream: int, fleet: _Fleet
) -> StreamsResult:
    parts = [fleet.results[i] for i in sorted(fleet.results)]
    records = [r for p in parts for r in p.records]
    nprocs = len(fleet.procs)
    for i in fleet.crashed:  # keep one record per planned answer
        records.extend(
            AnswerRecord(stream=n, index=k, proc=i, error="load process crashed")
            for n in range(i, streams, nprocs)
            for k in range(answers_per_stream)
        )
    answers = sorted(records, key=lambda r: (r.stream, r.index))
    return StreamsResult(
        target=target.name,
        protocol=target.protocol,
        streams=streams,
        answers_per_stream=answers_per_stream,
        answers=answers,
        chunk_times=[t for p in parts for t in p.chunk_times],
        procs=[p.span for p in parts],
        connected=sum(p.counts.connected for p in parts),
        connect_failures=sum(p.counts.connect_failures for p in parts),
        connect_errors=merge_counts(p.connect_errors for p in parts),
        connect_retries=sum(p.connect_retries for p in parts),
        connect_times=[t for p in parts for t in p.connect_times],
        refusals=merge_counts(p.refusals for p in parts),
        crashed=[fleet.crashed[i] for i in sorted(fleet.crashed)],
    )


def hold_idle(
    target: Target,
    *,
    connections: int,
    hold_s: float,
    procs: int = 2,
    first_octet: int = 10,
    progress: bool = True,
    connected: Flag | None = None,
    on_connected: Callable[[], None] | None = None,
    stop: Flag | None = None,
    connect_timeout: float = 60.0,
) -> IdleResult:
    """Open `connections` sockets (CHAT_V1: up to the welcome; SOCKETIO: through the
    `40` handshake), keep them open `hold_s` seconds from the moment all are connected
    (Engine.IO pings answered), then close them. Blocks.

    For the caller's measurements (RSS of the target) while they are open: when all
    are connected, `connected` is set and then `on_connected()` is called in this
    thread; setting `stop` (a threading or multiprocessing Event) ends the hold early.
    The hold ends at hold_s after all connected or when `stop` is set, whichever
    comes first, but never before `on_connected` returned."""
    start = time.time()
    jobs = _jobs(
        "idle",
        target,
        connections,
        procs,
        first_octet,
        connect_timeout=connect_timeout,
        deadline=start + SPAWN_GRACE + connect_timeout + max(0.0, hold_s) + HOLD_SLACK,
    )
    fleet = _Fleet(jobs)
    bar = _Bar(progress)
    label = f"[{target.name}]"
    state: dict[str, float] = {}

    def tick(final: bool = False) -> None:
        if final:
            pass  # after the run: only draw, call nobody back
        elif "all_connected" not in state and fleet.all_connected:
            state["all_connected"] = time.time()
            state["held_from"] = time.monotonic()
            if connected is not None:
                connected.set()
            if on_connected is not None:
                on_connected()
        if "held_from" in state and not fleet.go.is_set():
            if time.monotonic() - state["held_from"] >= hold_s or (
                stop is not None and stop.is_set()
            ):
                state["released"] = time.time()
                fleet.go.set()
        phase = "closed" if final else "holding" if "all_connected" in state else "connecting"
        bar.show(
            f"{label} {phase}: connected {fleet.total('connected')}/{connections}, "
            f"{fleet.total('connect_failures')} failed, {fleet.total('dropped')} dropped",
            force=final,
        )

    try:
        latest_release = jobs[0].deadline - time.time()
        fleet.run(tick, time.monotonic() + latest_release + CLOSE_BUDGET + SPAWN_GRACE)
        tick(final=True)
    finally:
        bar.end()
    parts = [fleet.results[i] for i in sorted(fleet.results)]
    gone = [p.span.go for p in parts if p.span.go is not None]
    return IdleResult(
        target=target.name,
        protocol=target.protocol,
        requested=connections,
        connected=sum(p.counts.connected for p in parts),
        connect_failures=sum(p.counts.connect_failures for p in parts),
        connect_errors=merge_counts(p.connect_errors for p in parts),
        connect_retries=sum(p.connect_retries for p in parts),
        connect_times=[t for p in parts for t in p.connect_times],
        dropped=sum(p.counts.dropped for p in parts),
        drop_reasons=merge_counts(p.drop_reasons for p in parts),
        all_connected=state.get("all_connected"),
        # The parent's release, else (children released themselves) the last to go.
        released=state.get("released") or max(gone, default=None),
        procs=[p.span for p in parts],
        crashed=[fleet.crashed[i] for i in sorted(fleet.crashed)],
    )
