"""Render nginx.conf.template for N gateways and M workers.

Two modes: `local` (the supervisor deployment: loopback addresses, every path
under one run directory) and `compose` (service names on port 8000, logs to
stdout/stderr). `python -m nginx.render compose` regenerates compose/nginx.conf;
`python -m nginx.render check` renders a local config into a temp dir and runs
`nginx -t` on it.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import re
import resource
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TEMPLATE = Path(__file__).with_name("nginx.conf.template")
CHECKOUT = Path(__file__).resolve().parents[1]
COMPOSE_CONF = CHECKOUT / "compose" / "nginx.conf"
FRONTEND_DIST = CHECKOUT / "frontend" / "dist"
"""The browser app as `npm run build` writes it (deploy.frontend builds it)."""
STICKY_METHODS = {"ip_hash": "ip_hash;", "consistent": "hash $remote_addr consistent;"}
_TEMP_DIRS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")
DEFAULT_PUBLIC_BIND = "127.0.0.1"
"""Where `make deploy` listens for clients unless PUBLIC_BIND says otherwise."""


@dataclass(frozen=True)
class Node:
    """One upstream server: its name (gateway-1) and address (host:port)."""

    name: str
    address: str
    down: bool = False
    """Marked `down`: nginx sends it no new request (a planned restart or removal), and
    `ip_hash` keeps every other client on the server it had."""


@dataclass(frozen=True)
class NginxLayout:
    """Everything that differs between renders. `run_dir=None` means compose mode."""

    gateways: Sequence[Node]
    workers: Sequence[Node]
    public_listen: str
    internal_listen: str
    status_listen: str
    frontend_listen: str
    frontend_root: str
    """The built app (frontend/dist)."""
    frontend_config_root: str
    """Where the app's runtime `config.json` is, if the deploy wrote one."""
    sticky: str = "ip_hash"
    run_dir: Path | None = None
    user: str | None = None
    """`user` directive; only meaningful when the master runs as root."""
    rlimit_nofile: int = 65535
    mode: str = field(default="local")
    conn_per_ip: int = 256
    """Open connections one client address may hold on the public listener."""
    handshakes_per_ip: str = "20r/s"
    """New requests (WebSocket handshakes, REST calls) one client address may make..."""
    handshake_burst: int = 100
    """...with this many at once above the rate (a reconnect after a restart)."""
    streams_per_ip: str = "1000r/s"
    """Durable Streams requests (/streams/) per client address: plain HTTP requests,
    many per second from one reader or writer, so not the handshake limit."""
    streams_burst: int = 2000
    streams_max_body: int = 4 * 1024 * 1024
    """DS_MAX_BODY_BYTES: nginx passes bodies up to it; the gateway answers 413 past it."""
    status_root: str = str(CHECKOUT / "status")
    """The status dashboard's static files (status/ in the checkout)."""


def local_layout(
    run_dir: Path,
    *,
    gateway_ports: Sequence[int],
    worker_ports: Sequence[int],
    public_port: int,
    internal_port: int,
    status_port: int,
    frontend_port: int,
    sticky: str = "ip_hash",
    user: str | None = None,
    public_bind: str = DEFAULT_PUBLIC_BIND,
    down: Collection[str] = (),
) -> NginxLayout:
    """The supervisor deployment: state under `run_dir`, nodes on 127.0.0.1.

    The public, status and frontend listeners bind `public_bind` (loopback unless the
    operator says otherwise: PUBLIC_BIND); the AI upstream is on loopback only. Nodes
    named in `down` are rendered with the `down` parameter (taken out of rotation).
    """

    def nodes(kind: str, ports: Sequence[int]) -> list[Node]:
        named = ((f"{kind}-{i}", p) for i, p in enumerate(ports, 1))
        return [Node(name, f"127.0.0.1:{p}", name in down) for name, p in named]

    gateways, workers = nodes("gateway", gateway_ports), nodes("worker", worker_ports)
    unknown = set(down) - {n.name for n in [*gateways, *workers]}
    if unknown:
        raise ValueError(f"down names nodes that are not in the layout: {sorted(unknown)}")
    return NginxLayout(
        gateways=gateways,
        workers=workers,
        public_listen=listen_address(public_bind, public_port),
        internal_listen=f"127.0.0.1:{internal_port}",
        status_listen=listen_address(public_bind, status_port),
        frontend_listen=listen_address(public_bind, frontend_port),
        frontend_root=str(FRONTEND_DIST),
        frontend_config_root=str(run_dir / "frontend"),
        sticky=sticky,
        run_dir=run_dir,
        user=user,
        rlimit_nofile=_nofile_limit(),
        mode="local",
    )


def listen_address(bind: str, port: int) -> str:
    """`listen` argument for an IP address (v4 or v6) and a port; ValueError otherwise."""
    try:
        address = ipaddress.ip_address(bind.strip().strip("[]"))
    except ValueError:
        msg = f"PUBLIC_BIND must be an IP address (such as 127.0.0.1), not {bind!r}"
        raise ValueError(msg) from None
    if address.version == 6:
        return f"[{address}]:{port}"
    return f"{address}:{port}"


