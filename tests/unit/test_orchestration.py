"""Driver (gateway) and Generation (worker) over an in-memory message store.

`FakeStore` duck-types the `MessageStore` methods both use, with the semantics of the
Lua scripts: append by the lease holder, or by a token whose lease lapsed with nobody
taking it (it takes the lease back), only at the stored last_seq + 1 (else GAP), never
after a cancel or the final record; finish by the holder or by a token whose lease
lapsed, at the stored last_seq (else GAP), or with token "" only when nobody holds the
lease. Its leases hand out real `Lease` objects, so renewing and releasing go through
the production code.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from services.ai_worker.generation import MAX_REPAIRS, Generation
from services.ai_worker.metrics import WorkerMetrics
from services.ai_worker.providers.base import (
    ChatTurn,
    Finish,
    GenerationRequest,
    ProviderError,
    ProviderEvent,
    Token,
)
from services.common.clock import now_ms
from services.common.generate import Outcome
from services.common.lease import Lease
from services.common.message_store import (
    AppendOutcome,
    FinishOutcome,
    MessageMeta,
    user_item_id,
)
from services.common.protocol import (
    ErrorCode,
    FinishReason,
    HistoryItem,
    MessageStatus,
    Usage,
)
from services.common.settings import Settings
from services.common.streams import ChunkEntry, DoneEntry, StreamEntry
from services.common.tasks import cancel_and_wait
from services.ws_gateway.driver import CallResult, Driver
from services.ws_gateway.hub import Hub
from services.ws_gateway.metrics import GatewayMetrics

pytestmark = pytest.mark.unit

DEADLINE = 3.0
"""Seconds any awaited condition may take before the test fails (never a sleep)."""
MID = "m_abc"
SID = "s1"
GATEWAY = "gw-1"
WORKER = "worker-1"


# --- the in-memory store -----------------------------------------------------------------


class Changes:
    """One condition every fake notifies on, so tests wait for state, not for time."""

    def __init__(self) -> None:
        self._cond = asyncio.Condition()

    async def notify(self) -> None:
        async with self._cond:
            self._cond.notify_all()

    async def wait_until(self, predicate: Callable[[], bool], what: str = "") -> None:
        async with self._cond:
            try:
                await asyncio.wait_for(self._cond.wait_for(predicate), DEADLINE)
            except TimeoutError:
                pytest.fail(f"timed out waiting for {what or predicate}")


class FakeLeases:
    """Leases of one kind; `holders` is what Redis would hold (message id -> token)."""

    def __init__(
        self, kind: str, ttl_ms: int, changes: Changes, going_on: Callable[[str], bool]
    ) -> None:
        self.kind = kind
        self._going_on = going_on
        """Whether a message's answer goes on (a lapsed lease is taken back only then)."""
        self.ttl_ms = ttl_ms
        self.holders: dict[str, str] = {}
        self.acquired = 0
        self.renewals = 0
        self.renewal_tries = 0
        """Every renew call, whatever it found (`renewals` counts the ones that held)."""
        self.holder_checks = 0
        self._changes = changes
        self._tokens = itertools.count(1)

    def key(self, message_id: str) -> str:
        return f"{self.kind}:{message_id}"

    async def acquire(self, message_id: str, holder: str) -> Lease | None:
        if message_id in self.holders:
            return None
        token = f"{holder}:{next(self._tokens)}"
        self.holders[message_id] = token
        self.acquired += 1
        await self._changes.notify()
        return Lease(self, message_id, token)  # type: ignore[arg-type]

    async def holder(self, message_id: str) -> str | None:
        self.holder_checks += 1
        await self._changes.notify()
        return self.holders.get(message_id)

    async def renew(self, message_id: str, token: str) -> bool:
        self.renewal_tries += 1
        holder = self.holders.get(message_id)
        # Like lease_renew.lua: a lapsed lease is taken back while the answer goes on.
        if holder is None and token and self._going_on(message_id):
            self.holders[message_id] = holder = token
        ok = holder == token
        if ok:
            self.renewals += 1
        await self._changes.notify()
        return ok

    async def release(self, message_id: str, token: str) -> None:
        if self.holders.get(message_id) == token:
            del self.holders[message_id]
        await self._changes.notify()


@dataclass(frozen=True)
class AppendCall:
    """The keyword arguments of one `append_chunk` (building it checks them)."""

    token: str
    seq: int
    delta: str
    tokens: int
    written_ms: int | None = None


@dataclass(frozen=True)
class FinishCall:
    """The arguments of one `finish` (building it checks them) and what it returned."""

    message_id: str
    session_id: str
    token: str
    last_seq: int
    text: str
    reason: FinishReason
    usage: Usage
    error: ErrorCode | None = None
    evict: str = ""
    event_id: str | None = None
    outcome: FinishOutcome | None = None


