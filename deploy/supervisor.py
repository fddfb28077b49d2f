"""The supervisord side: the process list, supervisord.conf, and its XML-RPC socket."""

from __future__ import annotations

import os
import re
import resource
import shlex
import sys
import xmlrpc.client
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from supervisor.xmlrpc import SupervisorTransport

from deploy.spec import CHECKOUT, ClusterSpec, Process
from nginx.render import nginx_command

# Start order; supervisor stops in the reverse one. Stores first so that apps find them.
_PRIORITY = {"redis": 10, "kafka": 10, "worker": 20, "gateway": 30, "nginx": 40}
_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
LOG_UMASK = 0o027
"""supervisord's umask, inherited by every child: new files 0640, directories 0750."""


@dataclass(frozen=True)
class Binaries:
    """Absolute paths of the external programs a cluster runs."""

    nginx: str
    redis_server: str
    tansu: str


def paths(run_dir: Path) -> dict[str, Path]:
    return {
        "conf": run_dir / "supervisord.conf",
        "sock": run_dir / "supervisor.sock",
        "pid": run_dir / "supervisord.pid",
        "logs": run_dir / "logs",
    }


def build_processes(
    spec: ClusterSpec, bins: Binaries, jwt_secret: str | None = None
) -> list[Process]:
    """Every program of the cluster, in start order; gateways and workers get
    `jwt_secret` as JWT_SECRET (unless spec.extra_env sets one)."""
    run = spec.run_dir
    kafka_url = f"tcp://127.0.0.1:{spec.kafka_port}"
    procs = [
        Process(
            name="redis",
            command=[
                bins.redis_server,
                "--port",
                str(spec.redis_port),
                "--bind",
                "127.0.0.1",
                # Sessions, owners, history and in-flight answers must survive a
                # restart of Redis: append-only file, fsync once a second (a crash of
                # the machine loses at most the last second; a crash of Redis itself
                # loses nothing it acknowledged). No RDB snapshots on top.
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--save",
                "",
                "--dir",
                str(run / "redis"),
                "--daemonize",
                "no",
                "--logfile",
                "",
            ],
            port=spec.redis_port,
            probe="redis",
            priority=_PRIORITY["redis"],
        ),
        Process(
            name="kafka",
            command=[
                bins.tansu,
                "broker",
                "--listener-url",
                kafka_url,
                "--advertised-listener-url",
                kafka_url,
                "--storage-engine",
                "memory://tansu/",
            ],
            port=spec.kafka_port,
            probe="kafka",
            priority=_PRIORITY["kafka"],
        ),
    ]
    # Workers finish answers for SHUTDOWN_TIMEOUT + WORKER_DRAIN_TIMEOUT (10 + 10 s),
    # then hand the rest over, so they get longer than gateways before SIGKILL.
    for kind, module, stopwait, names in (
        ("worker", "services.ai_worker", 25, spec.worker_names),
        ("gateway", "services.ws_gateway", 15, spec.gateway_names),
    ):
        for name in names:
            port = spec.node_port(name)
            procs.append(
                Process(
                    name=name,
                    command=[
                        sys.executable,
                        "-m",
                        module,
                        "--host",
                        "127.0.0.1",
                        "--port",
                        str(port),
                    ],
                    port=port,
                    probe="http",
                    env=spec.app_env(name, jwt_secret),
                    priority=_PRIORITY[kind],
                    stopwaitsecs=stopwait,
                )
            )
    procs.append(
        Process(
            name="nginx",
            command=nginx_command(bins.nginx, run),
            port=spec.status_port,
            probe="http",
            probe_path="/nginx-status",
            priority=_PRIORITY["nginx"],
            logs=("nginx-error.log",),
            host=spec.public_host,
        )
    )
    return procs


def _escape(value: str) -> str:
    """Supervisor expands %(name)s in commands and environments."""
    return value.replace("%", "%%")


def _environment(env: dict[str, str]) -> str:
    parts = []
    for key, value in env.items():
        if not _ENV_KEY.fullmatch(key):
            raise ValueError(f"not an environment variable name: {key!r}")
        quoted = value.replace("\\", "\\\\").replace('"', '\\"')
        parts.append(f'{key}="{_escape(quoted)}"')
    return ",".join(parts)


def _min_fds() -> int:
    # supervisord raises the soft limit to minfds and refuses to start if the hard
    # limit is lower; children (10,000+ sockets per gateway) inherit it.
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return 65536 if hard == resource.RLIM_INFINITY else min(65536, hard)