def _nofile_limit() -> int:
    # Asking for more than the hard limit fails with an alert in the error log
    # (containers often cap it); the image in compose mode allows 65535.
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return 65535 if hard == resource.RLIM_INFINITY else min(65535, hard)


def compose_layout(gateways: int = 3, workers: int = 3, sticky: str = "ip_hash") -> NginxLayout:
    """docker-compose.yml: replicas reachable by service name on port 8000."""
    return NginxLayout(
        gateways=[Node(f"gateway-{i}", f"gateway-{i}:8000") for i in range(1, gateways + 1)],
        workers=[Node(f"worker-{i}", f"worker-{i}:8000") for i in range(1, workers + 1)],
        public_listen="8080",
        # Inside the compose network only; docker-compose.yml does not publish it.
        internal_listen="8081",
        status_listen="8090",
        frontend_listen="3000",
        frontend_root="/usr/share/nginx/html/frontend",
        frontend_config_root="/etc/nginx/frontend",
        sticky=sticky,
        mode="compose",
        status_root="/usr/share/nginx/html/status",
    )


def _quote(path: Path | str) -> str:
    return '"' + str(path).replace("\\", "\\\\").replace('"', '\\"') + '"'


#: A gateway is never marked failed: with all of them marked (each SIGTERMed or
#: restarted once within fail_timeout) nginx answers every handshake 502 "no live
#: upstreams" although some are up again. A refused connect costs nothing and the
#: handshake moves on to the next gateway (proxy_connect_timeout bounds a dead host).
GATEWAY_FAILURES = "max_fails=0"
#: A worker that refuses is skipped for a moment, so least_conn does not keep
#: choosing the dead one (it has no connections); the window is short so that all
#: of them marked at once never lasts.
WORKER_FAILURES = "max_fails=1 fail_timeout=2s"


def _servers(nodes: Sequence[Node], failures: str) -> str:
    if nodes and all(n.down for n in nodes):
        # nginx would answer every request 502 ("no live upstreams").
        raise ValueError(f"every server of an upstream is down: {[n.name for n in nodes]}")
    return "\n".join(
        f"        server {n.address} {failures}{' down' if n.down else ''};  # {n.name}"
        for n in nodes
    )


def _cluster_json(layout: NginxLayout) -> str:
    """`/cluster.json` of the status page (status/): the nodes it scrapes and how
    sockets are routed. Its script knows the cluster only from this.

    It ends up inside a single-quoted nginx string, so it must contain no `'`,
    `$` (nginx variables) or backslash.
    """

    def nodes(kind: str, nodes: Sequence[Node]) -> list[dict[str, object]]:
        return [{"name": n.name, "kind": kind, "down": n.down} for n in nodes]

    cluster = {
        "mode": layout.mode,
        "sticky": layout.sticky,
        "gateways": nodes("gateway", layout.gateways),
        "workers": nodes("worker", layout.workers),
    }
    text = json.dumps(cluster, separators=(",", ":"))
    assert not set(text) & {"'", "$", "\\"}, "cluster.json would break the nginx string"
    return text


#: Who may read a node's /metrics and the dependency probe through the status listener.
LOOPBACK_ONLY = "allow 127.0.0.0/8;\n            allow ::1;\n            deny all;\n            "


def _node_locations(layout: NginxLayout) -> str:
    """Each node's /health (open, as before) and /metrics (loopback only); each gateway's
    Redis and Kafka probe, /status/deps, as /node/<gateway>/deps (loopback only)."""
    blocks: list[str] = []
    for n in [*layout.gateways, *layout.workers]:
        paths = [("health", "/health", ""), ("metrics", "/metrics", LOOPBACK_ONLY)]
        if n in layout.gateways:
            paths.append(("deps", "/status/deps", LOOPBACK_ONLY))
        blocks.extend(
            f"        location = /node/{n.name}/{name} {{\n"
            f"            {access}proxy_pass http://{n.address}{target};\n"
            "        }"
            for name, target, access in paths
        )
    return "\n".join(blocks)


