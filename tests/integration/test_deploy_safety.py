"""The deploy's real processes (issue 7): Redis keeps its data across a crash, and a
service with an unsafe setting exits before it listens."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis

from deploy.probes import port_open, probe
from deploy.spec import ClusterSpec, Process
from deploy.supervisor import Binaries, build_processes, pid_alive
from tests.conftest import free_ports, wait_for

pytestmark = pytest.mark.integration

GOOD = "7e" * 32


class RedisProcess:
    """The deploy's redis command, started and killed by pid."""

    def __init__(self, proc: Process) -> None:
        self.proc = proc
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.popen = subprocess.Popen(
            self.proc.command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        popen = self.popen
        wait_for(
            lambda: popen.poll() is not None or probe(self.proc).ok,
            15,
            f"redis-server to answer on port {self.proc.port}",
            poll=0.02,
        )
        assert popen.poll() is None, f"redis-server exited with {popen.returncode}"

    def kill9(self) -> None:
        assert self.popen is not None
        pid = self.popen.pid
        os.kill(pid, signal.SIGKILL)
        self.popen.wait(timeout=10)
        assert not pid_alive(pid)

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(timeout=10)


@pytest.fixture
def deploy_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    spec = ClusterSpec.on_free_ports(tmp_path / "run", gateways=1, workers=1)
    bins = Binaries(nginx="nginx", redis_server="redis-server", tansu="tansu")
    (proc,) = [p for p in build_processes(spec, bins) if p.name == "redis"]
    (spec.run_dir / "redis").mkdir(parents=True)  # Cluster.up makes it; so does this test
    redis = RedisProcess(proc)
    try:
        yield redis
    finally:
        redis.stop()


def test_redis_keeps_its_data_across_a_kill_9(deploy_redis: RedisProcess) -> None:
    deploy_redis.start()
    port = deploy_redis.proc.port
    with Redis(port=port, decode_responses=True) as client:
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("appendfsync") == {"appendfsync": "everysec"}
        client.set("survivor", "still here")
        client.rpush("history", "hello", "world")
        client.hset("session", mapping={"owner": "alice"})
    # With `everysec`, Redis may answer a write before it is in the file (while a slow
    # fsync runs, for up to 2 s): a crash then loses it. What is in the file survives.
    aof_dir = Path(deploy_redis.proc.command[deploy_redis.proc.command.index("--dir") + 1])
    wait_for(
        lambda: any(b"alice" in f.read_bytes() for f in aof_dir.glob("appendonlydir/*.aof")),
        10,
        "the writes in the append-only file",
    )
    deploy_redis.kill9()
    deploy_redis.start()  # same command, same --dir
    with Redis(port=port, decode_responses=True) as client:
        assert client.get("survivor") == "still here"
        assert client.lrange("history", 0, -1) == ["hello", "world"]
        assert client.hgetall("session") == {"owner": "alice"}
    run_dir = Path(deploy_redis.proc.command[deploy_redis.proc.command.index("--dir") + 1])
    assert run_dir.name == "redis" and any(run_dir.iterdir()), "the AOF lives under run/redis"


def _service(module: str, host: str, env: dict[str, str], cwd: Path) -> tuple[int, str, int]:
    """Run `python -m module --host host --port <free>`; (exit code, stderr, port)."""
    (port,) = free_ports(1)
    environ = {k: v for k, v in os.environ.items() if k not in ("JWT_SECRET", "AUTH_DEV_MODE")}
    done = subprocess.run(
        [sys.executable, "-m", module, "--host", host, "--port", str(port)],
        env={**environ, **env, "KAFKA_ENABLED": "false", "REDIS_URL": "redis://127.0.0.1:1/0"},
        cwd=cwd,  # no .env of the checkout
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.returncode, done.stderr, port


@pytest.mark.parametrize(
    ("module", "host", "env", "named"),
    [
        ("services.ws_gateway", "127.0.0.1", {}, "JWT_SECRET is not set"),
        (
            "services.ws_gateway",
            "127.0.0.1",
            {"JWT_SECRET": "change-me-in-production"},
            "JWT_SECRET is a placeholder",
        ),
        ("services.ai_worker", "127.0.0.1", {"JWT_SECRET": "x" * 20}, "JWT_SECRET is too short"),
        (
            "services.ws_gateway",
            "0.0.0.0",
            {"JWT_SECRET": GOOD, "AUTH_DEV_MODE": "true"},
            "AUTH_DEV_MODE=true",
        ),
        (
            "services.ai_worker",
            "0.0.0.0",
            {"JWT_SECRET": GOOD, "AUTH_DEV_MODE": "true"},
            "AUTH_DEV_MODE=true",
        ),
    ],
)
def test_services_refuse_to_start(
    tmp_path: Path, module: str, host: str, env: dict[str, str], named: str
) -> None:
    code, stderr, port = _service(module, host, env, tmp_path)
    assert code != 0
    assert f"refusing to start: {named}" in stderr, stderr
    assert "Traceback" not in stderr, stderr
    assert not port_open(port), "it never listened"