class FakeStore:
    def __init__(self, *, lease_ttl_ms: int = 60_000, driver_ttl_ms: int = 60_000) -> None:
        self.changes = Changes()
        self.metas: dict[str, MessageMeta] = {}
        self.streams: dict[str, list[StreamEntry]] = {}
        self.cancelled: set[str] = set()
        self.histories: dict[str, list[HistoryItem]] = {}
        self.finishes: list[FinishCall] = []
        self.generators = FakeLeases("lease", lease_ttl_ms, self.changes, self._going_on)
        self.drivers = FakeLeases("driver", driver_ttl_ms, self.changes, self._going_on)
        self.before_append: Callable[[int], None] | None = None
        """Called with the seq before each append is decided (to steal a lease, cancel...)."""
        self.before_finish: Callable[[], None] | None = None
        """Called before each finish is decided."""

    def add(
        self,
        message_id: str = MID,
        *,
        session_id: str = SID,
        prompt: str = "What is up?",
        status: MessageStatus = MessageStatus.PENDING,
        deltas: tuple[str, ...] = (),
        completion_tokens: int = 0,
    ) -> MessageMeta:
        """A message, with `deltas` already cached as chunks 1..k (a previous worker)."""
        if deltas and status == MessageStatus.PENDING:
            status = MessageStatus.STREAMING
        meta = MessageMeta(
            message_id=message_id,
            session_id=session_id,
            user_id="u1",
            prompt=prompt,
            status=status,
            last_seq=len(deltas),
            created_at="2026-01-01T00:00:00.000+00:00",
            completion_tokens=completion_tokens,
        )
        self.metas[message_id] = meta
        self.streams[message_id] = [
            ChunkEntry(seq=i, delta=d, written_ms=0) for i, d in enumerate(deltas, start=1)
        ]
        return meta

    def _going_on(self, message_id: str) -> bool:
        meta = self.metas.get(message_id)
        return meta is not None and meta.status != MessageStatus.DONE

    def chunks(self, message_id: str = MID) -> list[ChunkEntry]:
        return [e for e in self.streams.get(message_id, []) if isinstance(e, ChunkEntry)]

    def done_entry(self, message_id: str = MID) -> DoneEntry | None:
        done = [e for e in self.streams.get(message_id, []) if isinstance(e, DoneEntry)]
        assert len(done) <= 1
        return done[0] if done else None

    def lose_last(self, k: int, message_id: str = MID) -> list[ChunkEntry]:
        """Redis comes back without the last `k` chunks (a restart, a failover to a
        lagging replica): its meta says the last kept seq. Returns the lost chunks."""
        chunks = self.chunks(message_id)
        kept, lost = chunks[: len(chunks) - k], chunks[len(chunks) - k :]
        self.streams[message_id] = list(kept)
        self.metas[message_id] = dataclasses.replace(
            self.metas[message_id], last_seq=kept[-1].seq if kept else 0
        )
        return lost

    # --- the MessageStore surface -----------------------------------------------------

    async def meta(self, message_id: str) -> MessageMeta | None:
        return self.metas.get(message_id)

    async def orphaned(self, message_id: str) -> str | None:
        meta = self.metas.get(message_id)
        if message_id in self.generators.holders or message_id in self.drivers.holders:
            return None
        if meta is None or meta.status == MessageStatus.DONE:
            return None
        return meta.session_id

    async def is_cancelled(self, message_id: str) -> bool:
        return message_id in self.cancelled

    async def read_entries(
        self, message_id: str, after_seq: int = 0, count: int | None = None
    ) -> list[StreamEntry]:
        entries = [
            e
            for e in self.streams.get(message_id, [])
            if isinstance(e, DoneEntry) or e.seq > after_seq
        ]
        return entries if count is None else entries[:count]

    async def history(self, session_id: str, limit: int) -> list[HistoryItem]:
        return self.histories.get(session_id, [])[-limit:]

    async def generation_inputs(
        self, message_id: str, session_id: str, history_limit: int
    ) -> tuple[list[StreamEntry], bool, list[HistoryItem]]:
        return (
            await self.read_entries(message_id),
            await self.is_cancelled(message_id),
            await self.history(session_id, history_limit),
        )

    async def append_chunk(self, message_id: str, session_id: str, **kwargs: Any) -> AppendOutcome:
        # AppendCall takes exactly the keyword arguments MessageStore.append_chunk does.
        call = AppendCall(**kwargs)
        token, seq = call.token, call.seq
        if self.before_append is not None:
            self.before_append(seq)
        holder = self.generators.holders.get(message_id)
        meta = self.metas.get(message_id)
        if holder is not None and holder != token:
            outcome = AppendOutcome.LOST
        elif meta is None:
            outcome = AppendOutcome.GONE
        elif meta.status == MessageStatus.DONE:
            outcome = AppendOutcome.LOST
        elif seq != meta.last_seq + 1:
            outcome = AppendOutcome.GAP
        elif message_id in self.cancelled:
            outcome = AppendOutcome.CANCELLED
        else:
            if holder is None:  # the lease lapsed and nobody took it: take it back
                self.generators.holders[message_id] = token
            written_ms = now_ms() if call.written_ms is None else call.written_ms
            self.streams[message_id].append(ChunkEntry(seq, call.delta, written_ms))
            self.metas[message_id] = dataclasses.replace(
                meta,
                status=MessageStatus.STREAMING,
                last_seq=seq,
                completion_tokens=meta.completion_tokens + call.tokens,
            )
            outcome = AppendOutcome.OK
        await self.changes.notify()
        return outcome

    async def finish(self, message_id: str, session_id: str, **kwargs: Any) -> FinishOutcome:
        # FinishCall takes exactly the keyword arguments MessageStore.finish does.
        call = FinishCall(message_id, session_id, **kwargs)
        if self.before_finish is not None:
            self.before_finish()
        holder = self.generators.holders.get(message_id)
        meta = self.metas.get(message_id)
        evicting = call.token == "" and call.evict != "" and holder == call.evict
        if call.token == "" and holder is not None and not evicting:
            outcome = FinishOutcome.LEASED
        elif call.token != "" and holder not in (None, call.token):
            outcome = FinishOutcome.LOST
        elif meta is None:
            outcome = FinishOutcome.GONE
        elif meta.status == MessageStatus.DONE:
            outcome = FinishOutcome.ALREADY_DONE
        elif (call.token != "" or evicting) and call.last_seq != meta.last_seq:
            outcome = FinishOutcome.GAP
        else:
            self.streams[message_id].append(
                DoneEntry(call.last_seq, call.reason, call.usage, call.error)
            )
            self.metas[message_id] = dataclasses.replace(
                meta, status=MessageStatus.DONE, last_seq=call.last_seq
            )
            self.histories.setdefault(session_id, []).append(
                HistoryItem(
                    message_id=message_id,
                    role="assistant",
                    text=call.text,
                    created_at=meta.created_at,
                )
            )
            if call.token or evicting:
                self.generators.holders.pop(message_id, None)
            outcome = FinishOutcome.OK
        self.finishes.append(dataclasses.replace(call, outcome=outcome))
        await self.changes.notify()
        return outcome


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels or None)
    assert value is not None, name
    return value


def finished_with(gen: Generation) -> tuple[str, FinishReason, Usage] | None:
    """(session_id, reason, usage) of the final record the generation wrote, if any."""
    f = gen.finished
    return None if f is None else (f.session_id, f.final.finish_reason, f.final.usage)


# --- Driver ----------------------------------------------------------------------------

Reply = tuple[CallResult, bool]
Step = Reply | Callable[[], Awaitable[Reply]]


@dataclass(frozen=True)
class Call:
    message_id: str
    driver_holder: str | None
    generator_holder: str | None
    new: bool = False