def render_conf(spec: ClusterSpec, procs: list[Process]) -> str:
    p = paths(spec.run_dir)
    lines = [
        "; GENERATED by deploy/supervisor.py for one run; every path is in this directory.",
        "[unix_http_server]",
        f"file={_escape(str(p['sock']))}",
        "chmod=0700",
        "",
        "[supervisord]",
        f"logfile={_escape(str(p['logs'] / 'supervisord.log'))}",
        f"pidfile={_escape(str(p['pid']))}",
        f"childlogdir={_escape(str(p['logs']))}",
        # Files it and its children create (its log, every child's log, nginx's logs,
        # Redis's append-only file) are 0640: nobody but the owner's group reads them.
        f"umask={LOG_UMASK:03o}",
        f"directory={_escape(str(CHECKOUT))}",
        f"minfds={_min_fds()}",
        "",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
        "",
        "[supervisorctl]",
        f"serverurl=unix://{_escape(str(p['sock']))}",
    ]
    for proc in procs:
        lines += [
            "",
            f"[program:{proc.name}]",
            f"command={_escape(shlex.join(proc.command))}",
            f"directory={_escape(str(CHECKOUT))}",
            f"priority={proc.priority}",
            "autostart=true",
            "autorestart=true",
            "startsecs=1",
            # Three failed starts in a row -> FATAL, so a broken config fails
            # `up` in seconds; once RUNNING, autorestart retries forever.
            "startretries=2",
            "stopsignal=TERM",
            f"stopwaitsecs={proc.stopwaitsecs}",
            # uvicorn and nginx have children; stop and kill the whole group.
            "stopasgroup=true",
            "killasgroup=true",
            f"umask={LOG_UMASK:03o}",
            "redirect_stderr=true",
            f"stdout_logfile={_escape(str(p['logs'] / f'{proc.name}.log'))}",
            "stdout_logfile_maxbytes=50MB",
            "stdout_logfile_backups=2",
        ]
        if proc.env:
            lines.append(f"environment={_environment(dict(proc.env))}")
    return "\n".join(lines) + "\n"


class Supervisor:
    """A client of one run directory's supervisord."""

    def __init__(self, run_dir: Path) -> None:
        self.paths = paths(run_dir)

    def _call(self, method: str, *args: Any) -> Any:
        """One XML-RPC call over the unix socket, on a connection closed afterwards."""
        transport = SupervisorTransport(None, None, f"unix://{self.paths['sock']}")
        try:
            # The host part is ignored: the transport talks to the unix socket.
            proxy = xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)
            return getattr(proxy.supervisor, method)(*args)
        finally:
            transport.close()

    def daemon_pid(self) -> int | None:
        """supervisord's pid if it is running (a stale pid file does not count)."""
        try:
            pid = int(self.paths["pid"].read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return None
        return pid if b"supervisord" in cmdline else None

    def is_running(self) -> bool:
        if self.daemon_pid() is None:
            return False
        try:
            return cast(str, self._call("getState")["statename"]) == "RUNNING"
        except (OSError, xmlrpc.client.Error):
            return False

    def processes(self) -> dict[str, dict[str, Any]]:
        """name -> supervisor's process info (statename, pid, ...)."""
        infos = self._call("getAllProcessInfo")
        return {info["name"]: info for info in infos}

    def stop_process(self, name: str) -> None:
        """Send the stop signal and return at once (supervisor escalates to SIGKILL)."""
        try:
            self._call("stopProcess", name, False)
        except xmlrpc.client.Fault as fault:
            if "NOT_RUNNING" not in fault.faultString:
                raise

    def start_process(self, name: str) -> None:
        """Start a stopped program; returns once supervisor considers it RUNNING."""
        try:
            self._call("startProcess", name, True)
        except xmlrpc.client.Fault as fault:
            if "ALREADY_STARTED" not in fault.faultString:
                raise

    def reload_config(self) -> tuple[list[str], list[str], list[str]]:
        """Reread supervisord.conf (`supervisorctl reread`): the program groups (added,
        changed, removed) compared with the running ones. Nothing starts or stops."""
        [[added, changed, removed]] = self._call("reloadConfig")
        return list(added), list(changed), list(removed)

    def add_group(self, name: str) -> None:
        """Start managing a program reread from the config (autostart starts it)."""
        try:
            self._call("addProcessGroup", name)
        except xmlrpc.client.Fault as fault:
            if "ALREADY_ADDED" not in fault.faultString:
                raise

    def remove_group(self, name: str) -> None:
        """Forget a stopped program (`supervisorctl update` after it left the config)."""
        try:
            self._call("removeProcessGroup", name)
        except xmlrpc.client.Fault as fault:
            if "BAD_NAME" not in fault.faultString:
                raise

    def shutdown(self) -> None:
        self._call("shutdown")

    def ctl(self) -> list[str]:
        """The supervisorctl command line for this run directory."""
        return [sys.executable, "-m", "supervisor.supervisorctl", "-c", str(self.paths["conf"])]

    def daemon(self) -> list[str]:
        return [sys.executable, "-m", "supervisor.supervisord", "-c", str(self.paths["conf"])]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie has exited; it only waits for its parent to reap it.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"