def _values(layout: NginxLayout) -> dict[str, str]:
    if layout.sticky not in STICKY_METHODS:
        raise ValueError(f"sticky must be one of {sorted(STICKY_METHODS)}, not {layout.sticky!r}")
    run = layout.run_dir
    if run is None:
        # The nginx image sends /dev/stdout and /dev/stderr to `docker logs`.
        error_path, pid_line, access_log, temp_paths = "/dev/stderr", "", "/dev/stdout", ""
    else:
        error_path = _quote(run / "logs" / "nginx-error.log")
        pid_line = f"pid {_quote(run / 'nginx' / 'nginx.pid')};"
        access_log = _quote(run / "logs" / "nginx-access.log")
        temp_paths = "".join(
            f"    {name}_temp_path {_quote(run / 'nginx' / 'tmp' / name)};\n" for name in _TEMP_DIRS
        )
    return {
        "mode": layout.mode,
        "gateway_count": str(len(layout.gateways)),
        "worker_count": str(len(layout.workers)),
        "rlimit_nofile": str(layout.rlimit_nofile),
        "user_line": f"user {layout.user};" if layout.user else "",
        "error_log_line": f"error_log {error_path} warn;",
        "public_error_log": f"error_log {error_path} crit;",
        "pid_line": pid_line,
        "access_log": access_log,
        "temp_paths": temp_paths,
        "sticky": STICKY_METHODS[layout.sticky],
        "gateway_servers": _servers(layout.gateways, GATEWAY_FAILURES),
        "worker_servers": _servers(layout.workers, WORKER_FAILURES),
        "public_listen": layout.public_listen,
        "internal_listen": layout.internal_listen,
        "status_listen": layout.status_listen,
        "frontend_listen": layout.frontend_listen,
        "frontend_root": _quote(layout.frontend_root),
        "frontend_config_root": _quote(layout.frontend_config_root),
        "status_root": _quote(layout.status_root),
        "cluster_json": _cluster_json(layout),
        "node_locations": _node_locations(layout),
        "conn_per_ip": str(layout.conn_per_ip),
        "handshakes_per_ip": layout.handshakes_per_ip,
        "handshake_burst": str(layout.handshake_burst),
        "streams_per_ip": layout.streams_per_ip,
        "streams_burst": str(layout.streams_burst),
        "streams_max_body": str(layout.streams_max_body + 65536),
    }


def render(layout: NginxLayout) -> str:
    """The config text. Raises KeyError for a placeholder the template names but we lack."""
    values = _values(layout)
    text = _PLACEHOLDER.sub(lambda m: values[m.group(1)], TEMPLATE.read_text())
    # Directives rendered empty (no user, no pid in compose) leave blank lines.
    return re.sub(r"\n{3,}", "\n\n", text)


def write_local(layout: NginxLayout) -> Path:
    """Write the config under run_dir/nginx with the directories it names; return its path."""
    assert layout.run_dir is not None, "write_local needs a local layout"
    nginx_dir = layout.run_dir / "nginx"
    for name in _TEMP_DIRS:
        (nginx_dir / "tmp" / name).mkdir(parents=True, exist_ok=True)
    (layout.run_dir / "logs").mkdir(parents=True, exist_ok=True)
    conf = nginx_dir / "nginx.conf"
    conf.write_text(render(layout))
    return conf


def nginx_command(nginx_bin: str, run_dir: Path) -> list[str]:
    """Run in the foreground (supervisor owns the process) with every path in run_dir."""
    return [
        nginx_bin,
        "-p",
        str(run_dir / "nginx") + "/",
        "-c",
        str(run_dir / "nginx" / "nginx.conf"),
        "-e",
        str(run_dir / "logs" / "nginx-error.log"),
        "-g",
        "daemon off;",
    ]


def find_nginx() -> str | None:
    """nginx lives in /usr/sbin, which a non-root PATH often lacks."""
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin:/sbin")


def example_layout(
    run_dir: Path, gateways: int = 3, workers: int = 3, *, base: int = 9000, **options: Any
) -> NginxLayout:
    """A local layout on fixed example ports: gateways from base+1, workers from
    base+101, public base+80, internal base+81, status base+90, frontend base+300.
    `options`: any other argument of `local_layout` (sticky, down, public_bind...)."""
    return local_layout(
        run_dir,
        gateway_ports=range(base + 1, base + 1 + gateways),
        worker_ports=range(base + 101, base + 101 + workers),
        public_port=base + 80,
        internal_port=base + 81,
        status_port=base + 90,
        frontend_port=base + 300,
        **options,
    )


def check(gateways: int = 3, workers: int = 3, sticky: str = "ip_hash") -> int:
    """`nginx -t` on a local render in a temp dir; returns nginx's exit code."""
    nginx_bin = find_nginx()
    if nginx_bin is None:
        print("nginx is not installed (apt-get install nginx)", file=sys.stderr)  # noqa: T201
        return 1
    with tempfile.TemporaryDirectory(prefix="nginx-check-") as tmp:
        run_dir = Path(tmp)
        write_local(example_layout(run_dir, gateways, workers, base=18000, sticky=sticky))
        cmd = nginx_command(nginx_bin, run_dir)[:-2] + ["-t", "-q"]
        return subprocess.run(cmd, check=False).returncode


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nginx.render")
    parser.add_argument("mode", choices=["compose", "check"])
    parser.add_argument("--gateways", type=int, default=3)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--sticky", choices=sorted(STICKY_METHODS), default="ip_hash")
    args = parser.parse_args(argv)
    if args.mode == "check":
        return check(args.gateways, args.workers, args.sticky)
    COMPOSE_CONF.write_text(render(compose_layout(args.gateways, args.workers, args.sticky)))
    print(f"wrote {COMPOSE_CONF}")  # noqa: T201
    return 0


if __name__ == "__main__":
    sys.exit(main())