class ScriptedWorker:
    """A fake `call_worker`: each call takes the next step of the script (a reply, or a
    coroutine function producing one); past the end it answers `then`."""

    def __init__(self, store: FakeStore, *steps: Step, then: Reply | None = None) -> None:
        self._store = store
        self._steps = list(steps)
        self._then = then
        self.calls: list[Call] = []

    async def __call__(self, message_id: str, new: bool) -> tuple[CallResult, float | None]:
        """The scripted reply, its "progressed" flag as the time of the progress (now)."""
        result, progressed = await self._next(message_id, new)
        return result, time.monotonic() if progressed else None

    async def _next(self, message_id: str, new: bool) -> Reply:
        self.calls.append(
            Call(
                message_id,
                self._store.drivers.holders.get(message_id),
                self._store.generators.holders.get(message_id),
                new,
            )
        )
        await self._store.changes.notify()
        if self._steps:
            step = self._steps.pop(0)
        else:
            assert self._then is not None, "the driver called more often than scripted"
            step = self._then
        if callable(step):
            return await step()
        return step

    async def wait_calls(self, count: int) -> None:
        await self._store.changes.wait_until(lambda: len(self.calls) >= count, f"{count} calls")


class DriverHarness:
    def __init__(self, store: FakeStore, worker: ScriptedWorker, recovery_timeout: float):
        self.store = store
        self.worker = worker
        self.registry = CollectorRegistry()
        self.metrics = GatewayMetrics(self.registry)
        self.workers_busy_at: list[float] = []
        """When the driver told its node that no worker had room."""
        self.waiting_when_busy: list[int] = []
        """The driver's `waiting_for_room` at each of those times."""
        self.driver = Driver(
            store,  # type: ignore[arg-type]
            worker,
            node_id=GATEWAY,
            recovery_timeout=recovery_timeout,
            metrics=self.metrics,
            on_workers_busy=self._workers_busy,
        )

    def _workers_busy(self, now: float) -> None:
        self.workers_busy_at.append(now)
        self.waiting_when_busy.append(self.driver.waiting_for_room)

    def task(self, message_id: str = MID) -> asyncio.Task[None]:
        (task,) = [
            t for t in asyncio.all_tasks() if t.get_name() == f"drive-{message_id}" and not t.done()
        ]
        return task

    async def drive(self, message_id: str = MID, session_id: str = SID) -> None:
        """Drive the message and wait until the driver is done with it."""
        self.driver.drive(message_id, session_id)
        await self.wait_done(message_id)

    async def wait_done(self, message_id: str = MID) -> None:
        task = self.task(message_id)
        await asyncio.wait({task}, timeout=DEADLINE)
        assert task.done(), "the driver did not finish in time"
        await asyncio.sleep(0)  # the task's done callback runs
        assert self.driver.driving == 0

    def counter(self, name: str) -> float:
        return sample(self.registry, f"gateway_{name}_total")


@pytest.fixture
async def harnesses() -> AsyncIterator[list[DriverHarness]]:
    made: list[DriverHarness] = []
    yield made
    for harness in made:
        await asyncio.wait_for(harness.driver.close(), DEADLINE)


@pytest.fixture
def make_driver(
    harnesses: list[DriverHarness],
) -> Callable[..., DriverHarness]:
    def make(
        store: FakeStore, *steps: Step, then: Reply | None = None, recovery_timeout: float = 5.0
    ) -> DriverHarness:
        harness = DriverHarness(store, ScriptedWorker(store, *steps, then=then), recovery_timeout)
        harnesses.append(harness)
        return harness

    return make


MakeDriver = Callable[..., DriverHarness]


def held_call() -> tuple[asyncio.Event, Step]:
    """A worker call that answers done only once the event is set."""
    gate = asyncio.Event()

    async def held() -> Reply:
        await gate.wait()
        return CallResult.DONE, True

    return gate, held


async def test_done_stops_at_once_and_the_driver_lease_is_held_meanwhile(
    make_driver: MakeDriver,
) -> None:
    store = FakeStore()
    store.add()
    h = make_driver(store, (CallResult.DONE, True))
    await h.drive()
    assert len(h.worker.calls) == 1
    holder = h.worker.calls[0].driver_holder
    assert holder is not None and holder.startswith(f"{GATEWAY}:")
    assert MID not in store.drivers.holders  # released after
    assert store.finishes == []
    assert h.counter("takeovers") == 0


async def test_retries_go_to_another_call_and_count_takeovers(make_driver: MakeDriver) -> None:
    store = FakeStore()
    store.add()
    retry, done = (CallResult.RETRY, True), (CallResult.DONE, True)
    h = make_driver(store, retry, retry, done)
    await h.drive()
    assert len(h.worker.calls) == 3
    assert h.counter("takeovers") == 2
    assert store.finishes == []
    assert h.counter("upstream_unavailable") == 0


async def test_busy_workers_make_the_answer_wait_and_the_node_refuse_new_chats(
    make_driver: MakeDriver,
) -> None:
    store = FakeStore()
    store.add()
    busy = (CallResult.BUSY, False)
    gate, held = held_call()
    h = make_driver(store, busy, busy, held)
    h.driver.drive(MID, SID)
    await h.worker.wait_calls(3)
    assert h.waiting_when_busy == [1, 1]  # waiting for room between the calls
    assert h.driver.waiting_for_room == 0  # the third call found room: it is running
    gate.set()
    await h.wait_done()
    assert len(h.worker.calls) == 3
    assert [c.new for c in h.worker.calls] == [True, True, True]  # no chunk yet
    told = h.workers_busy_at
    assert len(told) == 2 and told == sorted(told)
    assert h.counter("workers_busy") == 2
    assert h.counter("takeovers") == 0  # waiting for room is not a takeover
    assert store.finishes == []


async def test_an_answer_with_chunks_is_not_new_to_the_worker(make_driver: MakeDriver) -> None:
    store = FakeStore()
    store.add(deltas=("Hel",), completion_tokens=1)
    h = make_driver(store, (CallResult.DONE, True))
    await h.drive()
    assert [c.new for c in h.worker.calls] == [False]


async def test_leased_waits_until_the_generator_lease_is_gone(make_driver: MakeDriver) -> None:
    store = FakeStore()
    store.add()
    store.generators.holders[MID] = "worker-2:7"
    h = make_driver(store, (CallResult.LEASED, False), (CallResult.DONE, True))
    h.driver.drive(MID, SID)
    await h.worker.wait_calls(1)
    checks = store.generators.holder_checks
    await store.changes.wait_until(
        lambda: store.generators.holder_checks >= checks + 2, "the driver polling the lease"
    )
    assert len(h.worker.calls) == 1  # still waiting: the other worker holds it
    del store.generators.holders[MID]
    await h.worker.wait_calls(2)
    assert h.worker.calls[1].generator_holder is None
    await h.wait_done()
    assert len(h.worker.calls) == 2
    assert h.counter("takeovers") == 0  # waiting for a lease is not a takeover


