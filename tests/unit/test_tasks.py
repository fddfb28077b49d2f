"""cancel_and_wait and TaskSupervisor: stopping tasks, and keeping loops alive."""

from __future__ import annotations

import asyncio
import logging

import pytest

from services.common import tasks as tasks_module
from services.common.tasks import TaskSupervisor, cancel_and_wait, task_stacks

pytestmark = pytest.mark.unit

DEADLINE = 2.0


async def forever() -> None:
    await asyncio.Event().wait()


# --- cancel_and_wait ---------------------------------------------------------------------


async def test_cancel_and_wait_ends_running_tasks() -> None:
    tasks = [asyncio.create_task(forever()) for _ in range(3)]
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel_and_wait(*tasks), DEADLINE)
    assert all(t.done() and t.cancelled() for t in tasks)


async def test_cancel_and_wait_swallows_errors_and_skips_none() -> None:
    async def fails() -> None:
        raise RuntimeError("boom")

    async def fails_on_cancel() -> None:
        try:
            await forever()
        finally:
            raise ValueError("cleanup failed")  # noqa: B012 - the point of the test

    failed = asyncio.create_task(fails())
    await asyncio.wait({failed}, timeout=DEADLINE)
    assert failed.done()
    messy = asyncio.create_task(fails_on_cancel())
    await asyncio.sleep(0)  # let it start waiting
    await asyncio.wait_for(cancel_and_wait(None, failed, messy, None), DEADLINE)
    assert isinstance(failed.exception(), RuntimeError)
    assert isinstance(messy.exception(), ValueError)


async def test_cancel_and_wait_cancels_again_a_task_that_swallowed_it(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """As redis-py can: the first cancellation is caught and the task waits on."""
    monkeypatch.setattr(tasks_module, "RECANCEL_S", 0.05)
    swallowed = 0

    async def deaf_once() -> None:
        nonlocal swallowed
        try:
            await forever()
        except asyncio.CancelledError:
            swallowed += 1
        await forever()

    task = asyncio.create_task(deaf_once(), name="deaf-once")
    await asyncio.sleep(0)
    with caplog.at_level(logging.WARNING):
        await asyncio.wait_for(cancel_and_wait(task), DEADLINE)
    assert swallowed == 1
    assert task.cancelled()
    assert any(getattr(r, "detail", None) == "deaf-once" for r in caplog.records)


async def test_task_stacks_names_each_task_and_where_it_waits() -> None:
    task = asyncio.create_task(forever(), name="parked-here")
    await asyncio.sleep(0)
    try:
        stacks = task_stacks()
        assert "parked-here" in stacks
        assert "in forever" in stacks
    finally:
        await cancel_and_wait(task)


async def test_cancel_and_wait_with_nothing() -> None:
    await asyncio.wait_for(cancel_and_wait(), DEADLINE)
    await asyncio.wait_for(cancel_and_wait(None), DEADLINE)


async def test_cancel_and_wait_runs_the_tasks_cleanup() -> None:
    cleaned = asyncio.Event()

    async def with_cleanup() -> None:
        try:
            await forever()
        finally:
            cleaned.set()

    task = asyncio.create_task(with_cleanup())
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel_and_wait(task), DEADLINE)
    assert cleaned.is_set()


async def test_the_callers_own_cancellation_propagates() -> None:
    """It drops its tasks' cancellations and errors, never its caller's cancellation."""
    started = asyncio.Event()
    release = asyncio.Event()

    async def slow_to_stop() -> None:
        started.set()
        try:
            await forever()
        except asyncio.CancelledError:
            await asyncio.shield(release.wait())  # a cleanup that takes a while

    task = asyncio.create_task(slow_to_stop())
    await asyncio.wait_for(started.wait(), DEADLINE)
    caller = asyncio.create_task(cancel_and_wait(task))
    await asyncio.sleep(0)  # the caller is waiting for the task now
    assert not caller.done()
    caller.cancel()
    await asyncio.wait({caller}, timeout=DEADLINE)
    assert caller.cancelled()
    release.set()
    await asyncio.wait({task}, timeout=DEADLINE)
    assert task.done()


