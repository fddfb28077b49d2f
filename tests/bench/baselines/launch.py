"""Start a baseline on free loopback ports, hand back its Target, stop it all.

    with start_bare(shape, run_dir) as bare: ...          # Target("bare", CHAT_V1, ...)
    with start_socketio(shape, run_dir) as peer: ...      # Target("socketio", SOCKETIO, ...)

By hand: `python -m tests.bench.baselines.launch {bare,socketio} [options]` starts
one, prints its URL and pids, and stops it on Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from types import TracebackType

import psutil
from redis import Redis, RedisError

from deploy.spec import free_ports
from nginx.render import find_nginx, nginx_command
from tests.bench.baselines import sio_nginx
from tests.bench.baselines.procs import BaselineError, Child, Processes, environment, http_ok
from tests.bench.baselines.sio_server import CHANNEL
from tests.bench.targets import CHAT_V1, SOCKETIO, ModelShape, Target

START_TIMEOUT = 30.0
"""Seconds each step of a start may take (a busy 2-core box starts Python slowly)."""
_PYTHON = sys.executable
_WORKER_NAME = "sio-worker-{}"


class Baseline:
    """A running baseline: `target` for the load generator, `stop()` (or `with`) to end it."""

    def __init__(self, target: Target, processes: Processes) -> None:
        self.target = target
        self.processes = processes

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every process this baseline started; SIGKILL what outlives `timeout`."""
        self.processes.stop(timeout)

    def __enter__(self) -> Baseline:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_bare(shape: ModelShape, run_dir: Path) -> Baseline:
    """One bare uvicorn process (tests.bench.baselines.bare). pids: {"server": [pid]}.

    Raises BaselineError (with the log's tail) if it does not answer in time."""
    (port,) = free_ports(1)
    procs = Processes(run_dir)
    try:
        argv = [_PYTHON, "-m", "tests.bench.baselines.bare", "--port", str(port)]
        server = procs.start("server", "bare", argv, environment(shape.env()))
        procs.wait_ready(
            [server], lambda: http_ok(port, "/health"), f"bare on port {port}", START_TIMEOUT
        )
    except BaseException:
        procs.stop()
        raise
    return Baseline(Target("bare", CHAT_V1, f"ws://127.0.0.1:{port}/ws/chat", procs.pids()), procs)


def start_socketio(
    shape: ModelShape, run_dir: Path, servers: int = 3, workers: int = 3
) -> Baseline:
    """The socket.io peer: its own redis-server, `servers` python-socketio servers,
    `workers` workers, and nginx (ip_hash) in front.

    pids: {"redis": [pid], "server": [...], "worker": [...], "nginx": [master, workers...]}.
    Raises BaselineError (with the log's tail) if a part does not come up in time."""
    if servers < 1 or workers < 1:
        raise ValueError("the socket.io peer needs at least one server and one worker")
    nginx_port, redis_port, *server_ports = free_ports(servers + 2)
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    procs = Processes(run_dir)
    try:
        with Redis(host="127.0.0.1", port=redis_port, socket_timeout=2.0) as redis:
            _start_redis(procs, run_dir, redis_port, redis)
            _start_servers(procs, shape, server_ports, redis_url, redis)
            _start_workers(procs, shape, workers, redis_url, redis)
        _start_nginx(procs, run_dir, nginx_port, server_ports)
    except BaseException:
        procs.stop()
        raise
    url = f"ws://127.0.0.1:{nginx_port}/socket.io/?EIO=4&transport=websocket"
    return Baseline(Target("socketio", SOCKETIO, url, procs.pids()), procs)


def _start_redis(procs: Processes, run_dir: Path, port: int, redis: Redis) -> None:
    binary = shutil.which("redis-server") or shutil.which("redis-server", path="/usr/bin")
    if binary is None:
        raise BaselineError("redis-server is not installed (apt-get install redis-server)")
    data = run_dir / "redis"
    data.mkdir(parents=True, exist_ok=True)
    argv = [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        # A bench broker: nothing to keep, so no disk I/O in the measurements.
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(data),
        "--daemonize",
        "no",
        "--logfile",
        "",
    ]
    child = procs.start("redis", "redis", argv, environment({}))
    procs.wait_ready([child], lambda: _pings(redis), f"redis on port {port}", START_TIMEOUT)


def _pings(redis: Redis) -> bool:
    try:
        return bool(redis.ping())
    except RedisError:
        return False


def _start_servers(
    procs: Processes, shape: ModelShape, ports: list[int], redis_url: str, redis: Redis
) -> None:
    env = environment(shape.env())
    started: list[Child] = []
    for n, port in enumerate(ports, 1):
        argv = [_PYTHON, "-m", "tests.bench.baselines.sio_server", "--port", str(port)]
        started.append(
            procs.start("server", f"sio-server-{n}", [*argv, "--redis-url", redis_url], env)
        )
    for child, port in zip(started, ports, strict=True):
        procs.wait_ready(
            [child],
            partial(http_ok, port, "/health"),
            f"{child.name} on port {port}",
            START_TIMEOUT,
        )

    # A server that has not subscribed yet would drop the chunks meant for its clients.
    def subscribed() -> bool:
        counts = dict(redis.pubsub_numsub(CHANNEL))
        return int(counts.get(CHANNEL.encode(), 0)) >= len(ports)

    procs.wait_ready(
        started, subscribed, f"{len(ports)} servers on channel {CHANNEL}", START_TIMEOUT
    )


