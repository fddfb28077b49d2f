"""Start, stop and inspect a local cluster under supervisord.

The one implementation behind `make deploy/stop/status/logs` and the test fixture.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from deploy.prereqs import ensure_binaries
from deploy.probes import ProbeResult, http_get, port_open, probe
from deploy.spec import ClusterSpec, Process
from deploy.supervisor import Binaries, Supervisor, build_processes, pid_alive, render_conf
from nginx.render import local_layout, write_local

__all__ = ["Cluster", "ClusterSpec", "DeployError", "StopReport"]

_POLL = 0.2
# A program that exits while starting is retried (BACKOFF) a few times, which
# rides out start-up races; FATAL means supervisor gave up on it.
_BAD_STATES = {"FATAL", "STOPPED"}


class DeployError(RuntimeError):
    """The cluster did not come up; the message says which process and why."""


@dataclass
class StopReport:
    leftover_pids: list[int] = field(default_factory=list)
    busy_ports: dict[str, int] = field(default_factory=dict)

    @property
    def clean(self) -> bool:
        return not self.leftover_pids and not self.busy_ports


def _wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL)


def _nginx_user() -> str | None:
    """As root, nginx workers run as the checkout's owner so they can read frontend/
    even when the checkout is under a private home such as /root."""
    if os.geteuid() != 0:
        return None
    import grp
    import pwd

    st = Path(__file__).resolve().parents[1].stat()
    return f"{pwd.getpwuid(st.st_uid).pw_name} {grp.getgrgid(st.st_gid).gr_name}"


class Cluster:
    """One run directory's cluster. `out` receives progress lines (print by default)."""

    def __init__(self, spec: ClusterSpec, out: Callable[[str], None] | None = None) -> None:
        self.spec = spec
        self.supervisor = Supervisor(spec.run_dir)
        self._out = out or (lambda line: print(line, flush=True))
        self._procs: list[Process] | None = None

    # --- introspection -----------------------------------------------------------

    def processes(self, bins: Binaries | None = None) -> list[Process]:
        if self._procs is None:
            # Only the command lines need real binaries; names and ports do not.
            self._procs = build_processes(self.spec, bins or Binaries("nginx", "redis", "tansu"))
        return self._procs

    def process(self, name: str) -> Process:
        for proc in self.processes():
            if proc.name == name:
                return proc
        raise KeyError(name)

    def pids(self) -> dict[str, int]:
        """name -> pid of every running program (0 when it is not running)."""
        return {name: int(info["pid"]) for name, info in self.supervisor.processes().items()}

    def log_path(self, name: str) -> Path:
        return self.spec.run_dir / "logs" / f"{name}.log"

    def log_tail(self, name: str, lines: int = 30) -> str:
        files = [self.log_path(name)] + [
            self.spec.run_dir / "logs" / extra for extra in self.process(name).logs
        ]
        chunks = []
        for path in files:
            try:
                text = path.read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                text = ["(no log yet)"]
            chunks.append(f"--- {path} ---\n" + "\n".join(text))
        return "\n".join(chunks)

    def probe(self, name: str) -> ProbeResult:
        return probe(self.process(name))

    # --- up ------------------------------------------------------------------------

    def up(self) -> bool:
        """Start everything and wait until healthy. False if it was already running.

        Raises DeployError (after stopping what it started) when a process does not
        become healthy before spec.start_timeout, and PrereqError for missing programs.
        """
        spec = self.spec
        if self.supervisor.is_running():
            running = ClusterSpec.load(spec.run_dir) or spec
            self._out(
                f"cluster already running ({running.gateways} gateways, {running.workers} "
                f"workers, run dir {spec.run_dir}); starting nothing."
            )
            self._out("`make status` shows it, `make stop` stops it.")
            return False
        busy = {name: port for name, port in spec.all_ports().items() if port_open(port)}
        if busy:
            raise DeployError(
                "ports already in use by another process: "
                + ", ".join(f"{name} :{port}" for name, port in busy.items())
                + " (stop it, or choose other ports: REDIS_PORT, PUBLIC_PORT, ...)"
            )
        bins = ensure_binaries()
        self._procs = None
        procs = self.processes(bins)
        self._render(procs)
        self._out(f"starting {len(procs)} processes under supervisord (run dir {spec.run_dir})")
        started = subprocess.run(self.supervisor.daemon(), capture_output=True, text=True)
        if started.returncode != 0:
            raise DeployError(f"supervisord did not start:\n{started.stdout}{started.stderr}")
        try:
            self._wait_healthy(procs)
        except DeployError:
            self._out("stopping what was started; logs stay in " + str(spec.run_dir / "logs"))
            self.stop()
            raise
        for line in self.urls():
            self._out(line)
        return True

    def _render(self, procs: list[Process]) -> None:
        spec = self.spec
        for sub in ("logs/previous", "redis"):
            (spec.run_dir / sub).mkdir(parents=True, exist_ok=True)
        # Keep the last run's logs apart, so that a failure tail shows only this run.
        for old in (spec.run_dir / "logs" / "previous").iterdir():
            old.unlink()
        for log in (spec.run_dir / "logs").glob("*.log*"):
            log.replace(spec.run_dir / "logs" / "previous" / log.name)
        write_local(
            local_layout(
                spec.run_dir,
                gateway_ports=spec.gateway_ports,
                worker_ports=spec.worker_ports,
                public_port=spec.public_port,
                internal_port=spec.internal_port,
                status_port=spec.status_port,
                frontend_port=spec.frontend_port,
                sticky=spec.sticky,
                user=_nginx_user(),
            )
        )
        self.supervisor.paths["conf"].write_text(render_conf(spec, procs))
        spec.save()

    def _wait_healthy(self, procs: list[Process]) -> None:
        if not _wait_until(self.supervisor.is_running, 10.0):
            raise DeployError("supervisord did not answer on its socket:\n" + self._daemon_log())
        start = time.monotonic()
        deadline = start + self.spec.start_timeout
        pending = {p.name: p for p in procs}
        last: dict[str, str] = {}
        next_report = start + 5.0
        self._out(f"waiting up to {self.spec.start_timeout:.0f}s for: {', '.join(pending)}")
        while pending:
            states = {n: i["statename"] for n, i in self.supervisor.processes().items()}
            broken = [n for n in pending if states.get(n) in _BAD_STATES]
            if broken:
                self._fail(broken[0], f"supervisor state {states[broken[0]]}", also=broken[1:])
            for name, proc in list(pending.items()):
                result = probe(proc)
                last[name] = result.detail
                if result.ok:
                    del pending[name]
                    self._out(f"  ok  {name:<11} :{proc.port}  ({time.monotonic() - start:.1f}s)")
            now = time.monotonic()
            if pending and now >= deadline:
                name = next(iter(pending))
                self._fail(
                    name,
                    f"not healthy after {self.spec.start_timeout:.0f}s "
                    f"(state {states.get(name)}, last probe: {last.get(name)})",
                    also=list(pending)[1:],
                )
            if pending and now >= next_report:
                waiting = ", ".join(f"{n} ({states.get(n)})" for n in pending)
                self._out(f"  ... still waiting for {waiting} ({now - start:.0f}s)")
                next_report = now + 5.0
            if pending:
                time.sleep(_POLL)

    def _fail(self, name: str, why: str, also: Iterable[str] = ()) -> None:
        others = list(also)
        self._out(f"FAILED: {name}: {why}")
        if others:
            self._out(f"also not healthy: {', '.join(others)}")
        self._out(self.log_tail(name))
        raise DeployError(f"{name}: {why}; log: {self.log_path(name)}")

    def _daemon_log(self) -> str:
        path = self.spec.run_dir / "logs" / "supervisord.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else "(no log)"

    def urls(self) -> list[str]:
        s = self.spec
        return [
            "cluster is up:",
            f"  chat (WebSocket)  ws://localhost:{s.public_port}/ws/chat"
            "?session_id=test&user_id=test&token=dev-token",
            f"  health (sticky)   http://localhost:{s.public_port}/health",
            f"  frontend          http://localhost:{s.frontend_port}/",
            f"  status page       http://localhost:{s.status_port}/",
            f"  nginx-status      http://localhost:{s.status_port}/nginx-status",
            f"  AI upstream       http://127.0.0.1:{s.internal_port}/ (loopback only)",
            f"  logs              {s.run_dir / 'logs'}",
        ]

    # --- stop ------------------------------------------------------------------------

    def stop(self, timeout: float = 60.0) -> StopReport:
        """Stop every process and supervisord; kill leftovers; report what survived."""
        sup = self.supervisor
        daemon = sup.daemon_pid()
        pids: list[int] = []
        if daemon is None:
            self._out("cluster is not running.")
        else:
            if sup.is_running():
                pids = [pid for pid in self.pids().values() if pid]
                self._stop_in_phases(timeout)
                self._out("shutting down supervisord")
                sup.shutdown()
            else:
                os.kill(daemon, signal.SIGTERM)
            if not _wait_until(lambda: not pid_alive(daemon), timeout):
                self._out(f"supervisord (pid {daemon}) did not exit; killing it")
                os.kill(daemon, signal.SIGKILL)
            pids.append(daemon)
        report = StopReport()
        for pid in pids:
            if pid_alive(pid):
                self._out(f"killing leftover pid {pid}")
                _kill_group(pid)
        if pids:
            _wait_until(lambda: not any(pid_alive(p) for p in pids), 5.0)
        report.leftover_pids = [pid for pid in pids if pid_alive(pid)]
        if daemon is not None:
            # Listening sockets close with their processes; give the kernel a moment.
            _wait_until(lambda: not any(port_open(p) for p in self.spec.all_ports().values()), 5.0)
            report.busy_ports = {n: p for n, p in self.spec.all_ports().items() if port_open(p)}
        if report.clean:
            if daemon is not None:
                self._out("stopped; no process left, every port free.")
        else:
            self._out(f"NOT clean: pids {report.leftover_pids} ports {report.busy_ports}")
        return report

    def _stop_in_phases(self, timeout: float) -> None:
        """nginx first (no new traffic), then all app nodes at once (each drains in
        parallel rather than one after another as supervisor's own shutdown would),
        then the stores they drain into."""
        spec = self.spec
        phases = [["nginx"], spec.gateway_names + spec.worker_names, ["redis", "kafka"]]
        for names in phases:
            self._out(f"stopping {', '.join(names)}")
            for name in names:
                self.supervisor.stop_process(name)

            def stopped(names: list[str] = names) -> bool:
                infos = self.supervisor.processes()
                return all(
                    infos[n]["statename"] not in ("RUNNING", "STOPPING", "STARTING", "BACKOFF")
                    for n in names
                )

            _wait_until(stopped, timeout)

    # --- status and logs ------------------------------------------------------------

    def status(self) -> bool:
        """Print supervisorctl status and each node's health; True if all healthy."""
        if not self.supervisor.is_running():
            self._out(f"cluster is not running (run dir {self.spec.run_dir}).")
            return False
        ctl = subprocess.run([*self.supervisor.ctl(), "status"], capture_output=True, text=True)
        self._out(ctl.stdout.rstrip())
        healthy = True
        self._out("health:")
        for proc in self.processes():
            if proc.probe == "http":
                url = f"http://127.0.0.1:{proc.port}{proc.probe_path}"
                status, body = http_get(url)
                ok, detail = status == 200, f"{status} {' '.join(body.split())[:160]}"
            else:
                result = probe(proc)
                ok, detail = result.ok, result.detail
            healthy &= ok
            self._out(f"  {'ok  ' if ok else 'FAIL'} {proc.name:<11} :{proc.port:<5} {detail}")
        return healthy

    def follow_logs(self) -> None:
        """Replace this process with `tail -F` of every log (returns only on error)."""
        logs = sorted((self.spec.run_dir / "logs").glob("*.log"))
        if not logs:
            raise DeployError(f"no logs in {self.spec.run_dir / 'logs'}; deploy first")
        os.execvp("tail", ["tail", "-n", "20", "-F", *map(str, logs)])


def _kill_group(pid: int) -> None:
    """SIGKILL the process group a supervised program leads, then the pid itself."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