async def test_task_errors_are_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    async def fails() -> None:
        raise RuntimeError("boom")

    failed = asyncio.create_task(fails(), name="the-failing-one")
    await asyncio.wait({failed}, timeout=DEADLINE)
    with caplog.at_level(logging.DEBUG, logger="services.common.tasks"):
        await asyncio.wait_for(cancel_and_wait(failed), DEADLINE)
    assert any("the-failing-one" in r.getMessage() for r in caplog.records)


# --- TaskSupervisor ------------------------------------------------------------------------


class FlakyLoop:
    """A loop body that crashes `crashes` times, then runs until cancelled."""

    def __init__(self, crashes: int, *, returns: bool = False) -> None:
        self.to_crash = crashes
        self.returns = returns
        self.calls = 0
        self.crashed = asyncio.Event()
        self.running = asyncio.Event()
        self.cancelled = asyncio.Event()

    async def __call__(self) -> None:
        self.calls += 1
        if self.to_crash:
            self.to_crash -= 1
            self.crashed.set()
            if self.returns:
                return
            raise RuntimeError(f"crash {self.calls}")
        self.running.set()
        try:
            await forever()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise


async def test_a_loop_that_raises_is_restarted(caplog: pytest.LogCaptureFixture) -> None:
    supervisor = TaskSupervisor(backoff=0.05, max_backoff=0.05)
    loop = FlakyLoop(crashes=1)
    with caplog.at_level(logging.ERROR, logger="services.common.tasks"):
        supervisor.start("relay", loop)
        assert supervisor.problem() is None  # started, not yet run
        await asyncio.wait_for(loop.running.wait(), DEADLINE)
    assert loop.crashed.is_set()
    assert supervisor.crashes("relay") == 1
    assert supervisor.problem() is None  # back and running
    assert loop.calls == 2
    assert any("crashed" in r.getMessage() for r in caplog.records)
    await asyncio.wait_for(supervisor.close(), DEADLINE)


async def test_problem_names_the_loop_that_is_down_while_it_backs_off() -> None:
    supervisor = TaskSupervisor(backoff=30.0)  # it stays down for the whole test
    healthy = FlakyLoop(crashes=0)
    flaky = FlakyLoop(crashes=1)
    supervisor.start("healthy", healthy)
    supervisor.start("flaky", flaky)
    await asyncio.wait_for(healthy.running.wait(), DEADLINE)
    await asyncio.wait_for(flaky.crashed.wait(), DEADLINE)
    await asyncio.sleep(0)  # the supervisor handles the crash
    problem = supervisor.problem()
    assert problem is not None
    assert "flaky" in problem
    assert "1 crash" in problem
    assert "healthy" not in problem
    assert supervisor.crashes("flaky") == 1
    assert supervisor.crashes("healthy") == 0
    await asyncio.wait_for(supervisor.close(), DEADLINE)
    assert flaky.calls == 1  # closed during the backoff: never restarted
    assert healthy.cancelled.is_set()


@pytest.mark.parametrize(
    ("crashes", "returns", "max_backoff"),
    [(2, True, 0.01), (3, False, 0.02)],
    ids=["a-loop-that-returns-is-restarted-too", "every-crash-is-counted"],
)
async def test_every_end_of_a_loop_is_counted_and_restarted(
    crashes: int, returns: bool, max_backoff: float
) -> None:
    supervisor = TaskSupervisor(backoff=0.01, max_backoff=max_backoff)
    loop = FlakyLoop(crashes=crashes, returns=returns)
    supervisor.start("flaky", loop)
    await asyncio.wait_for(loop.running.wait(), DEADLINE)
    assert supervisor.crashes("flaky") == crashes
    assert loop.calls == crashes + 1
    assert supervisor.problem() is None
    await asyncio.wait_for(supervisor.close(), DEADLINE)


async def test_close_stops_every_loop() -> None:
    supervisor = TaskSupervisor(backoff=0.01)
    loops = [FlakyLoop(crashes=0) for _ in range(3)]
    for i, loop in enumerate(loops):
        supervisor.start(f"loop-{i}", loop)
    for loop in loops:
        await asyncio.wait_for(loop.running.wait(), DEADLINE)
    await asyncio.wait_for(supervisor.close(), DEADLINE)
    assert all(loop.cancelled.is_set() for loop in loops)
    assert all(loop.calls == 1 for loop in loops)  # none was restarted
    supervised = [t for t in asyncio.all_tasks() if t.get_name().startswith("supervised-loop-")]
    assert supervised == []