async def test_no_progress_past_the_recovery_timeout_ends_the_answer(
    make_driver: MakeDriver,
) -> None:
    store = FakeStore()
    store.add(deltas=("Hel", "lo ", "wor"), completion_tokens=4)
    h = make_driver(store, then=(CallResult.RETRY, False), recovery_timeout=0.1)
    started = time.monotonic()
    await h.drive()
    assert time.monotonic() - started > 0.1
    (finish,) = store.finishes
    assert finish == FinishCall(
        message_id=MID,
        session_id=SID,
        token="",
        last_seq=3,
        text="Hello wor",  # the partial text is kept
        reason=FinishReason.ERROR,
        usage=Usage(completion_tokens=4),
        error=ErrorCode.UPSTREAM_UNAVAILABLE,
        outcome=FinishOutcome.OK,
    )
    assert store.done_entry() == DoneEntry(
        3, FinishReason.ERROR, Usage(completion_tokens=4), ErrorCode.UPSTREAM_UNAVAILABLE
    )
    assert h.counter("upstream_unavailable") == 1
    assert len(h.worker.calls) >= 2
    assert h.counter("takeovers") == len(h.worker.calls) - 1


def write_chunk(store: FakeStore, delta: str, message_id: str = MID) -> None:
    """What a worker's append does to the store (without deciding anything)."""
    meta = store.metas[message_id]
    seq = meta.last_seq + 1
    store.streams[message_id].append(ChunkEntry(seq=seq, delta=delta, written_ms=0))
    store.metas[message_id] = dataclasses.replace(
        meta, status=MessageStatus.STREAMING, last_seq=seq
    )


async def test_a_stuck_lease_holder_is_evicted_when_the_answer_ends(
    make_driver: MakeDriver,
) -> None:
    """A worker that holds the lease and renews it but writes nothing (its model hangs):
    the driver ends the answer after the recovery timeout, taking the lease away."""
    store = FakeStore()
    store.add(deltas=("Hel", "lo"), completion_tokens=2)
    store.generators.holders[MID] = "worker-2:7"
    h = make_driver(store, then=(CallResult.LEASED, False), recovery_timeout=0.2)
    started = time.monotonic()
    await h.drive()
    assert time.monotonic() - started > 0.2
    (finish,) = store.finishes
    assert (finish.evict, finish.outcome) == ("worker-2:7", FinishOutcome.OK)
    assert (finish.last_seq, finish.text, finish.error) == (
        2,
        "Hello",
        ErrorCode.UPSTREAM_UNAVAILABLE,
    )
    assert MID not in store.generators.holders
    assert store.metas[MID].status == MessageStatus.DONE
    assert h.counter("upstream_unavailable") == 1


async def test_a_lease_holder_that_writes_is_waited_for_past_the_recovery_timeout(
    make_driver: MakeDriver,
) -> None:
    store = FakeStore()
    store.add()
    store.generators.holders[MID] = "worker-2:7"
    h = make_driver(
        store, (CallResult.LEASED, False), (CallResult.DONE, True), recovery_timeout=0.2
    )
    h.driver.drive(MID, SID)
    await h.worker.wait_calls(1)
    for n in range(8):  # 0.8 s of progress, four recovery timeouts
        write_chunk(store, f"w{n} ")
        await asyncio.sleep(0.1)
    del store.generators.holders[MID]
    await h.wait_done()
    assert store.finishes == []
    assert len(h.worker.calls) == 2
    assert h.counter("upstream_unavailable") == 0


async def test_an_evicted_holder_that_wrote_meanwhile_is_not_cut_off(
    make_driver: MakeDriver,
) -> None:
    """The holder writes between the driver's read and its finish: the finish finds
    another last_seq (GAP) and the driver goes on; the next give-up keeps that chunk."""
    store = FakeStore()
    store.add(deltas=("a",), completion_tokens=1)
    store.generators.holders[MID] = "worker-2:7"
    late = ["b"]

    def holder_writes() -> None:
        if late:
            write_chunk(store, late.pop())

    store.before_finish = holder_writes
    h = make_driver(store, then=(CallResult.LEASED, False), recovery_timeout=0.2)
    await h.drive()
    assert [f.outcome for f in store.finishes] == [FinishOutcome.GAP, FinishOutcome.OK]
    assert (store.finishes[-1].last_seq, store.finishes[-1].text) == (2, "ab")
    assert h.counter("upstream_unavailable") == 1


async def test_progress_keeps_the_answer_alive_past_the_recovery_timeout(
    make_driver: MakeDriver,
) -> None:
    store = FakeStore()
    store.add()
    # Each call breaks, but only after the answer moved on: five calls take longer than
    # the recovery timeout, yet it is never given up.
    h = make_driver(
        store, *[(CallResult.RETRY, True)] * 4, (CallResult.DONE, True), recovery_timeout=0.1
    )
    started = time.monotonic()
    await h.drive()
    assert time.monotonic() - started > 0.1
    assert len(h.worker.calls) == 5
    assert store.finishes == []
    assert h.counter("upstream_unavailable") == 0


async def test_a_cancelled_message_is_finished_as_cancelled(make_driver: MakeDriver) -> None:
    store = FakeStore()
    store.add(deltas=("a", "b"), completion_tokens=2)
    store.cancelled.add(MID)
    h = make_driver(store, then=(CallResult.RETRY, False))
    await h.drive()
    assert len(h.worker.calls) == 1
    (finish,) = store.finishes
    assert (finish.token, finish.reason, finish.error) == ("", FinishReason.CANCELLED, None)
    assert (finish.last_seq, finish.text, finish.session_id) == (2, "ab", SID)
    assert store.metas[MID].status == MessageStatus.DONE
    assert h.counter("upstream_unavailable") == 0


@pytest.mark.parametrize("known", [True, False])
async def test_nothing_is_called_for_a_finished_or_unknown_message(
    make_driver: MakeDriver, known: bool
) -> None:
    store = FakeStore()
    if known:
        store.add(status=MessageStatus.DONE)
    h = make_driver(store)
    await h.drive()
    assert h.worker.calls == []
    assert store.drivers.acquired == 1
    assert MID not in store.drivers.holders


async def test_a_second_drive_while_running_does_nothing(make_driver: MakeDriver) -> None:
    store = FakeStore()
    store.add()
    gate, slow = held_call()
    h = make_driver(store, slow)
    h.driver.drive(MID, SID)
    h.driver.drive(MID, SID)
    await h.worker.wait_calls(1)
    h.driver.drive(MID, SID)
    assert h.driver.driving == 1
    gate.set()
    await h.wait_done()
    assert len(h.worker.calls) == 1
    assert store.drivers.acquired == 1


