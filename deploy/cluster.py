"""Start, stop and inspect a local cluster under supervisord.

The one implementation behind `make deploy/stop/status/logs` and the test fixture.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import time
import xmlrpc.client
from collections.abc import Callable, Collection, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from deploy.prereqs import ensure_binaries
from deploy.probes import ProbeResult, http_get, port_open, probe
from deploy.rollout import ReloadError, changed_programs, reload_nginx, restart_plan, union_spec
from deploy.spec import CHECKOUT, ClusterSpec, Process, write_private
from deploy.supervisor import (
    Binaries,
    Supervisor,
    build_processes,
    ha_configs,
    pid_alive,
    render_conf,
)
from deploy.tokens import SecretError, resolve_secret
from nginx.render import local_layout, nginx_command, write_local

__all__ = ["Cluster", "ClusterSpec", "DeployError", "StopReport"]

_POLL = 0.2
# A program that exits while starting is retried (BACKOFF) a few times, which
# rides out start-up races; FATAL means supervisor gave up on it.
_BAD_STATES = {"FATAL", "STOPPED"}
_STOPPED_STATES = {"STOPPED", "EXITED", "FATAL"}
LOG_MODE = 0o640
# How to run this Python from the checkout, for the hints `up` prints.
_PYTHON = ".venv/bin/python" if (CHECKOUT / ".venv" / "bin" / "python").exists() else "python3"


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
        self.secret_source: str | None = None
        """Where `up` found the JWT secret (a file, the environment ...)."""

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
        busy = self._busy_ports()
        if busy:
            raise DeployError(
                "ports already in use by another process: "
                + ", ".join(f"{name} :{port}" for name, port in busy.items())
                + " (stop it, or choose other ports: REDIS_PORT, PUBLIC_PORT, ...)"
            )
        if spec.dev_mode and not spec.public_is_loopback:
            raise DeployError(
                f"AUTH_DEV_MODE=true with PUBLIC_BIND={spec.public_bind}: anyone who can "
                "reach nginx could be any user with `dev-token`; set AUTH_DEV_MODE=false "
                "or keep PUBLIC_BIND on loopback"
            )
        try:
            secret, self.secret_source = resolve_secret(
                spec.run_dir, explicit=spec.extra_env.get("JWT_SECRET"), create=True
            )
        except SecretError as exc:
            raise DeployError(str(exc)) from exc
        bins = ensure_binaries(sentinel=spec.ha)
        self._procs = build_processes(spec, bins, secret)
        procs = self._procs
        self._render(procs)
        self._out(f"starting {len(procs)} processes under supervisord (run dir {spec.run_dir})")
        started = subprocess.run(self.supervisor.daemon(), capture_output=True, text=True)
        if started.returncode != 0:
            raise DeployError(f"supervisord did not start:\n{started.stdout}{started.stderr}")
        try:
            if spec.cluster:
                # The nodes' clients need a formed cluster: Redis first, then the rest.
                first = [p for p in procs if p.autostart]
                self._wait_healthy(first)
                form_redis_cluster(spec, self._out)
                for proc in procs:
                    if not proc.autostart:
                        self.supervisor.start_process(proc.name)
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
        (spec.run_dir / "logs" / "previous").mkdir(parents=True, exist_ok=True)
        for name in (*spec.redis_data_names, *spec.sentinel_names):
            spec.redis_dir(name).mkdir(parents=True, exist_ok=True)
        self._render_ha()
        # Keep the last run's logs apart, so that a failure tail shows only this run.
        for old in (spec.run_dir / "logs" / "previous").iterdir():
            old.unlink()
        for log in (spec.run_dir / "logs").glob("*.log*"):
            log.chmod(LOG_MODE)  # written by an older deploy, perhaps 0644
            log.replace(spec.run_dir / "logs" / "previous" / log.name)
        self._create_logs([*(p.name for p in procs), "supervisord", "nginx-access", "nginx-error"])
        self._render_nginx()
        # It holds every node's environment, JWT_SECRET included: owner only.
        write_private(self.supervisor.paths["conf"], render_conf(spec, procs))
        spec.save()

    def _render_ha(self) -> None:
        """REDIS_HA=sentinel: write each Redis and Sentinel config, unless the file is
        there for the same topology (its first line): Sentinel rewrote it after a
        failover, and it must go on from who is primary now."""
        for path, text in ha_configs(self.spec).items():
            marker = text.partition("\n")[0]
            try:
                current = path.read_text().partition("\n")[0]
            except OSError:
                current = ""
            if current == marker:
                self._out(f"keeping {path} (it may name another primary after a failover)")
            else:
                write_private(path, text, mode=0o640)

    def _create_logs(self, names: Iterable[str]) -> None:
        # New logs are created 0640 by supervisord's umask (LOG_UMASK) and nginx's
        # files through it; create them here too, so that no start order matters.
        for name in names:
            path = self.spec.run_dir / "logs" / f"{name}.log"
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, LOG_MODE))

    def _render_nginx(self, down: Collection[str] = ()) -> Path:
        """Write nginx.conf for the spec, with the nodes in `down` out of rotation."""
        spec = self.spec
        return write_local(
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
                public_bind=spec.public_bind,
                down=down,
            )
        )

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
        host = "localhost" if s.public_is_loopback else s.public_host
        if ":" in host:
            host = f"[{host}]"
        chat = f"ws://{host}:{s.public_port}/ws/chat?session_id=test"
        lines = [
            "cluster is up:",
            f"  chat (WebSocket)  {chat}&user_id=test&token=dev-token"
            if s.dev_mode
            else f"  chat (WebSocket)  {chat}  (token in the bearer subprotocol)",
            f"  health (sticky)   http://{host}:{s.public_port}/health",
            f"  durable streams   http://{host}:{s.public_port}/streams/ (answers at "
            "/streams/answers/MESSAGE_ID; docs/durable-streams.md)",
            f"  frontend          http://{host}:{s.frontend_port}/",
            f"  status page       http://{host}:{s.status_port}/",
            f"  nginx-status      http://{host}:{s.status_port}/nginx-status",
            f"  AI upstream       http://127.0.0.1:{s.internal_port}/ (loopback only)",
            f"  logs              {s.run_dir / 'logs'}",
        ]
        if s.public_is_loopback:
            lines.append(
                f"listening on {s.public_bind} only (PUBLIC_BIND=0.0.0.0 make deploy: every "
                "interface, and dev-token off)"
            )
        else:
            lines.append(f"listening on {s.public_bind}; dev-token is off")
        lines += [
            f"JWT secret: {self.secret_source or 'JWT_SECRET'}; "
            "a token for user USER, valid an hour (--ttl S to change):",
            f"  TOKEN=$({_PYTHON} -m deploy token USER)",
            f'  wscat -c "{chat}" -s bearer -s "$TOKEN"',
        ]
        return lines

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
            _wait_until(lambda: not self._busy_ports(), 5.0)
            report.busy_ports = self._busy_ports()
        if report.clean:
            if daemon is not None:
                self._out("stopped; no process left, every port free.")
        else:
            self._out(f"NOT clean: pids {report.leftover_pids} ports {report.busy_ports}")
        return report

    def _busy_ports(self) -> dict[str, int]:
        spec = self.spec
        return {n: p for n, p in spec.all_ports().items() if port_open(p, spec.port_host(n))}

    def _stop_in_phases(self, timeout: float) -> None:
        """nginx first (no new traffic), then all app nodes at once (each drains in
        parallel rather than one after another as supervisor's own shutdown would),
        then the stores they drain into."""
        spec = self.spec
        # The Sentinels before the data nodes, so stopping a primary starts no failover.
        phases = [
            ["nginx"],
            spec.gateway_names + spec.worker_names,
            spec.sentinel_names,
            [*spec.redis_data_names, "kafka"],
        ]
        for names in filter(None, phases):
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

    # --- planned changes: rolling restart and scaling ---------------------------------
    #
    # Neither may fail a client. nginx never sends a request to a node that is about to
    # stop or not ready yet: a node leaves nginx (rendered `down`, SIGHUP, wait until
    # only workers with the new config accept) before supervisor stops it, and joins
    # only once /ready answers 200. Stopping is graceful: a gateway closes its sockets
    # with 1012 (clients reconnect elsewhere and resume), a worker drains.

    def rolling_restart(self) -> None:
        """Restart every gateway, then every worker, one at a time (see restart_plan).

        Raises DeployError; a node that does not come back stays out of nginx."""
        self._require_running()
        with self._change_lock():
            start = time.monotonic()
            plan = restart_plan(self.spec)
            self._out(
                f"rolling restart of {self.spec.gateways} gateways, {self.spec.workers} workers"
            )
            for step in plan:
                if step.action == "scale":
                    self._scale(step.gateways, step.workers)
                else:
                    self._restart_node(step.name)
            self._out(f"rolling restart done in {time.monotonic() - start:.1f}s")

    def scale(self, gateways: int, workers: int) -> None:
        """Change the node counts live; the new counts are saved in the run dir.

        New nodes join nginx once ready; removed ones (the highest numbers) leave nginx,
        then stop gracefully. Raises DeployError."""
        self._require_running()
        with self._change_lock():
            self._scale(gateways, workers)

    def _require_running(self) -> None:
        if not self.supervisor.is_running():
            raise DeployError(
                f"cluster is not running (run dir {self.spec.run_dir}); `make deploy` first"
            )

    @contextmanager
    def _change_lock(self) -> Iterator[None]:
        """One planned change at a time per run dir."""
        with open(self.spec.run_dir / "change.lock", "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise DeployError(
                    "another rolling-restart or scale is running on this cluster"
                ) from None
            yield

    def _restart_node(self, name: str) -> None:
        start = time.monotonic()
        kind = name.rpartition("-")[0]
        peers = {"gateway": self.spec.gateway_names, "worker": self.spec.worker_names}[kind]
        if not any(self._ready(peer) for peer in peers if peer != name):
            raise DeployError(
                f"no {kind} but {name} is ready, so taking it out would fail clients; "
                "`make status` shows why"
            )
        old_pid = self.pids().get(name, 0)
        self._out(f"{name}: out of nginx")
        self._apply_nginx(down={name})
        self._out(f"{name}: stopping (pid {old_pid})")
        self._stop_nodes([name])
        self._start_node(name)
        self._wait_ready([name])
        self._apply_nginx()
        self._out(
            f"{name}: back in nginx, pid {old_pid} -> {self.pids().get(name, 0)} "
            f"({time.monotonic() - start:.1f}s)"
        )

    def _scale(self, gateways: int, workers: int) -> None:
        old = self.spec
        target = old.scaled(gateways, workers)
        union = union_spec(old, target)
        old_names = old.gateway_names + old.worker_names
        target_names = target.gateway_names + target.worker_names
        added = [n for n in union.gateway_names + union.worker_names if n not in old_names]
        removed = [n for n in old_names if n not in target_names]
        if not added and not removed:
            self._out(f"already {gateways} gateways and {workers} workers; nothing to do")
            return
        self._out(
            f"scaling from {old.gateways} gateways, {old.workers} workers to {gateways} "
            f"gateways, {workers} workers (adding: {', '.join(added) or 'none'}; "
            f"removing: {', '.join(removed) or 'none'})"
        )
        if added:
            busy = {n: union.node_port(n) for n in added if port_open(union.node_port(n))}
            if busy:
                raise DeployError(
                    "ports for the new nodes are in use by another process: "
                    + ", ".join(f"{name} :{port}" for name, port in busy.items())
                )
            self._create_logs(added)
            reread = self._write_programs(union)
            # From here on `status` and `stop` know the new nodes.
            self._set_spec(union)
            for name in added:
                try:
                    if name in reread:
                        self.supervisor.add_group(name)  # autostart: supervisor starts it
                    else:  # left from a scale that failed: supervisor has it already
                        self.supervisor.start_process(name)
                except xmlrpc.client.Fault as fault:
                    raise DeployError(f"supervisord cannot start {name}: {fault}") from fault
            self._wait_ready(added)
        # One reload takes the new nodes in and the leaving ones out.
        self._apply_nginx(down=removed)
        if removed:
            self._out(f"stopping {', '.join(removed)}")
            self._stop_nodes(removed)
            for name in removed:
                self.supervisor.remove_group(name)
            self._write_programs(target)
            self._set_spec(target)
            self._apply_nginx()
        self._out(f"now {target.gateways} gateways and {target.workers} workers")

    def _set_spec(self, spec: ClusterSpec) -> None:
        self.spec = spec
        self._procs = None
        spec.save()

    def _write_programs(self, spec: ClusterSpec) -> list[str]:
        """Write supervisord.conf for `spec` and have supervisord reread it; returns the
        programs new to it. The programs that stay must render exactly as they run."""
        try:
            secret, _ = resolve_secret(spec.run_dir, explicit=spec.extra_env.get("JWT_SECRET"))
        except SecretError as exc:
            raise DeployError(str(exc)) from exc
        conf_path = self.supervisor.paths["conf"]
        conf = render_conf(spec, build_processes(spec, ensure_binaries(spec.ha), secret))
        changed = changed_programs(conf_path.read_text(), conf)
        if changed:
            # Supervisor would keep them running as they are, so the new nodes would
            # differ from them: refuse rather than run a mixed cluster.
            raise DeployError(
                f"the settings of {', '.join(changed)} differ from the running ones "
                "(another JWT_SECRET, .env or Python than `make deploy` used?); "
                "run this with the same environment, or `make stop` and `make deploy`"
            )
        write_private(conf_path, conf)
        added, _, _ = self.supervisor.reload_config()
        return added

    def _apply_nginx(self, down: Collection[str] = ()) -> None:
        """Render nginx.conf (nodes in `down` out of rotation), check it with `nginx -t`,
        reload gracefully, and return once the new config is what accepts requests."""
        master = self.pids().get("nginx", 0)
        if not master:
            raise DeployError("nginx is not running; `make status` shows why")
        conf = self.spec.run_dir / "nginx" / "nginx.conf"
        previous = conf.read_text()
        self._render_nginx(down)
        test = subprocess.run(
            [*nginx_command(os.readlink(f"/proc/{master}/exe"), self.spec.run_dir)[:-2], "-t"],
            capture_output=True,
            text=True,
        )
        if test.returncode != 0:
            conf.write_text(previous)
            raise DeployError(f"the new nginx config is invalid (kept the old one):\n{test.stderr}")
        try:
            reload_nginx(master)
        except ReloadError as exc:
            raise DeployError(f"{exc}\n{self.log_tail('nginx')}") from exc

    def _start_node(self, name: str) -> None:
        try:
            self.supervisor.start_process(name)
        except xmlrpc.client.Fault as fault:
            self._fail(name, f"did not start: {fault.faultString}")

    def _stop_nodes(self, names: list[str]) -> None:
        """Stop gracefully through supervisor (SIGTERM; SIGKILL after stopwaitsecs)."""
        for name in names:
            self.supervisor.stop_process(name)
        timeout = max(self.process(n).stopwaitsecs for n in names) + 10.0

        def stopped() -> bool:
            infos = self.supervisor.processes()
            return all(infos[n]["statename"] in _STOPPED_STATES for n in names)

        if not _wait_until(stopped, timeout):
            raise DeployError(f"{', '.join(names)} did not stop within {timeout:.0f}s")

    def _wait_ready(self, names: list[str]) -> None:
        """Until supervisor has each node RUNNING (up for startsecs) and its /ready
        answers 200 (it serves requests, not just runs)."""
        deadline = time.monotonic() + self.spec.start_timeout
        pending = list(names)
        while pending:
            states = {n: i["statename"] for n, i in self.supervisor.processes().items()}
            for name in list(pending):
                if states.get(name) == "FATAL":  # supervisor gave up starting it
                    self._fail(name, "supervisor state FATAL; it stays out of nginx")
                if states.get(name) == "RUNNING" and self._ready(name):
                    pending.remove(name)
            if pending and time.monotonic() >= deadline:
                self._fail(
                    pending[0],
                    f"not ready after {self.spec.start_timeout:.0f}s; it stays out of nginx",
                    also=pending[1:],
                )
            if pending:
                time.sleep(_POLL)

    def _ready(self, name: str) -> bool:
        url = f"http://127.0.0.1:{self.spec.node_port(name)}/ready"
        return http_get(url, timeout=1.0)[0] == 200

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
                host = f"[{proc.host}]" if ":" in proc.host else proc.host
                url = f"http://{host}:{proc.port}{proc.probe_path}"
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


def _redis_cli(*args: str, timeout: float = 10.0) -> str:
    cli = shutil.which("redis-cli")
    if cli is None:
        raise DeployError("redis-cli is missing (Debian's redis-tools, with redis-server)")
    done = subprocess.run([cli, *args], capture_output=True, text=True, timeout=timeout)
    return done.stdout + done.stderr


def cluster_state(port: int) -> dict[str, str]:
    """`CLUSTER INFO` of the node on `port`, as a dict ({} when it does not answer)."""
    try:
        text = _redis_cli("-p", str(port), "cluster", "info", timeout=3.0)
    except subprocess.TimeoutExpired:
        return {}
    return dict(line.strip().split(":", 1) for line in text.splitlines() if ":" in line.strip())


def form_redis_cluster(
    spec: ClusterSpec, out: Callable[[str], None], timeout: float = 60.0
) -> None:
    """REDIS_MODE=cluster: create the cluster (three primaries, a replica each) unless
    its nodes already form one (a redeploy: each keeps its nodes.conf), then wait until
    every node says `cluster_state:ok`."""
    ports = spec.cluster_node_ports
    if cluster_state(ports[0]).get("cluster_known_nodes") == "1":
        out(f"creating a Redis Cluster of {len(ports)} nodes (3 primaries, 3 replicas)")
        created = _redis_cli(
            "--cluster",
            "create",
            *(f"127.0.0.1:{p}" for p in ports),
            "--cluster-replicas",
            "1",
            "--cluster-yes",
            timeout=timeout,
        )
        if "[OK] All 16384 slots covered" not in created:
            raise DeployError(f"redis-cli --cluster create failed:\n{created[-2000:]}")
    ok = _wait_until(
        lambda: all(cluster_state(p).get("cluster_state") == "ok" for p in ports), timeout
    )
    if not ok:
        states = {p: cluster_state(p).get("cluster_state") for p in ports}
        raise DeployError(f"the Redis Cluster did not become ok within {timeout:.0f}s: {states}")
    out("  ok  redis cluster: every node says cluster_state:ok")


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
