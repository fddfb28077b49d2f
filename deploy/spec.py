"""What a local cluster consists of: ports, node counts, and the process list."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

CHECKOUT = Path(__file__).resolve().parents[1]
DEFAULT_RUN_DIR = CHECKOUT / "run"

ProbeKind = Literal["redis", "kafka", "http"]

# Environment variables `python -m deploy` reads, and the ClusterSpec field each sets.
PORT_ENV = {
    "REDIS_PORT": "redis_port",
    "KAFKA_PORT": "kafka_port",
    "PUBLIC_PORT": "public_port",
    "STATUS_PORT": "status_port",
    "FRONTEND_PORT": "frontend_port",
    "INTERNAL_PORT": "internal_port",
}


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

    def __post_init__(self) -> None:
        self.run_dir = Path(self.run_dir).resolve()
        if not self.gateway_ports:
            self.gateway_ports = list(range(8001, 8001 + self.gateways))
        if not self.worker_ports:
            self.worker_ports = list(range(8101, 8101 + self.workers))
        if (len(self.gateway_ports), len(self.worker_ports)) != (self.gateways, self.workers):
            raise ValueError("gateway_ports/worker_ports must match gateways/workers")
        if self.gateways < 1 or self.workers < 1:
            raise ValueError("a cluster needs at least one gateway and one worker")
        if self.sticky not in ("ip_hash", "consistent"):
            raise ValueError(f"STICKY must be ip_hash or consistent, not {self.sticky!r}")

    @classmethod
    def on_free_ports(
        cls, run_dir: Path, gateways: int, workers: int, **fields: Any
    ) -> ClusterSpec:
        """A cluster on ports the kernel hands out now (tests and benches, so they never
        collide with a running `make deploy`)."""
        ports = free_ports(6 + gateways + workers)
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
            worker_ports=ports[6 + gateways :],
            **fields,
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> ClusterSpec:
        """GATEWAYS, WORKERS, STICKY, RUN_DIR and the *_PORT overrides in PORT_ENV."""
        spec = cls(
            run_dir=Path(environ.get("RUN_DIR") or DEFAULT_RUN_DIR),
            gateways=int(environ.get("GATEWAYS") or 3),
            workers=int(environ.get("WORKERS") or 3),
            sticky=environ.get("STICKY") or "ip_hash",  # type: ignore[arg-type]
        )
        for var, attr in PORT_ENV.items():
            if environ.get(var):
                setattr(spec, attr, int(environ[var]))
        return spec

    # The spec of a running cluster is saved in its run dir, so that status and
    # stop see the cluster that is up rather than what today's environment says.
    def save(self) -> None:
        data = dataclasses.asdict(self)
        data["run_dir"] = str(self.run_dir)
        (self.run_dir / "cluster.json").write_text(json.dumps(data, indent=2) + "\n")

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
        ports.update({n: self.node_port(n) for n in self.gateway_names + self.worker_names})
        return ports

    def app_env(self, node_id: str) -> dict[str, str]:
        """Environment of one gateway or worker."""
        frontend = self.frontend_port
        env = {
            "REDIS_URL": self.redis_url,
            "KAFKA_BOOTSTRAP_SERVERS": self.kafka_bootstrap,
            "WORKER_URL": self.internal_url,
            # The local deploy is for development: `dev-token` is accepted.
            "AUTH_DEV_MODE": "true",
            "ALLOWED_ORIGINS": f"http://localhost:{frontend},http://127.0.0.1:{frontend}",
            "REDIS_KEY_PREFIX": self.key_prefix,
            "LOG_LEVEL": "INFO",
            # Log lines reach the log file as they are written.
            "PYTHONUNBUFFERED": "1",
        }
        env.update(self.extra_env)
        env["NODE_ID"] = node_id
        return env
