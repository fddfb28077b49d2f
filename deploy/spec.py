"""What a local cluster consists of: ports, node counts, and the process list."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import socket
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from nginx.render import DEFAULT_PUBLIC_BIND, listen_address

CHECKOUT = Path(__file__).resolve().parents[1]
DEFAULT_RUN_DIR = CHECKOUT / "run"

ProbeKind = Literal["redis", "sentinel", "kafka", "http"]
RedisHA = Literal["none", "sentinel", "cluster"]
SENTINEL_MASTER = "chat"
"""The name the deploy's Sentinels monitor the primary under (REDIS_SENTINEL_MASTER)."""
DEFAULT_REPLICA_PORT = 6380
DEFAULT_SENTINEL_PORTS = (26379, 26380, 26381)
#: REDIS_MODE=cluster: the five nodes after `redis` (redis_port), and every node's
#: cluster bus port (Redis's default: the port + 10000).
DEFAULT_CLUSTER_PORTS = (7001, 7002, 7003, 7004, 7005)
CLUSTER_NODES = 6
_BOOLS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False}
_BOOLS |= {"no": False, "off": False}
# The names in all_ports() of the listeners that bind PUBLIC_BIND.
_PUBLIC_LISTENERS = ("nginx public", "nginx status", "nginx frontend")

# Environment variables `python -m deploy` reads, and the ClusterSpec field each sets.
PORT_ENV = {
    "REDIS_PORT": "redis_port",
    "KAFKA_PORT": "kafka_port",
    "PUBLIC_PORT": "public_port",
    "STATUS_PORT": "status_port",
    "FRONTEND_PORT": "frontend_port",
    "INTERNAL_PORT": "internal_port",
    "REDIS_REPLICA_PORT": "redis_replica_port",
}


DEFAULT_GATEWAY_PORT = 8001
DEFAULT_WORKER_PORT = 8101
"""gateway-1 and worker-1 of `make deploy`; node N is on the default port + N - 1."""


def free_ports(count: int) -> list[int]:
    """Distinct loopback ports the kernel just handed out (all held open until all are
    chosen, so none repeats)."""
    with ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
        return ports


@dataclass(frozen=True)
class Process:
    """One supervised program and how to tell that it is healthy."""

    name: str
    command: list[str]
    port: int
    probe: ProbeKind
    probe_path: str = "/health"
    env: Mapping[str, str] = field(default_factory=dict)
    priority: int = 50
    stopwaitsecs: int = 15
    logs: tuple[str, ...] = ()
    """Log files under run_dir/logs worth showing when it fails (its own log comes first)."""
    host: str = "127.0.0.1"
    """Where the probe connects (nginx's status listener binds PUBLIC_BIND)."""
    autostart: bool = True
    """False: started by `up` once what it needs is ready (the nodes, after a Redis
    Cluster has formed)."""


