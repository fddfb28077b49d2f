"""The browser app as nginx serves it: every file loads, and with a MIME type a
browser accepts for ES modules (it refuses `application/octet-stream`).

Against a running cluster set CHAT_FRONTEND_URL (e.g. http://127.0.0.1:3000/);
otherwise the test serves frontend/ with the system nginx on a free port.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

FRONTEND = Path(__file__).resolve().parents[2] / "frontend"
MODULE_TYPES = ("application/javascript", "text/javascript")

_NGINX_CONF = """
daemon off;
pid {tmp}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 64; }}
http {{
    include /etc/nginx/mime.types;
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        index index.html;
    }}
}}
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _get(url: str) -> tuple[int, str, str]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.status, resp.headers.get_content_type(), resp.read().decode()


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if url := os.environ.get("CHAT_FRONTEND_URL"):
        yield url.rstrip("/") + "/"
        return
    nginx = shutil.which("nginx", path=f"{os.environ.get('PATH', '')}:/usr/sbin")
    if nginx is None or not Path("/etc/nginx/mime.types").exists():
        pytest.skip("no nginx (Debian package) to serve the frontend and CHAT_FRONTEND_URL unset")
    tmp = tmp_path_factory.mktemp("nginx")
    port = _free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(_NGINX_CONF.format(tmp=tmp, port=port, root=FRONTEND))
    proc = subprocess.Popen(
        [nginx, "-p", str(tmp), "-e", "stderr", "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                _get(url)
                break
            except (urllib.error.URLError, ConnectionError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    proc.kill()
                    _, err = proc.communicate()
                    pytest.fail(f"nginx did not start: {err.decode()}")
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stderr is not None:
            proc.stderr.close()


def test_index_loads_the_app(base_url: str) -> None:
    status, ctype, html = _get(base_url)
    assert status == 200 and ctype == "text/html"
    assert '<script type="module" src="app.js">' in html
    assert 'href="style.css"' in html
    assert _get(base_url + "style.css")[1] == "text/css"


def test_every_module_is_served_as_javascript(base_url: str) -> None:
    """Follow the import graph from app.js: each module exists and is JavaScript."""
    pending, seen = ["app.js"], set()
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        status, ctype, source = _get(base_url + name)
        assert status == 200, name
        assert ctype in MODULE_TYPES, (name, ctype)
        for spec in re.findall(r'^\s*(?:import|export)\b[^;]*?from\s+"([^"]+)"', source, re.M):
            assert spec.startswith("./"), f"{name} imports {spec}: no bare or remote imports"
            pending.append(spec.removeprefix("./"))
    assert {"app.js", "chat-core.js", "transcript.js"} <= seen


def test_no_external_resources(base_url: str) -> None:
    """The page works offline and behind strict CSPs: nothing from other origins."""
    for name in ("", "app.js", "chat-core.js", "transcript.js", "style.css"):
        _, _, body = _get(base_url + name)
        assert not re.search(r"""(src|href)=["']?(https?:)?//""", body), name
        assert "@import" not in body, name