async def test_another_gateways_driver_lease_means_no_call(make_driver: MakeDriver) -> None:
    store = FakeStore()
    store.add()
    store.drivers.holders[MID] = "gw-2:1"
    h = make_driver(store, (CallResult.DONE, True))
    await h.drive()
    assert h.worker.calls == []
    assert store.drivers.holders[MID] == "gw-2:1"


async def test_the_driver_lease_is_renewed_while_driving(make_driver: MakeDriver) -> None:
    store = FakeStore(driver_ttl_ms=30)  # renewed every 10 ms

    async def long_call() -> Reply:
        await store.changes.wait_until(lambda: store.drivers.renewals >= 2, "two renewals")
        assert store.drivers.holders[MID].startswith(f"{GATEWAY}:")
        return CallResult.DONE, True

    store.add()
    h = make_driver(store, long_call)
    await h.drive()
    assert store.drivers.renewals >= 2
    assert MID not in store.drivers.holders


async def test_close_stops_driving_and_releases_the_lease(make_driver: MakeDriver) -> None:
    store = FakeStore()
    store.add()
    _, hangs = held_call()  # never released
    h = make_driver(store, hangs)
    h.driver.drive(MID, SID)
    await h.worker.wait_calls(1)
    assert MID in store.drivers.holders
    await asyncio.wait_for(h.driver.close(), DEADLINE)
    await asyncio.sleep(0)  # done callbacks
    assert h.driver.driving == 0
    assert MID not in store.drivers.holders
    assert store.finishes == []  # another node may adopt it


@pytest.mark.parametrize("who", ["generator", "driver", "done", "unknown"])
async def test_adopt_if_orphaned_leaves_a_message_somebody_has(
    make_driver: MakeDriver, who: str
) -> None:
    store = FakeStore()
    if who != "unknown":
        store.add(status=MessageStatus.DONE if who == "done" else MessageStatus.STREAMING)
    if who == "generator":
        store.generators.holders[MID] = "worker-2:1"
    if who == "driver":
        store.drivers.holders[MID] = "gw-2:1"
    h = make_driver(store, (CallResult.DONE, True))
    await asyncio.wait_for(h.driver.adopt_if_orphaned(MID), DEADLINE)
    assert h.driver.driving == 0
    assert h.worker.calls == []
    assert store.drivers.acquired == 0


async def test_adopt_if_orphaned_drives_an_orphan_in_its_session(make_driver: MakeDriver) -> None:
    store = FakeStore()
    store.add(session_id="s-orphan", deltas=("x",))
    store.cancelled.add(MID)  # e.g. the user cancelled an answer nobody generates
    h = make_driver(store, then=(CallResult.RETRY, False))
    await asyncio.wait_for(h.driver.adopt_if_orphaned(MID), DEADLINE)
    assert h.driver.driving == 1
    await h.wait_done()
    assert len(h.worker.calls) == 1
    (finish,) = store.finishes
    assert finish.session_id == "s-orphan"
    assert (finish.reason, finish.text) == (FinishReason.CANCELLED, "x")


async def test_the_stall_watcher_adopts_a_followed_orphan(make_driver: MakeDriver) -> None:
    store = FakeStore()
    store.add(deltas=("x",))
    hub = Hub()

    class Member:
        def push_new_message(self, message_id: str) -> None: ...

        def on_entries(self, message_id: str, entries: list[StreamEntry]) -> None: ...

    hub.follow(MID, "stream:" + MID, Member(), 1, now=time.monotonic() - 60)
    h = make_driver(store, (CallResult.DONE, True))
    watcher = asyncio.create_task(h.driver.watch_stalls(hub, interval=0.01))
    try:
        await h.worker.wait_calls(1)
    finally:
        await cancel_and_wait(watcher)
    assert h.worker.calls[0].message_id == MID


# --- Generation -------------------------------------------------------------------------


class FakeProvider:
    """Yields the given tokens then a Finish; raises ProviderError (`fail_at`) or hangs
    (`hang_at`) instead of the token at that index, and waits for `gate` before the
    token at `gate_at`."""

    def __init__(
        self,
        tokens: list[str],
        *,
        fail_at: int | None = None,
        hang_at: int | None = None,
        gate_at: int | None = None,
        reason: FinishReason = FinishReason.STOP,
    ) -> None:
        self.tokens = tokens
        self.fail_at = fail_at
        self.hang_at = hang_at
        self.gate_at = gate_at
        self.gate = asyncio.Event()
        self.finish = Finish(reason, prompt_tokens=7, completion_tokens=len(tokens))
        self.requests: list[GenerationRequest] = []
        self.closed = 0

    async def stream(self, request: GenerationRequest) -> AsyncIterator[ProviderEvent]:
        self.requests.append(request)
        try:
            for i, text in enumerate(self.tokens):
                if i == self.fail_at:
                    raise ProviderError("boom")
                if i == self.hang_at:
                    await asyncio.Event().wait()
                if i == self.gate_at:
                    await self.gate.wait()
                yield Token(text)
            yield self.finish
        finally:
            self.closed += 1

    async def aclose(self) -> None:
        pass


def settings() -> Settings:
    return Settings(
        node_id=WORKER,
        lease_ttl_ms=300,
        batch_flush_ms=1.0,
        batch_max_tokens=1,  # one chunk per token: seqs are predictable
        history_context_messages=4,
    )


@dataclass
class GenerationRun:
    generation: Generation
    store: FakeStore
    provider: FakeProvider
    registry: CollectorRegistry

    def counter(self, name: str, **labels: str) -> float:
        return sample(self.registry, f"worker_{name}_total", **labels)


def make_generation(store: FakeStore, provider: FakeProvider) -> GenerationRun:
    registry = CollectorRegistry()
    generation = Generation(
        MID,
        store=store,  # type: ignore[arg-type]
        provider=provider,
        settings=settings(),
        metrics=WorkerMetrics(registry),
    )
    return GenerationRun(generation, store, provider, registry)


async def run(store: FakeStore, provider: FakeProvider) -> GenerationRun:
    r = make_generation(store, provider)
    await asyncio.wait_for(r.generation.run(), DEADLINE)
    return r


def seqs_and_deltas(store: FakeStore) -> list[tuple[int, str]]:
    return [(c.seq, c.delta) for c in store.chunks()]


@pytest.fixture
def store() -> FakeStore:
    return FakeStore(lease_ttl_ms=settings().lease_ttl_ms)