def _start_workers(
    procs: Processes, shape: ModelShape, count: int, redis_url: str, redis: Redis
) -> None:
    env = environment(shape.env())
    names = {_WORKER_NAME.format(n) for n in range(1, count + 1)}
    started = [
        procs.start(
            "worker",
            name,
            [
                _PYTHON,
                "-m",
                "tests.bench.baselines.sio_worker",
                "--redis-url",
                redis_url,
                "--name",
                name,
            ],
            env,
        )
        for name in sorted(names)
    ]

    def waiting() -> bool:
        """Every worker is blocked in BRPOP (by its connection's client name)."""
        blocked = {c.get("name") for c in redis.client_list() if c.get("cmd") == "brpop"}
        return names <= blocked

    procs.wait_ready(started, waiting, f"{count} workers waiting for jobs", START_TIMEOUT)


def _start_nginx(procs: Processes, run_dir: Path, port: int, server_ports: list[int]) -> None:
    binary = find_nginx()
    if binary is None:
        raise BaselineError("nginx is not installed (apt-get install nginx)")
    sio_nginx.write(run_dir, port, server_ports)
    master = procs.start("nginx", "nginx", nginx_command(binary, run_dir), environment({}))
    procs.wait_ready(
        [master],
        lambda: http_ok(port, sio_nginx.HEALTH_PATH),
        f"nginx on port {port}",
        START_TIMEOUT,
    )
    # `worker_processes auto` is one per CPU; nginx has counted either the online CPUs
    # or (newer versions) those this process may run on. Take every worker, so that
    # the bench's CPU and RSS figures include them all.
    cpus = {os.sysconf("SC_NPROCESSORS_ONLN"), len(os.sched_getaffinity(0))}
    procs.wait_ready(
        [master],
        lambda: len(_children(master.pid)) >= min(cpus),
        "nginx's worker processes",
        START_TIMEOUT,
    )
    settle = time.monotonic() + 1.0
    while len(_children(master.pid)) < max(cpus) and time.monotonic() < settle:
        time.sleep(0.05)
    procs.adopt("nginx", _children(master.pid))


def _children(pid: int) -> list[int]:
    try:
        return [c.pid for c in psutil.Process(pid).children()]
    except psutil.NoSuchProcess:
        return []


def main() -> None:
    """Start one baseline and keep it up until Ctrl-C or SIGTERM."""
    parser = argparse.ArgumentParser(description="Run a bench baseline by hand.")
    parser.add_argument("kind", choices=("bare", "socketio"))
    parser.add_argument("--run-dir", type=Path, help="logs and state (default: a new temp dir)")
    parser.add_argument("--tokens-per-second", type=float, default=ModelShape.tokens_per_second)
    parser.add_argument("--min-tokens", type=int, default=ModelShape.min_tokens)
    parser.add_argument("--max-tokens", type=int, default=ModelShape.max_tokens)
    parser.add_argument("--batch-flush-ms", type=float, default=ModelShape.batch_flush_ms)
    parser.add_argument("--batch-max-tokens", type=int, default=ModelShape.batch_max_tokens)
    parser.add_argument("--servers", type=int, default=3, help="socketio only")
    parser.add_argument("--workers", type=int, default=3, help="socketio only")
    args = parser.parse_args()
    shape = ModelShape(
        tokens_per_second=args.tokens_per_second,
        min_tokens=args.min_tokens,
        max_tokens=args.max_tokens,
        batch_flush_ms=args.batch_flush_ms,
        batch_max_tokens=args.batch_max_tokens,
    )
    run_dir = args.run_dir or Path(tempfile.mkdtemp(prefix=f"bench-{args.kind}-"))
    # A SIGTERM while starting unwinds like Ctrl-C, through the stop of what started.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(128 + signal.SIGTERM))
    if args.kind == "bare":
        baseline = start_bare(shape, run_dir)
    else:
        baseline = start_socketio(shape, run_dir, args.servers, args.workers)
    with baseline:
        print(f"{baseline.target.name}: {baseline.target.url}")
        print(f"pids: {baseline.target.pids}")
        print(f"logs: {run_dir / 'logs'}; Ctrl-C stops it")
        # Blocked only now: children inherit the signal mask of the process starting them.
        signals = {signal.SIGINT, signal.SIGTERM}
        signal.pthread_sigmask(signal.SIG_BLOCK, signals)
        signal.sigwait(signals)
    print("stopped")


if __name__ == "__main__":
    main()
