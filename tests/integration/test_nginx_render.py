"""The rendered config in a real nginx, in front of tiny stand-in HTTP backends."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from nginx.render import check, find_nginx, local_layout, nginx_command, write_local
from tests.conftest import free_ports, wait_for

pytestmark = pytest.mark.integration

if find_nginx() is None:
    pytest.skip("nginx is not installed (apt-get install nginx)", allow_module_level=True)


class _Backend(BaseHTTPRequestHandler):
    """Answers with its node name and the client address headers it received."""

    server: _NamedServer

    def _answer(self, status: int = 200) -> None:
        body = json.dumps(
            {
                "node_id": self.server.name,
                "x_real_ip": self.headers.get("X-Real-IP"),
                "x_forwarded_for": self.headers.get("X-Forwarded-For"),
            }
        ).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._answer()

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        # A worker that is shutting down refuses new generations with 503.
        self._answer(503 if self.server.refuse else 200)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


class _NamedServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, name: str, refuse: bool = False) -> None:
        super().__init__(("127.0.0.1", port), _Backend)
        self.name, self.refuse = name, refuse


@dataclass
class Proxy:
    public: str
    internal: str
    internal_port: int
    status: str
    frontend: str
    run_dir: Path
    public_port: int


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    run_dir = tmp_path_factory.mktemp("nginx-run")
    ports = free_ports(10)
    gw_ports, wk_ports, (public, internal, status, frontend) = ports[:3], ports[3:6], ports[6:]
    servers = [_NamedServer(p, f"gateway-{i}") for i, p in enumerate(gw_ports, 1)]
    # worker-1 refuses every POST: nginx must retry the request on another worker.
    servers += [_NamedServer(p, f"worker-{i}", refuse=i == 1) for i, p in enumerate(wk_ports, 1)]
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    for thread in threads:
        thread.start()
    layout = local_layout(
        run_dir,
        gateway_ports=gw_ports,
        worker_ports=wk_ports,
        public_port=public,
        internal_port=internal,
        status_port=status,
        frontend_port=frontend,
    )
    write_local(layout)
    nginx_bin = find_nginx()
    assert nginx_bin is not None
    proc = subprocess.Popen(nginx_command(nginx_bin, run_dir), stdout=subprocess.DEVNULL)
    base = "http://127.0.0.1:{}"
    try:
        wait_for(
            lambda: proc.poll() is not None or _up(base.format(status) + "/nginx-status"),
            10,
            "nginx to listen",
        )
        assert proc.poll() is None, (run_dir / "logs" / "nginx-error.log").read_text()
        yield Proxy(
            base.format(public),
            base.format(internal),
            internal,
            base.format(status),
            base.format(frontend),
            run_dir,
            public,
        )
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        for server in servers:
            server.shutdown()
            server.server_close()


def _up(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def _get(url: str, source_ip: str = "127.0.0.1") -> dict[str, str]:
    transport = httpx.HTTPTransport(local_address=source_ip)
    with httpx.Client(transport=transport, timeout=5) as client:
        resp = client.get(url)
    assert resp.status_code == 200, resp.text
    body: dict[str, str] = resp.json()
    return body


@pytest.mark.parametrize("sticky", ["ip_hash", "consistent"])
@pytest.mark.parametrize(("gateways", "workers"), [(3, 3), (5, 2)])
def test_nginx_accepts_the_rendered_config(sticky: str, gateways: int, workers: int) -> None:
    assert check(gateways, workers, sticky) == 0


def test_ip_hash_is_sticky_per_24_and_spreads_across_them(proxy: Proxy) -> None:
    by_net = {n: _get(f"{proxy.public}/health", f"127.0.{n}.1")["node_id"] for n in range(1, 40)}
    assert set(by_net.values()) == {"gateway-1", "gateway-2", "gateway-3"}
    # Another host of the same /24 lands on the same gateway.
    assert _get(f"{proxy.public}/health", "127.0.5.9")["node_id"] == by_net[5]


def test_gateways_see_the_client_address(proxy: Proxy) -> None:
    body = _get(f"{proxy.public}/api/whoami", "127.0.7.3")
    assert body["x_real_ip"] == "127.0.7.3"
    assert body["x_forwarded_for"] == "127.0.7.3"


def test_public_port_has_no_ai_upstream(proxy: Proxy) -> None:
    assert httpx.post(f"{proxy.public}/v1/generate", json={}, timeout=5).status_code == 404
    assert httpx.get(f"{proxy.public}/v1/health", timeout=5).status_code == 404


def test_internal_listener_retries_a_refusing_worker(proxy: Proxy) -> None:
    # least_conn with idle workers rotates, so some POSTs hit worker-1 first.
    for _ in range(6):
        resp = httpx.post(f"{proxy.internal}/v1/generate", json={"message_id": "m"}, timeout=5)
        assert resp.status_code == 200
        assert resp.json()["node_id"] in {"worker-2", "worker-3"}


def test_internal_listener_is_loopback_only(proxy: Proxy) -> None:
    assert _get(f"{proxy.internal}/health")["node_id"].startswith("worker-")
    with pytest.raises(OSError), socket.create_connection(("127.0.0.2", proxy.internal_port), 2):
        pass


def test_public_listeners_are_loopback_only(proxy: Proxy) -> None:
    assert _get(f"{proxy.public}/health")["node_id"].startswith("gateway-")
    with pytest.raises(OSError), socket.create_connection(("127.0.0.2", proxy.public_port), 2):
        pass


def test_access_log_keeps_no_query_string(proxy: Proxy) -> None:
    secret = "SECRET" + uuid.uuid4().hex
    source = f"127.0.{uuid.uuid4().int % 200 + 20}.{uuid.uuid4().int % 200 + 20}"
    transport = httpx.HTTPTransport(local_address=source)
    with httpx.Client(transport=transport, timeout=5) as client:
        assert client.get(f"{proxy.public}/health?session_id=s&token={secret}").status_code == 200
    log = proxy.run_dir / "logs" / "nginx-access.log"

    def our_line() -> str:
        lines = [ln for ln in log.read_text().splitlines() if ln.startswith(source + " ")]
        return lines[-1] if lines else ""

    line = wait_for(our_line, 10, "the request in the access log")
    assert '"GET /health HTTP/1.1" 200' in line, line
    for name in ("nginx-access.log", "nginx-error.log"):
        assert secret not in (proxy.run_dir / "logs" / name).read_text(), name


def test_frontend_serves_the_built_app_not_its_sources(proxy: Proxy) -> None:
    """The root is frontend/dist: the page (or, before a build, a placeholder saying
    so) and nothing of the sources, packages or tests beside it."""
    page = httpx.get(f"{proxy.frontend}/", timeout=5)
    assert page.status_code == 200 and "<title>" in page.text
    for path in ("/src/core/client.ts", "/package.json", "/node_modules/react/package.json"):
        assert httpx.get(f"{proxy.frontend}{path}", timeout=5).status_code == 404, path
    # With no runtime settings written, config.json is an empty object: the app's origin.
    config = httpx.get(f"{proxy.frontend}/config.json", timeout=5)
    assert (config.status_code, config.json()) == (200, {})


def test_stub_status(proxy: Proxy) -> None:
    assert "Active connections" in httpx.get(f"{proxy.status}/nginx-status", timeout=5).text


def test_config_lives_in_the_run_dir(tmp_path: Path) -> None:
    layout = local_layout(
        tmp_path,
        gateway_ports=[1],
        worker_ports=[2],
        public_port=3,
        internal_port=4,
        status_port=5,
        frontend_port=6,
    )
    conf = write_local(layout)
    assert conf == tmp_path / "nginx" / "nginx.conf"
    assert (tmp_path / "nginx" / "tmp" / "proxy").is_dir()