def history_item(message_id: str, role: str, text: str) -> HistoryItem:
    return HistoryItem(
        message_id=message_id,
        role=role,  # type: ignore[arg-type]
        text=text,
        created_at="2026-01-01T00:00:00.000+00:00",
    )


async def test_a_fresh_generation_appends_seq_1_to_n_and_finishes(store: FakeStore) -> None:
    store.add(prompt="What is up?")
    store.histories[SID] = [
        history_item("u_old", "user", "old question"),
        history_item("m_old", "assistant", "old answer"),
        history_item(user_item_id(MID), "user", "What is up?"),
    ]
    tokens = ["Hello", ",", " world", "!"]
    r = await run(store, FakeProvider(tokens))

    assert seqs_and_deltas(store) == list(enumerate(tokens, start=1))
    usage = Usage(prompt_tokens=7, completion_tokens=4)
    assert store.done_entry() == DoneEntry(4, FinishReason.STOP, usage)
    (finish,) = store.finishes
    assert finish.token.startswith(f"{WORKER}:")
    assert (finish.text, finish.last_seq, finish.reason) == ("Hello, world!", 4, FinishReason.STOP)
    assert (finish.usage, finish.outcome) == (usage, FinishOutcome.OK)
    progress = r.generation.progress
    assert (progress.outcome, progress.last_seq) == (Outcome.DONE, 4)
    assert finished_with(r.generation) == (SID, FinishReason.STOP, usage)
    assert MID not in store.generators.holders
    (request,) = r.provider.requests
    assert request.prompt == "What is up?"
    assert request.text_so_far == ""
    assert list(request.history) == [
        ChatTurn(role="user", content="old question"),
        ChatTurn(role="assistant", content="old answer"),
    ]
    assert r.counter("chunks_written") == 4
    assert r.counter("answers_finished", finish_reason="stop") == 1
    assert r.counter("takeovers") == 0


async def test_history_given_to_the_model_is_bounded(store: FakeStore) -> None:
    store.add()
    store.histories[SID] = [history_item(f"m_{i}", "assistant", f"turn {i}") for i in range(10)]
    r = await run(store, FakeProvider(["ok"]))
    (request,) = r.provider.requests
    assert [t.content for t in request.history] == ["turn 6", "turn 7", "turn 8", "turn 9"]


async def test_a_takeover_continues_after_the_cached_seq(store: FakeStore) -> None:
    store.add(deltas=("Hello", ","), completion_tokens=2)
    r = await run(store, FakeProvider([" world", "!"]))

    (request,) = r.provider.requests
    assert request.text_so_far == "Hello,"
    assert seqs_and_deltas(store) == [(1, "Hello"), (2, ","), (3, " world"), (4, "!")]
    (finish,) = store.finishes
    assert (finish.text, finish.last_seq) == ("Hello, world!", 4)
    assert finish.usage == Usage(prompt_tokens=7, completion_tokens=2 + 2)
    assert r.generation.progress.outcome == Outcome.DONE
    assert r.counter("takeovers") == 1
    assert r.counter("chunks_written") == 2


async def test_leased_when_another_worker_holds_the_lease(store: FakeStore) -> None:
    store.add()
    store.generators.holders[MID] = "worker-2:1"
    r = await run(store, FakeProvider(["never"]))
    assert r.generation.progress.outcome == Outcome.LEASED
    assert r.provider.requests == []
    assert store.finishes == []
    assert store.chunks() == []
    assert store.generators.holders[MID] == "worker-2:1"


async def test_lost_when_an_append_finds_the_lease_taken(store: FakeStore) -> None:
    store.add()

    def steal(seq: int) -> None:
        if seq == 2:  # this worker paused past its TTL; another took over
            store.generators.holders[MID] = "worker-2:9"

    store.before_append = steal
    r = await run(store, FakeProvider(["a", "b", "c"]))
    progress = r.generation.progress
    assert (progress.outcome, progress.last_seq) == (Outcome.LOST, 1)
    assert seqs_and_deltas(store) == [(1, "a")]
    assert store.finishes == []  # it does not finish
    assert r.generation.finished is None
    assert store.generators.holders[MID] == "worker-2:9"  # and leaves the new lease alone
    assert r.provider.closed == 1


async def test_lost_when_another_worker_took_the_lease_at_the_finish(store: FakeStore) -> None:
    store.add()

    def steal() -> None:  # the worker paused past its TTL just before finishing
        store.generators.holders[MID] = "worker-2:9"

    store.before_finish = steal
    r = await run(store, FakeProvider(["a", "b"]))
    (finish,) = store.finishes
    assert finish.outcome == FinishOutcome.LOST
    assert store.done_entry() is None
    assert store.metas[MID].status == MessageStatus.STREAMING
    # Nothing was finished: the gateway must call again (DONE would stop its driver),
    # and no "completed" event may be published for it.
    assert r.generation.progress.outcome == Outcome.LOST
    assert r.generation.finished is None
    assert r.counter("answers_finished", finish_reason="stop") == 0
    assert store.generators.holders[MID] == "worker-2:9"  # the new holder finishes


async def test_a_lease_that_lapsed_with_nobody_taking_it_still_finishes(store: FakeStore) -> None:
    store.add()

    def lapse() -> None:  # paused past its TTL (or Redis lost the lease); nobody took it
        store.generators.holders.pop(MID, None)

    store.before_finish = lapse
    r = await run(store, FakeProvider(["a", "b"]))
    (finish,) = store.finishes
    assert (finish.outcome, finish.last_seq, finish.text) == (FinishOutcome.OK, 2, "ab")
    usage = Usage(prompt_tokens=7, completion_tokens=2)
    assert store.done_entry() == DoneEntry(2, FinishReason.STOP, usage)
    assert r.generation.progress.outcome == Outcome.DONE
    assert finished_with(r.generation) == (SID, FinishReason.STOP, usage)
    assert MID not in store.generators.holders


async def test_an_append_takes_back_a_lease_that_lapsed_with_nobody_taking_it(
    store: FakeStore,
) -> None:
    store.add()
    holders: list[str | None] = []

    def lapse_at_2(seq: int) -> None:
        if seq == 2:
            holders.append(store.generators.holders.pop(MID, None))

    store.before_append = lapse_at_2
    r = make_generation(store, FakeProvider(["a", "b", "c"]))
    taken_back: list[str | None] = []
    store.before_finish = lambda: taken_back.append(store.generators.holders.get(MID))
    await asyncio.wait_for(r.generation.run(), DEADLINE)
    assert seqs_and_deltas(store) == [(1, "a"), (2, "b"), (3, "c")]
    (token,) = holders
    assert token is not None and token.startswith(f"{WORKER}:")
    assert taken_back == [token]  # held again by the same token up to the finish
    (finish,) = store.finishes
    assert (finish.outcome, finish.token) == (FinishOutcome.OK, token)
    assert r.generation.progress.outcome == Outcome.DONE


