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

from deploy.spec import CHECKOUT, SENTINEL_MASTER, ClusterSpec, Process
from nginx.render import nginx_command

# Start order; supervisor stops in the reverse one. Stores first so that apps find them.
_PRIORITY = {"redis": 10, "kafka": 10, "sentinel": 15, "worker": 20, "gateway": 30, "nginx": 40}
# REDIS_HA=sentinel: how fast the Sentinels act. A primary silent for a second is down
# for one of them; two (the quorum) agreeing start a failover, which is abandoned and
# retried by another Sentinel if it is not done in FAILOVER_TIMEOUT_MS.
SENTINEL_QUORUM = 2
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 3000
_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
LOG_UMASK = 0o027
"""supervisord's umask, inherited by every child: new files 0640, directories 0750."""


@dataclass(frozen=True)
class Binaries:
    """Absolute paths of the external programs a cluster runs."""

    nginx: str
    redis_server: str
    tansu: str
    redis_sentinel: str = ""
    """Debian's redis-sentinel (REDIS_HA=sentinel); empty: `redis-server --sentinel`."""


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
    single_redis = Process(
        name="redis",
        command=[
            bins.redis_server,
            "--port",
            str(spec.redis_port),
            "--bind",
            "127.0.0.1",
            # Sessions, owners, history and in-flight answers must survive a
            # restart of Redis: append-only file, fsync once a second (a crash
            # loses at most the last second or two: while an fsync is slow, Redis
            # may answer before the write is in the file; the workers write lost
            # chunks again). No RDB snapshots on top.
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
    )
    if spec.ha or spec.cluster:
        redis_procs = _ha_processes(spec, bins)
    else:
        redis_procs = [single_redis]
    procs = [
        *redis_procs,
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
                    # In cluster mode `up` starts the nodes once the cluster has formed.
                    autostart=not spec.cluster,
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
            autostart=not spec.cluster,
        )
    )
    return procs


def _ha_processes(spec: ClusterSpec, bins: Binaries) -> list[Process]:
    """REDIS_HA=sentinel: `redis` (the first primary), `redis-2` (its replica) and
    sentinel-1..3; REDIS_MODE=cluster: the six nodes `redis`..`redis-6`. Each starts
    from its config file in its own dir under the run dir (see ha_configs; Sentinel
    rewrites them on a failover, a cluster node keeps its nodes.conf beside it)."""
    procs = []
    for name in spec.redis_data_names:
        procs.append(
            Process(
                name=name,
                command=[bins.redis_server, str(ha_config_path(spec, name))],
                port=spec.all_ports()[name],
                probe="redis",
                priority=_PRIORITY["redis"],
            )
        )
    for name in spec.sentinel_names:
        conf = str(ha_config_path(spec, name))
        procs.append(
            Process(
                name=name,
                command=[bins.redis_sentinel, conf]
                if bins.redis_sentinel
                else [bins.redis_server, conf, "--sentinel"],
                port=spec.all_ports()[name],
                probe="sentinel",
                priority=_PRIORITY["sentinel"],
            )
        )
    return procs


def ha_config_path(spec: ClusterSpec, name: str) -> Path:
    """The config file of an HA Redis program, in its own dir (`redis` keeps run/redis,
    the dir of the single Redis, so switching to HA keeps the data)."""
    conf = "sentinel.conf" if name.startswith("sentinel-") else "redis.conf"
    return spec.redis_dir(name) / conf


def ha_configs(spec: ClusterSpec) -> dict[Path, str]:
    """path -> text of every HA config file. Each starts with a marker line naming the
    topology; Redis and Sentinel rewrite the files on a failover (CONFIG REWRITE keeps
    comments), and `up` keeps a file whose marker matches, so that a redeploy after a
    failover starts from who is primary now, not from who was first."""
    if spec.cluster:
        return _cluster_configs(spec)
    if not spec.ha:
        return {}
    ports = spec.all_ports()
    marker = (
        f"# chat-cluster REDIS_HA=sentinel: redis={spec.redis_port} "
        f"redis-2={spec.redis_replica_port} sentinels={','.join(map(str, spec.sentinel_ports))}"
    )
    files = {}
    for name in spec.redis_data_names:
        lines = [
            marker,
            f"# {name}: GENERATED by deploy/supervisor.py; Sentinel may rewrite the end.",
            f"port {ports[name]}",
            "bind 127.0.0.1",
            # As the single Redis: append-only file fsynced every second, no RDB.
            "appendonly yes",
            "appendfsync everysec",
            'save ""',
            f"dir {spec.run_dir / name}",
            "daemonize no",
            'logfile ""',
        ]
        if name != "redis":
            lines.append(f"replicaof 127.0.0.1 {spec.redis_port}")
        files[ha_config_path(spec, name)] = "\n".join(lines) + "\n"
    for name in spec.sentinel_names:
        lines = [
            marker,
            f"# {name}: GENERATED by deploy/supervisor.py; Sentinel rewrites it.",
            f"port {ports[name]}",
            "bind 127.0.0.1",
            "daemonize no",
            'logfile ""',
            f"dir {spec.run_dir / name}",
            f"sentinel monitor {SENTINEL_MASTER} 127.0.0.1 {spec.redis_port} {SENTINEL_QUORUM}",
            f"sentinel down-after-milliseconds {SENTINEL_MASTER} {DOWN_AFTER_MS}",
            f"sentinel failover-timeout {SENTINEL_MASTER} {FAILOVER_TIMEOUT_MS}",
            f"sentinel parallel-syncs {SENTINEL_MASTER} 1",
        ]
        files[ha_config_path(spec, name)] = "\n".join(lines) + "\n"
    return files


#: A cluster node that does not answer for this long is failed over to its replica.
CLUSTER_NODE_TIMEOUT_MS = 2_000


def _cluster_configs(spec: ClusterSpec) -> dict[Path, str]:
    """REDIS_MODE=cluster: each node's config (cluster on, its bus port, its nodes.conf
    in its own dir, the same persistence as the single Redis)."""
    marker = "# chat-cluster REDIS_MODE=cluster: " + ",".join(
        f"{p}/{b}" for p, b in zip(spec.cluster_node_ports, spec.cluster_bus_ports, strict=True)
    )
    files = {}
    for name, port, bus in zip(
        spec.redis_data_names, spec.cluster_node_ports, spec.cluster_bus_ports, strict=True
    ):
        lines = [
            marker,
            f"# {name}: GENERATED by deploy/supervisor.py.",
            f"port {port}",
            "bind 127.0.0.1",
            "cluster-enabled yes",
            f"cluster-port {bus}",
            "cluster-config-file nodes.conf",
            f"cluster-node-timeout {CLUSTER_NODE_TIMEOUT_MS}",
            # A replica takes over whatever its last contact with the primary was.
            "cluster-replica-validity-factor 0",
            "appendonly yes",
            "appendfsync everysec",
            'save ""',
            f"dir {spec.redis_dir(name)}",
            "daemonize no",
            'logfile ""',
        ]
        files[ha_config_path(spec, name)] = "\n".join(lines) + "\n"
    return files


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
            f"autostart={'true' if proc.autostart else 'false'}",
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
