"""REDIS_HA=sentinel: kill -9 of the Redis primary mid-stream, twice (the second time
the primary the first failover made). Every answer ends with `done` within
STREAM_RECOVERY_TIMEOUT: complete and exactly once, or with `state_lost` (asynchronous
replication may lose the last writes; docs/redis-ha.md); nobody waits forever."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import pytest

from deploy.supervisor import pid_alive
from tests.conftest import ClusterHandle, StartCluster, wait_for
from tests.integration.redis_helpers import eventually
from tests.sentinel_helpers import primary_port, quicken, settled
from tests.storage_faults import ENV, finish_with, start_answers

pytestmark = pytest.mark.e2e

ROUNDS = 2
SETTLE_S = 30.0
"""How long the Sentinels get to agree again after a node came back (a few seconds with
sentinel_helpers.quicken; 10 to 20 s without)."""
FAILOVER_S = 15.0


@pytest.fixture(scope="module")
def ha_cluster(cluster_factory: StartCluster) -> Iterator[ClusterHandle]:
    """Stopped at the end of the module: nothing else uses it, and its seven stores
    would otherwise run through the rest of the session."""
    handle = cluster_factory(gateways=2, workers=2, redis_ha="sentinel", extra_env=ENV)
    quicken(handle.spec.sentinel_ports, [handle.spec.redis_port, handle.spec.redis_replica_port])
    yield handle
    report = handle.stop()
    assert report.clean, report


def crash_and_hold(cluster: ClusterHandle, name: str) -> None:
    """kill -9 the program so that it stays down: supervisor would start it again at
    once, back before the Sentinels miss it, and no failover would happen. So it is
    frozen (SIGSTOP), supervisor is told to stop it (its SIGTERM waits, undelivered, on
    the frozen process), and then killed with SIGKILL: it dies as in a crash, without
    a shutdown, and supervisor, stopping it anyway, does not restart it."""
    supervisor = cluster.cluster.supervisor
    pid = cluster.pid_of(name)
    assert pid, f"{name} is not running"
    os.killpg(pid, signal.SIGSTOP)
    try:
        supervisor.stop_process(name)
    finally:
        os.killpg(pid, signal.SIGKILL)
    wait_for(lambda: not pid_alive(pid), 10, f"{name} (pid {pid}) to die")
    wait_for(
        lambda: supervisor.processes()[name]["statename"] == "STOPPED",
        10,
        f"{name} to stay stopped",
    )


async def test_primary_kill9_mid_stream_fails_over_and_ends_every_answer(
    ha_cluster: ClusterHandle,
) -> None:
    spec = ha_cluster.spec
    names = {spec.redis_port: "redis", spec.redis_replica_port: "redis-2"}
    summary = []
    for round_no in range(1, ROUNDS + 1):
        primary = await eventually(
            lambda: settled(spec.sentinel_ports), SETTLE_S, "the Sentinels to settle", poll=0.2
        )
        victim = names[primary]
        survivor_port = next(port for port in names if port != primary)
        survivor = names[survivor_port]
        runs = await start_answers(
            ha_cluster, f"ha{round_no}", "Tell me a long story about failover."
        )
        start = time.monotonic()
        crash_and_hold(ha_cluster, victim)

        async def failed_over(survivor_port: int = survivor_port) -> bool:
            named = [await primary_port(port) for port in spec.sentinel_ports]
            return named == [survivor_port] * len(named)

        await eventually(failed_over, FAILOVER_S, f"a failover to {survivor}", poll=0.1)
        failover_s = time.monotonic() - start
        # The old primary comes back as a replica of the new one, while the answers run.
        completed, lost = await finish_with(ha_cluster, runs, restart=victim)
        summary.append(
            f"round {round_no}: kill -9 {victim}, {survivor} primary {failover_s:.1f}s "
            f"later; {completed} answers completed, {lost} ended with state_lost"
        )
    # (Round 2 began only once round 1's victim was back as a replica in sync.)
    print("\n" + "\n".join(summary))