async def test_cancelled_before_it_starts_finishes_without_the_model(store: FakeStore) -> None:
    store.add(deltas=("partial",))
    store.cancelled.add(MID)
    r = await run(store, FakeProvider(["never"]))
    assert r.provider.requests == []
    (finish,) = store.finishes
    assert (finish.reason, finish.text, finish.last_seq) == (FinishReason.CANCELLED, "partial", 1)
    assert r.generation.progress.outcome == Outcome.DONE
    assert r.counter("answers_finished", finish_reason="cancelled") == 1


async def test_a_cancel_flag_mid_answer_finishes_with_cancelled(store: FakeStore) -> None:
    store.add()

    def cancel_at_3(seq: int) -> None:
        if seq == 3:
            store.cancelled.add(MID)

    store.before_append = cancel_at_3
    r = await run(store, FakeProvider(["a", "b", "c", "d"]))
    assert seqs_and_deltas(store) == [(1, "a"), (2, "b")]
    (finish,) = store.finishes
    assert (finish.reason, finish.text, finish.last_seq) == (FinishReason.CANCELLED, "ab", 2)
    assert store.done_entry() is not None
    assert r.generation.progress.outcome == Outcome.DONE
    finished = finished_with(r.generation)
    assert finished is not None and finished[1] == FinishReason.CANCELLED
    assert r.provider.closed == 1  # the model's stream is closed, not left to the GC


async def test_a_provider_error_releases_the_lease_and_reports_failed(store: FakeStore) -> None:
    store.add()
    r = await run(store, FakeProvider(["a", "b", "c"], fail_at=2))
    progress = r.generation.progress
    assert progress.outcome == Outcome.FAILED
    assert progress.detail == "boom"
    assert seqs_and_deltas(store) == [(1, "a"), (2, "b")]  # kept for the next try
    assert store.finishes == []
    assert MID not in store.generators.holders
    assert r.generation.finished is None
    assert r.counter("provider_errors") == 1


async def test_a_shutdown_mid_answer_hands_over(store: FakeStore) -> None:
    store.add()
    r = make_generation(store, FakeProvider(["a", "b", "c"], hang_at=1))
    task = asyncio.create_task(r.generation.run())
    await store.changes.wait_until(lambda: len(store.chunks()) == 1, "the first chunk")
    task.cancel()
    await asyncio.wait({task}, timeout=DEADLINE)
    assert task.cancelled()
    assert r.generation.progress.outcome == Outcome.HANDED_OVER
    assert MID not in store.generators.holders
    assert store.finishes == []
    assert r.provider.closed == 1


async def test_not_found_without_a_message(store: FakeStore) -> None:
    r = await run(store, FakeProvider(["never"]))
    assert r.generation.progress.outcome == Outcome.NOT_FOUND
    assert store.generators.acquired == 0


async def test_a_finished_message_is_done_without_a_lease(store: FakeStore) -> None:
    store.add(status=MessageStatus.DONE, deltas=("a", "b"))
    r = await run(store, FakeProvider(["never"]))
    progress = r.generation.progress
    assert (progress.outcome, progress.last_seq) == (Outcome.DONE, 2)
    assert store.generators.acquired == 0
    assert r.provider.requests == []


async def test_a_cached_final_record_is_done_without_the_model(store: FakeStore) -> None:
    store.add(deltas=("a",))
    store.streams[MID].append(DoneEntry(1, FinishReason.STOP, Usage()))
    r = await run(store, FakeProvider(["never"]))
    assert (r.generation.progress.outcome, r.generation.progress.last_seq) == (Outcome.DONE, 1)
    assert r.provider.requests == []
    assert store.finishes == []
    assert MID not in store.generators.holders  # the lease it took is released


async def test_the_generator_lease_is_renewed_while_generating(store: FakeStore) -> None:
    store.add()
    store.generators.ttl_ms = 30  # renewed every 10 ms
    r = make_generation(store, FakeProvider(["a", "b"], gate_at=1))
    task = asyncio.create_task(r.generation.run())
    await store.changes.wait_until(lambda: store.generators.renewals >= 2, "two renewals")
    r.provider.gate.set()
    await asyncio.wait_for(task, DEADLINE)
    assert r.generation.progress.outcome == Outcome.DONE
    assert seqs_and_deltas(store) == [(1, "a"), (2, "b")]


