"""Shared fixtures: whole local clusters started by deploy/cluster.py on free ports.

`cluster` is one session-wide cluster (3 gateways, 3 workers, AUTH_DEV_MODE=true);
`cluster_factory(**spec_fields)` starts another with different settings and stops
it at the end of the session. Both run in their own tmp run dir on free loopback
ports, so they never collide with a running `make deploy`.
"""

from __future__ import annotations

import os
import secrets
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from deploy.cluster import Cluster, ClusterSpec, StopReport
from deploy.spec import free_ports as free_ports  # re-exported for the tests
from deploy.supervisor import pid_alive
from services.common.settings import Settings

StartCluster = Callable[..., "ClusterHandle"]


def wait_for(condition: Callable[[], Any], timeout: float, what: str, poll: float = 0.1) -> Any:
    """Poll until condition() is truthy and return it; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(poll)


class ClusterHandle:
    """A running cluster as tests see it: URLs, pids, and ways to hurt its nodes."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.spec = cluster.spec
        self.run_dir: Path = self.spec.run_dir
        self.ports: dict[str, int] = self.spec.all_ports()
        self.redis_url = self.spec.redis_url
        self.kafka_bootstrap = self.spec.kafka_bootstrap
        self.public_url = self.spec.public_url
        self.internal_url = self.spec.internal_url
        self.status_url = self.spec.status_url
        self.frontend_url = self.spec.frontend_url
        self.frontend_origin = f"http://localhost:{self.spec.frontend_port}"
        """An Origin the gateways accept (the deploy's own frontend)."""
        self.jwt_secret = self.spec.extra_env.get(
            "JWT_SECRET", Settings.model_fields["jwt_secret"].default
        )
        self.gateway_names = self.spec.gateway_names
        self.worker_names = self.spec.worker_names
        self.stopped = False

    def ws_url(self, session_id: str, token: str | None = "dev-token", user_id: str = "u1") -> str:
        """ws://…/ws/chat through nginx; token=None leaves the token out."""
        query: dict[str, str] = {"session_id": session_id, "user_id": user_id}
        if token is not None:
            query["token"] = token
        return f"ws://127.0.0.1:{self.spec.public_port}/ws/chat?{urlencode(query)}"

    def node_url(self, name: str) -> str:
        """The direct base URL of gateway-N / worker-N (bypassing nginx)."""
        return f"http://127.0.0.1:{self.spec.node_port(name)}"

    def pids(self) -> dict[str, int]:
        """name -> pid of every program, from supervisor (0 = not running)."""
        return self.cluster.pids()

    def pid_of(self, name: str) -> int:
        return self.pids()[name]

    def gateway_pids(self) -> dict[str, int]:
        pids = self.pids()
        return {name: pids[name] for name in self.gateway_names}

    def worker_pids(self) -> dict[str, int]:
        pids = self.pids()
        return {name: pids[name] for name in self.worker_names}

    def kill9(self, name: str) -> int:
        """SIGKILL the program's process group (a crash); returns the pid it had.

        Returns once the process is gone; supervisor then restarts it."""
        pid = self.pid_of(name)
        assert pid, f"{name} is not running"
        os.killpg(pid, signal.SIGKILL)
        wait_for(lambda: not pid_alive(pid), 10, f"{name} (pid {pid}) to die")
        return pid

    def sigterm(self, name: str) -> int:
        """SIGTERM the program (graceful shutdown); returns its pid without waiting."""
        pid = self.pid_of(name)
        assert pid, f"{name} is not running"
        os.kill(pid, signal.SIGTERM)
        return pid

    def stop_process(self, name: str, timeout: float = 30.0) -> None:
        """`supervisorctl stop name`: graceful, and it stays down until start_process."""
        self.cluster.supervisor.stop_process(name)
        wait_for(lambda: not self.pid_of(name), timeout, f"{name} to stop")

    def start_process(self, name: str, timeout: float = 30.0) -> int:
        """`supervisorctl start name`, then wait until it is healthy; returns the pid."""
        self.cluster.supervisor.start_process(name)
        return self.wait_healthy(name, timeout)

    def wait_healthy(self, name: str, timeout: float = 30.0) -> int:
        """Wait until supervisor says RUNNING and the health probe passes; return the pid."""

        def healthy() -> int:
            pid = self.pid_of(name)
            return pid if pid and self.cluster.probe(name).ok else 0

        result: int = wait_for(healthy, timeout, f"{name} to be healthy")
        return result

    def log(self, name: str) -> str:
        return self.cluster.log_path(name).read_text(errors="replace")

    def stop(self) -> StopReport:
        """Stop everything (idempotent); the report lists what survived."""
        if self.stopped:
            return StopReport()
        self.stopped = True
        return self.cluster.stop()


@pytest.fixture(scope="session")
def cluster_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartCluster]:
    """start(gateways=1, workers=1, sticky=..., extra_env={...}, ...) -> ClusterHandle."""
    started: list[ClusterHandle] = []

    def start(**fields: Any) -> ClusterHandle:
        gateways = fields.pop("gateways", 3)
        workers = fields.pop("workers", 3)
        extra_env = {
            "AUTH_DEV_MODE": "true",
            # A per-cluster secret, so tests mint tokens with handle.jwt_secret.
            "JWT_SECRET": secrets.token_hex(16),
            # Durable Streams long-polls answer 204 after 4 s instead of 20: the
            # conformance suite waits for two of them within its 5 s test timeout.
            "DS_LONG_POLL_TIMEOUT_S": "4",
            **fields.pop("extra_env", {}),
        }
        spec = ClusterSpec.on_free_ports(
            tmp_path_factory.mktemp("cluster"), gateways, workers, extra_env=extra_env, **fields
        )
        handle = ClusterHandle(Cluster(spec))
        started.append(handle)
        handle.cluster.up()
        return handle

    yield start
    problems = []
    for handle in started:
        report = handle.stop()
        if not report.clean:
            problems.append(f"{handle.run_dir}: {report}")
    assert not problems, f"clusters left processes or ports behind: {problems}"


@pytest.fixture(scope="session")
def cluster(cluster_factory: StartCluster) -> ClusterHandle:
    """The session's 3-gateway, 3-worker cluster."""
    return cluster_factory()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Keep each phase's report on the test item (`item.rep_call`), so a fixture's
    teardown can tell that its test failed (the browser tests save a screenshot)."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, f"rep_{report.when}", report)
