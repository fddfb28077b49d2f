"""nginx in front of the socket.io servers: what the python-socketio docs recommend.

`ip_hash` keeps each client address on one server (Engine.IO's polling fallback
needs that; the WebSocket transport then stays put), the upgrade headers pass the
WebSocket through, and buffering is off so each event leaves as soon as it arrives.
nginx runs in the foreground with every path under the run directory
(nginx.render.nginx_command's layout).
"""

from __future__ import annotations

import resource
from collections.abc import Sequence
from pathlib import Path

HEALTH_PATH = "/nginx-health"
"""Answered by nginx itself: readiness of the proxy without touching a server."""
_TEMP_DIRS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


def _quote(path: Path) -> str:
    return '"' + str(path).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _nofile_limit() -> int:
    # More than the hard limit fails with an alert (containers often cap it).
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return 65535 if hard == resource.RLIM_INFINITY else min(65535, hard)


def render(run_dir: Path, port: int, server_ports: Sequence[int]) -> str:
    """The config: listen on 127.0.0.1:port, proxy /socket.io/ to the servers."""
    nginx_dir = run_dir / "nginx"
    temp_paths = "".join(
        f"    {name}_temp_path {_quote(nginx_dir / 'tmp' / name)};\n" for name in _TEMP_DIRS
    )
    servers = "".join(f"        server 127.0.0.1:{p};\n" for p in server_ports)
    return f"""\
worker_processes auto;
# Each proxied WebSocket holds two descriptors (client + upstream).
worker_rlimit_nofile {_nofile_limit()};
error_log {_quote(run_dir / "logs" / "nginx-error.log")} warn;
pid {_quote(nginx_dir / "nginx.pid")};

events {{
    worker_connections 20000;
    multi_accept on;
}}

http {{
    access_log off;
{temp_paths}    tcp_nodelay on;
    keepalive_timeout 75s;

    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ''      close;
    }}

    upstream socketio {{
        ip_hash;
{servers}    }}

    server {{
        listen 127.0.0.1:{port} backlog=4096;

        location = {HEALTH_PATH} {{
            default_type text/plain;
            return 200 "ok\\n";
        }}

        location /socket.io/ {{
            proxy_pass http://socketio;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_buffering off;
            proxy_read_timeout 1h;
            proxy_send_timeout 1h;
        }}
    }}
}}
"""


def write(run_dir: Path, port: int, server_ports: Sequence[int]) -> Path:
    """Write run_dir/nginx/nginx.conf with the directories it names; return its path."""
    nginx_dir = run_dir / "nginx"
    for name in _TEMP_DIRS:
        (nginx_dir / "tmp" / name).mkdir(parents=True, exist_ok=True)
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    conf = nginx_dir / "nginx.conf"
    conf.write_text(render(run_dir, port, server_ports))
    return conf