# --- Redis losing chunks: written again from memory, or the answer ends as state_lost ---


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every chunk the worker writes gets a write time of its own (1000, 2000, ...), so a
    chunk written again with a new time would not pass for the original."""
    monkeypatch.setattr(
        "services.ai_worker.generation.now_ms", itertools.count(1_000, 1_000).__next__
    )


def lose_before_append(store: FakeStore, at_seq: int, k: int) -> list[ChunkEntry]:
    """Once, just before chunk `at_seq` is appended, Redis loses the last `k` chunks;
    returns them (filled in when it happens)."""
    lost: list[ChunkEntry] = []

    def hook(seq: int) -> None:
        if seq == at_seq and not lost:
            lost.extend(store.lose_last(k))

    store.before_append = hook
    return lost


@pytest.mark.usefixtures("clock")
@pytest.mark.parametrize("k", [1, 2, 4], ids=["one", "two", "all"])
async def test_chunks_redis_lost_mid_answer_are_written_again_identically(
    store: FakeStore, k: int
) -> None:
    store.add()
    tokens = ["a", "b", "c", "d", "e", "f"]
    lost = lose_before_append(store, 5, k)
    r = await run(store, FakeProvider(tokens))

    assert [c.seq for c in lost] == list(range(5 - k, 5))
    chunks = store.chunks()
    assert [c.seq for c in chunks] == [1, 2, 3, 4, 5, 6]  # each exactly once, in order
    assert chunks[4 - k : 4] == lost  # the same delta and written_ms as before
    assert [c.written_ms for c in chunks] == [1_000, 2_000, 3_000, 4_000, 5_000, 6_000]
    (finish,) = store.finishes
    assert (finish.outcome, finish.text, finish.last_seq) == (FinishOutcome.OK, "abcdef", 6)
    assert store.done_entry() == DoneEntry(
        6, FinishReason.STOP, Usage(prompt_tokens=7, completion_tokens=6)
    )
    assert (r.generation.progress.outcome, r.generation.progress.last_seq) == (Outcome.DONE, 6)
    assert r.counter("chunks_rewritten") == k
    assert r.counter("chunks_written") == 6


async def test_a_loss_back_before_this_generations_first_seq_ends_with_state_lost(
    store: FakeStore,
) -> None:
    # A takeover: chunks 1..3 came from a previous worker, this one wrote 4 and 5 when
    # Redis comes back with chunk 1 only. Chunks 2 and 3 are nobody's to write again.
    store.add(deltas=("a", "b", "c"), completion_tokens=3)
    lose_before_append(store, 6, 4)
    r = await run(store, FakeProvider(["d", "e", "f"]))

    assert seqs_and_deltas(store) == [(1, "a")]  # nothing written again, nothing twice
    state_lost = DoneEntry(1, FinishReason.ERROR, Usage(completion_tokens=3), ErrorCode.STATE_LOST)
    assert store.done_entry() == state_lost
    (finish,) = store.finishes
    assert finish.token.startswith(f"{WORKER}:")
    assert (finish.outcome, finish.text, finish.last_seq) == (FinishOutcome.OK, "a", 1)
    assert (finish.reason, finish.error) == (FinishReason.ERROR, ErrorCode.STATE_LOST)
    assert store.metas[MID].status == MessageStatus.DONE
    assert MID not in store.generators.holders
    assert (r.generation.progress.outcome, r.generation.progress.last_seq) == (Outcome.DONE, 1)
    assert r.counter("chunks_rewritten") == 0
    assert r.provider.closed == 1


@pytest.mark.usefixtures("clock")
async def test_chunks_lost_right_before_the_finish_are_written_again_first(
    store: FakeStore,
) -> None:
    store.add()
    written: list[ChunkEntry] = []

    def lose_once() -> None:
        if not written:
            written.extend(store.chunks())
            store.lose_last(2)

    store.before_finish = lose_once
    r = await run(store, FakeProvider(["a", "b", "c", "d"]))

    assert [c.seq for c in written] == [1, 2, 3, 4]
    assert store.chunks() == written  # 3 and 4 again, identically, once each
    assert [f.outcome for f in store.finishes] == [FinishOutcome.GAP, FinishOutcome.OK]
    assert all((f.last_seq, f.text) == (4, "abcd") for f in store.finishes)
    assert store.done_entry() == DoneEntry(
        4, FinishReason.STOP, Usage(prompt_tokens=7, completion_tokens=4)
    )
    assert r.generation.progress.outcome == Outcome.DONE
    assert finished_with(r.generation) == (
        SID,
        FinishReason.STOP,
        Usage(prompt_tokens=7, completion_tokens=4),
    )
    assert r.counter("chunks_rewritten") == 2
    assert r.counter("answers_finished", finish_reason="stop") == 1


async def test_redis_that_keeps_losing_chunks_ends_the_answer_instead_of_looping(
    store: FakeStore,
) -> None:
    store.add()

    def lose_2_before_3(seq: int) -> None:  # every time chunk 3 is tried
        if seq == 3:
            store.lose_last(1)

    store.before_append = lose_2_before_3
    r = await run(store, FakeProvider(["a", "b", "c", "d"]))

    # Chunk 2 is written again before each of the bounded tries of chunk 3.
    assert r.counter("chunks_rewritten") == MAX_REPAIRS + 1
    assert seqs_and_deltas(store) == [(1, "a"), (2, "b")]
    (finish,) = store.finishes
    assert (finish.last_seq, finish.text, finish.error) == (2, "ab", ErrorCode.STATE_LOST)
    assert r.generation.progress.outcome == Outcome.DONE


async def test_a_lease_an_append_took_back_is_renewed_again(store: FakeStore) -> None:
    store.add()
    store.generators.ttl_ms = 30  # renewed every 10 ms
    # After "b" the model pauses for long: the lease must be kept meanwhile.
    r = make_generation(store, FakeProvider(["a", "b", "c"], gate_at=1, hang_at=2))
    task = asyncio.create_task(r.generation.run())
    try:
        await store.changes.wait_until(lambda: len(store.chunks()) == 1, "the first chunk")
        token = store.generators.holders.pop(MID)  # Redis lost the lease; nobody took it
        tries = store.generators.renewal_tries
        await store.changes.wait_until(
            lambda: store.generators.renewal_tries > tries, "a renewal to find the lease gone"
        )
        r.provider.gate.set()
        await store.changes.wait_until(lambda: len(store.chunks()) == 2, "the second chunk")
        assert store.generators.holders[MID] == token  # held again by this worker
        renewals = store.generators.renewals
        # Or another worker may take it while the model pauses.
        await store.changes.wait_until(
            lambda: store.generators.renewals >= renewals + 2, "renewals after the take-back"
        )
    finally:
        await cancel_and_wait(task)


def latency_counts(r: GenerationRun) -> tuple[float, float]:
    """How many times-to-first-token and answer durations the worker observed."""
    return (
        sample(r.registry, "worker_time_to_first_token_seconds_count"),
        sample(r.registry, "worker_answer_duration_seconds_count"),
    )


async def test_a_new_answer_observes_its_latencies_and_counts_its_tokens(
    store: FakeStore,
) -> None:
    store.add()
    r = await run(store, FakeProvider(["Hello", ",", " world", "!"]))
    assert latency_counts(r) == (1, 1)
    first = sample(r.registry, "worker_time_to_first_token_seconds_sum")
    total = sample(r.registry, "worker_answer_duration_seconds_sum")
    assert 0 <= first <= total < DEADLINE
    assert r.counter("tokens_written") >= 4  # at least one a chunk


async def test_a_takeover_or_a_failure_observes_no_latency(store: FakeStore) -> None:
    store.add(deltas=("Hello", ","), completion_tokens=2)
    taken_over = await run(store, FakeProvider([" world", "!"]))
    assert latency_counts(taken_over) == (0, 0)
    assert taken_over.counter("tokens_written") >= 2

    failing = FakeStore(lease_ttl_ms=settings().lease_ttl_ms)
    failing.add()
    failed = await run(failing, FakeProvider(["a", "b"], fail_at=1))
    assert failed.generation.progress.outcome == Outcome.FAILED
    assert latency_counts(failed) == (1, 0)  # the first chunk came; the answer never ended