@dataclass
class ClusterSpec:
    """A local cluster. Gateway/worker ports default to 8001.. and 8101.."""

    run_dir: Path = DEFAULT_RUN_DIR
    gateways: int = 3
    workers: int = 3
    redis_port: int = 6379
    kafka_port: int = 9092
    public_port: int = 8080
    status_port: int = 8090
    frontend_port: int = 3000
    internal_port: int = 8081
    """nginx's listener for the ai_worker upstream, bound to 127.0.0.1 only."""
    gateway_ports: list[int] = field(default_factory=list)
    worker_ports: list[int] = field(default_factory=list)
    sticky: Literal["ip_hash", "consistent"] = "ip_hash"
    extra_env: dict[str, str] = field(default_factory=dict)
    """Passed to every gateway and worker; overrides the defaults below (not NODE_ID)."""
    key_prefix: str = ""
    start_timeout: float = 90.0
    """Seconds `up` waits for every process to become healthy."""
    public_bind: str = DEFAULT_PUBLIC_BIND
    """Address of nginx's public, status and frontend listeners (PUBLIC_BIND)."""
    auth_dev_mode: bool | None = None
    """AUTH_DEV_MODE of the nodes; None: on exactly when public_bind is loopback."""
    redis_ha: RedisHA = "none"
    """REDIS_HA. "sentinel": a primary (`redis`, redis_port), a replica (`redis-2`,
    redis_replica_port) and three Sentinels (sentinel_ports); the nodes find the primary
    through the Sentinels (docs/redis-ha.md). "none": one Redis."""
    redis_replica_port: int = DEFAULT_REPLICA_PORT
    sentinel_ports: list[int] = field(default_factory=list)
    """Ports of the three Sentinels (REDIS_HA=sentinel only); default 26379..26381."""
    cluster_ports: list[int] = field(default_factory=list)
    """REDIS_MODE=cluster (redis_ha "cluster"): the ports of redis-2..redis-6 (`redis`
    is redis_port); three primaries and three replicas. Default 7001..7005."""
    cluster_bus_ports: list[int] = field(default_factory=list)
    """The cluster bus port of each of the six (default: its port + 10000)."""

    def __post_init__(self) -> None:
        self.run_dir = Path(self.run_dir).resolve()
        if not self.gateway_ports:
            self.gateway_ports = _default_ports(DEFAULT_GATEWAY_PORT, self.gateways)
        if not self.worker_ports:
            self.worker_ports = _default_ports(DEFAULT_WORKER_PORT, self.workers)
        if (len(self.gateway_ports), len(self.worker_ports)) != (self.gateways, self.workers):
            raise ValueError("gateway_ports/worker_ports must match gateways/workers")
        if self.gateways < 1 or self.workers < 1:
            raise ValueError("a cluster needs at least one gateway and one worker")
        if self.sticky not in ("ip_hash", "consistent"):
            raise ValueError(f"STICKY must be ip_hash or consistent, not {self.sticky!r}")
        listen_address(self.public_bind, self.public_port)  # ValueError names PUBLIC_BIND
        if self.redis_ha not in ("none", "sentinel", "cluster"):
            raise ValueError(f"REDIS_HA must be none or sentinel, not {self.redis_ha!r}")
        if self.redis_ha == "cluster":
            if not self.cluster_ports:
                self.cluster_ports = list(DEFAULT_CLUSTER_PORTS)
            if not self.cluster_bus_ports:
                self.cluster_bus_ports = [p + 10000 for p in self.cluster_node_ports]
            if len(self.cluster_ports) != CLUSTER_NODES - 1:
                raise ValueError(f"cluster_ports must list {CLUSTER_NODES - 1} ports")
            if len(self.cluster_bus_ports) != CLUSTER_NODES:
                raise ValueError(f"cluster_bus_ports must list {CLUSTER_NODES} ports")
        if self.redis_ha == "sentinel" and not self.sentinel_ports:
            self.sentinel_ports = list(DEFAULT_SENTINEL_PORTS)
        if self.sentinel_ports and len(self.sentinel_ports) != len(DEFAULT_SENTINEL_PORTS):
            raise ValueError("sentinel_ports must list three ports")

    @classmethod
    def on_free_ports(
        cls, run_dir: Path, gateways: int, workers: int, **fields: Any
    ) -> ClusterSpec:
        """A cluster on ports the kernel hands out now (tests and benches, so they never
        collide with a running `make deploy`)."""
        ha = fields.get("redis_ha", "none") == "sentinel"
        cluster = fields.get("redis_ha", "none") == "cluster"
        extra = 4 if ha else (2 * CLUSTER_NODES - 1 if cluster else 0)
        # One call, so that no port repeats: the replica and the Sentinels (or the
        # cluster's other nodes and bus ports) come last.
        ports = free_ports(6 + gateways + workers + extra)
        if ha:
            fields.setdefault("redis_replica_port", ports[-4])
            fields.setdefault("sentinel_ports", ports[-3:])
        if cluster:
            fields.setdefault("cluster_ports", ports[-extra:-CLUSTER_NODES])
            fields.setdefault("cluster_bus_ports", ports[-CLUSTER_NODES:])
        return cls(
            run_dir=run_dir,
            gateways=gateways,
            workers=workers,
            redis_port=ports[0],
            kafka_port=ports[1],
            public_port=ports[2],
            status_port=ports[3],
            frontend_port=ports[4],
            internal_port=ports[5],
            gateway_ports=ports[6 : 6 + gateways],
            worker_ports=ports[6 + gateways : 6 + gateways + workers],
            **fields,
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> ClusterSpec:
        """GATEWAYS, WORKERS, STICKY, RUN_DIR, PUBLIC_BIND, AUTH_DEV_MODE, ALLOWED_ORIGINS
        (for browsers on other hosts once PUBLIC_BIND opens the ports) and the *_PORT
        overrides in PORT_ENV."""
        dev_mode = (environ.get("AUTH_DEV_MODE") or "").strip().lower()
        if dev_mode and dev_mode not in _BOOLS:
            raise ValueError(f"AUTH_DEV_MODE must be true or false, not {dev_mode!r}")
        spec = cls(
            run_dir=Path(environ.get("RUN_DIR") or DEFAULT_RUN_DIR),
            gateways=int(environ.get("GATEWAYS") or 3),
            workers=int(environ.get("WORKERS") or 3),
            sticky=environ.get("STICKY") or "ip_hash",  # type: ignore[arg-type]
            public_bind=environ.get("PUBLIC_BIND") or DEFAULT_PUBLIC_BIND,
            auth_dev_mode=_BOOLS[dev_mode] if dev_mode else None,
            redis_ha=_redis_ha(environ),
        )
        if environ.get("ALLOWED_ORIGINS"):
            spec.extra_env["ALLOWED_ORIGINS"] = environ["ALLOWED_ORIGINS"]
        for var, attr in PORT_ENV.items():
            if environ.get(var):
                setattr(spec, attr, int(environ[var]))
        return spec

    def scaled(self, gateways: int, workers: int) -> ClusterSpec:
        """This cluster with other node counts (`make scale`).

        Nodes are numbered 1..N, so removing nodes removes the highest numbers and the
        nodes that stay keep their ports. New nodes continue the default ports (8001..,
        8101..) when the cluster uses them, else get ports the kernel hands out now
        (clusters on free ports: tests, benches). ValueError when a port would repeat.
        """
        ports = {
            "gateway": _grown(self.gateway_ports, gateways, DEFAULT_GATEWAY_PORT),
            "worker": _grown(self.worker_ports, workers, DEFAULT_WORKER_PORT),
        }
        wanted = {"gateway": gateways, "worker": workers}
        fresh = free_ports(sum(wanted[k] - len(p) for k, p in ports.items() if len(p) < wanted[k]))
        for kind, kind_ports in ports.items():
            while len(kind_ports) < wanted[kind]:
                kind_ports.append(fresh.pop())
        spec = dataclasses.replace(
            self,
            gateways=gateways,
            workers=workers,
            gateway_ports=ports["gateway"],
            worker_ports=ports["worker"],
        )
        every = list(spec.all_ports().values())
        if len(every) != len(set(every)):
            repeated = sorted({p for p in every if every.count(p) > 1})
            raise ValueError(
                f"{gateways} gateways and {workers} workers would reuse ports {repeated}"
            )
        return spec

    # The spec of a running cluster is saved in its run dir, so that status and
    # stop see the cluster that is up rather than what today's environment says.
    def save(self) -> None:
        data = dataclasses.asdict(self)
        data["run_dir"] = str(self.run_dir)
        # extra_env may hold secrets (tests pass JWT_SECRET): owner only.
        write_private(self.run_dir / "cluster.json", json.dumps(data, indent=2) + "\n")

    @classmethod
    def load(cls, run_dir: Path) -> ClusterSpec | None:
        """The spec saved by the last `up` in run_dir, or None."""
        try:
            data = json.loads((run_dir / "cluster.json").read_text())
        except (OSError, ValueError):
            return None
        return cls(**data)

    # --- derived names and URLs ---------------------------------------------------

    @property
    def gateway_names(self) -> list[str]:
        return [f"gateway-{i}" for i in range(1, self.gateways + 1)]

    @property
    def worker_names(self) -> list[str]:
        return [f"worker-{i}" for i in range(1, self.workers + 1)]

    @property
    def dev_mode(self) -> bool:
        """Whether the nodes accept `dev-token` (extra_env's AUTH_DEV_MODE wins)."""
        if "AUTH_DEV_MODE" in self.extra_env:
            return _BOOLS.get(self.extra_env["AUTH_DEV_MODE"].strip().lower(), False)
        if self.auth_dev_mode is None:
            return self.public_is_loopback
        return self.auth_dev_mode

    @property
    def public_is_loopback(self) -> bool:
        return ipaddress.ip_address(self.public_bind.strip("[]")).is_loopback

    @property
    def public_host(self) -> str:
        """Where this machine reaches the public listeners (for probes and port checks)."""
        address = ipaddress.ip_address(self.public_bind.strip("[]"))
        if address.is_unspecified:
            return "127.0.0.1" if address.version == 4 else "::1"
        return str(address)

    def port_host(self, name: str) -> str:
        """The address `all_ports()[name]` listens on, as seen from this machine."""
        return self.public_host if name in _PUBLIC_LISTENERS else "127.0.0.1"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    @property
    def kafka_bootstrap(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"

    @property
    def public_url(self) -> str:
        return f"http://127.0.0.1:{self.public_port}"

    @property
    def internal_url(self) -> str:
        return f"http://127.0.0.1:{self.internal_port}"

    @property
    def status_url(self) -> str:
        return f"http://127.0.0.1:{self.status_port}"

    @property
    def frontend_url(self) -> str:
        return f"http://127.0.0.1:{self.frontend_port}"

    def node_port(self, name: str) -> int:
        """The direct (not through nginx) port of gateway-N or worker-N."""
        kind, _, index = name.rpartition("-")
        ports = {"gateway": self.gateway_ports, "worker": self.worker_ports}[kind]
        return ports[int(index) - 1]

    def all_ports(self) -> dict[str, int]:
        """Every listening port, named for error messages."""
        ports = {
            "redis": self.redis_port,
            "kafka": self.kafka_port,
            "nginx public": self.public_port,
            "nginx status": self.status_port,
            "nginx frontend": self.frontend_port,
            "nginx internal": self.internal_port,
        }
        if self.ha:
            ports["redis-2"] = self.redis_replica_port
            ports.update(zip(self.sentinel_names, self.sentinel_ports, strict=True))
        if self.cluster:
            ports.update(zip(self.redis_data_names[1:], self.cluster_ports, strict=True))
        ports.update({n: self.node_port(n) for n in self.gateway_names + self.worker_names})
        return ports

    @property
    def ha(self) -> bool:
        """Redis runs as primary + replica + three Sentinels (REDIS_HA=sentinel)."""
        return self.redis_ha == "sentinel"

    @property
    def cluster(self) -> bool:
        """Redis runs as a Redis Cluster of six nodes (REDIS_MODE=cluster)."""
        return self.redis_ha == "cluster"

    def redis_dir(self, name: str) -> Path:
        """The directory of a Redis or Sentinel program's files. A cluster's nodes keep
        theirs apart: a node that starts with the single Redis's data cannot join."""
        return self.run_dir / "redis-cluster" / name if self.cluster else self.run_dir / name

    @property
    def redis_cluster_nodes(self) -> str:
        """REDIS_CLUSTER_NODES of the nodes: every cluster node ("" outside cluster mode)."""
        return ",".join(f"127.0.0.1:{port}" for port in self.cluster_node_ports)

    @property
    def cluster_node_ports(self) -> list[int]:
        """The data ports of the six cluster nodes, `redis` first."""
        return [self.redis_port, *self.cluster_ports]

    @property
    def sentinel_names(self) -> list[str]:
        return [f"sentinel-{i}" for i in range(1, len(self.sentinel_ports) + 1)] if self.ha else []

    @property
    def redis_data_names(self) -> list[str]:
        """The Redis programs that hold data: `redis`, and in HA mode `redis-2`, in
        cluster mode `redis-2`..`redis-6`."""
        if self.cluster:
            return ["redis", *(f"redis-{i}" for i in range(2, CLUSTER_NODES + 1))]
        return ["redis", "redis-2"] if self.ha else ["redis"]

    @property
    def redis_sentinels(self) -> str:
        """REDIS_SENTINELS of the nodes ("" without HA)."""
        return ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports) if self.ha else ""

    def app_env(self, node_id: str, jwt_secret: str | None = None) -> dict[str, str]:
        """Environment of one gateway or worker (JWT_SECRET only when given)."""
        frontend = self.frontend_port
        env = {
            "REDIS_URL": self.redis_url,
            "KAFKA_BOOTSTRAP_SERVERS": self.kafka_bootstrap,
            "WORKER_URL": self.internal_url,
            # The local deploy is for development: `dev-token` is accepted, as long
            # as nginx listens on loopback only (see dev_mode).
            "AUTH_DEV_MODE": "true" if self.dev_mode else "false",
            "ALLOWED_ORIGINS": f"http://localhost:{frontend},http://127.0.0.1:{frontend}",
            "REDIS_KEY_PREFIX": self.key_prefix,
            "LOG_LEVEL": "INFO",
            # Log lines reach the log file as they are written.
            "PYTHONUNBUFFERED": "1",
        }
        if self.ha:
            env["REDIS_SENTINELS"] = self.redis_sentinels
            env["REDIS_SENTINEL_MASTER"] = SENTINEL_MASTER
        if self.cluster:
            env["REDIS_MODE"] = "cluster"
            env["REDIS_CLUSTER_NODES"] = self.redis_cluster_nodes
        if jwt_secret is not None:
            env["JWT_SECRET"] = jwt_secret
        env.update(self.extra_env)
        env["NODE_ID"] = node_id
        return env


def _redis_ha(environ: Mapping[str, str]) -> RedisHA:
    """REDIS_HA (none, sentinel) and REDIS_MODE (standalone, cluster) as one choice."""
    ha = (environ.get("REDIS_HA") or "none").strip().lower()
    mode = (environ.get("REDIS_MODE") or "standalone").strip().lower()
    if mode not in ("standalone", "cluster"):
        raise ValueError(f"REDIS_MODE must be standalone or cluster, not {mode!r}")
    if ha not in ("none", "sentinel"):
        raise ValueError(f"REDIS_HA must be none or sentinel, not {ha!r}")
    if mode == "cluster":
        if ha != "none":
            raise ValueError(
                "REDIS_MODE=cluster with REDIS_HA: a Redis Cluster fails over by itself"
            )
        return "cluster"
    return "sentinel" if ha == "sentinel" else "none"


def _default_ports(first: int, count: int) -> list[int]:
    return list(range(first, first + count))


def _grown(ports: list[int], count: int, default_first: int) -> list[int]:
    """The first `count` of `ports`, continued on the default scheme when `ports` follow
    it; a shorter list when the caller must fill in free ports."""
    if count <= len(ports):
        return ports[:count]
    if ports == _default_ports(default_first, len(ports)):
        return _default_ports(default_first, count)
    return list(ports)


def write_private(path: Path, text: str, mode: int = 0o600) -> None:
    """Write `text` to a file that is `mode` from its first byte (not chmod afterwards)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as out:
        os.fchmod(out.fileno(), mode)  # an existing file keeps its mode on O_CREAT
        out.write(text)
