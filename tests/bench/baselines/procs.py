"""The processes a baseline starts: logs, readiness with deadlines, and a stop that
leaves nothing behind.

Every process is started directly (no shell) in a session of its own, so a Ctrl-C
at the terminal reaches only the orchestrator, which then stops them in order.
Processes that are not our children (nginx's workers) are tracked with psutil,
which notices a reused pid, so `stop` never signals a stranger.
"""

from __future__ import annotations

import http.client
import os
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

CHECKOUT = Path(__file__).resolve().parents[3]
"""Where `python -m tests.bench.baselines...` resolves."""
_POLL = 0.05
_TAIL_LINES = 30


class BaselineError(RuntimeError):
    """A baseline process did not come up; the message ends with its log's tail."""


@dataclass(frozen=True)
class Child:
    """One process we started."""

    kind: str
    """"server", "worker", "nginx", "redis": Target.pids' keys."""
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid


def log_tail(path: Path, lines: int = _TAIL_LINES) -> str:
    """The last lines of a log file ("" if there is none)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def http_ok(port: int, path: str, host: str = "127.0.0.1") -> bool:
    """True if `GET path` answers 200. http.client, not urllib: no proxy settings apply."""
    conn = http.client.HTTPConnection(host, port, timeout=1.0)
    try:
        conn.request("GET", path)
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


class Processes:
    """Everything one baseline started, with each process's log under run_dir/logs."""

    def __init__(self, run_dir: Path) -> None:
        self.logs = run_dir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.children: list[Child] = []
        self._adopted: dict[str, list[psutil.Process]] = {}

    def start(
        self,
        kind: str,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str],
        cwd: Path = CHECKOUT,
    ) -> Child:
        """Start `argv` with `env` in `cwd` (the checkout), stdout and stderr to
        logs/<name>.log."""
        log = self.logs / f"{name}.log"
        with log.open("ab") as out:
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=dict(env),
                start_new_session=True,
            )
        child = Child(kind, name, popen, log)
        self.children.append(child)
        return child

    def adopt(self, kind: str, pids: Sequence[int]) -> None:
        """Track processes we did not start (nginx's workers): in `pids()`, and stopped."""
        for pid in pids:
            try:
                self._adopted.setdefault(kind, []).append(psutil.Process(pid))
            except psutil.NoSuchProcess:
                continue

    def pids(self) -> dict[str, list[int]]:
        """Kind -> pids, in start order, adopted processes after their kind's children."""
        found: dict[str, list[int]] = {}
        for child in self.children:
            found.setdefault(child.kind, []).append(child.pid)
        for kind, procs in self._adopted.items():
            found.setdefault(kind, []).extend(p.pid for p in procs)
        return found

    def wait_ready(
        self, watch: Sequence[Child], ready: Callable[[], bool], what: str, timeout: float
    ) -> None:
        """Poll `ready` until it is true. BaselineError if one of `watch` exits first or
        at the deadline, with the tail of their logs."""
        deadline = time.monotonic() + timeout
        while True:
            for child in watch:
                if child.popen.poll() is not None:
                    raise BaselineError(
                        f"{child.name} (pid {child.pid}) exited with {child.popen.returncode} "
                        f"before {what}; {child.log}:\n{log_tail(child.log)}"
                    )
            if ready():
                return
            if time.monotonic() >= deadline:
                tails = "\n".join(f"--- {c.log}:\n{log_tail(c.log, 10)}" for c in watch)
                raise BaselineError(f"timed out after {timeout:.0f}s waiting for {what}\n{tails}")
            time.sleep(_POLL)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM each kind in turn, last started first (so servers do not log a lost
        Redis), SIGKILL what is left at the deadline, and reap it. Safe to call again."""
        deadline = time.monotonic() + timeout
        kinds = list(dict.fromkeys(child.kind for child in self.children))
        for kind in reversed(kinds):
            group = [c for c in self.children if c.kind == kind and c.popen.poll() is None]
            for child in group:
                child.popen.terminate()
            for child in group:
                try:
                    child.popen.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    child.popen.kill()
                    child.popen.wait()
        # Adopted processes normally ended with their parent (nginx's master waits for
        # its workers); they are left only if it was killed.
        adopted = [p for procs in self._adopted.values() for p in procs]
        for proc in adopted:
            try:
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    proc.kill()
            except psutil.NoSuchProcess:
                continue
        psutil.wait_procs(adopted, timeout=max(1.0, deadline - time.monotonic()))


def running(pid: int) -> bool:
    """True if `pid` is a live process (a zombie holds nothing and counts as gone)."""
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def environment(extra: Mapping[str, str]) -> dict[str, str]:
    """This process's environment with `extra` on top."""
    return {**os.environ, **extra}
