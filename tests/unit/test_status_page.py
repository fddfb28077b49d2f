"""The status listener (:8090) as rendered: the dashboard's static files, the node list
it reads (/cluster.json), and which node routes answer whom. Pure text, no nginx."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from nginx.render import CHECKOUT, compose_layout, render
from tests.nginx_confs import block as _block
from tests.nginx_confs import local_conf, servers

pytestmark = pytest.mark.unit

STATUS_DIR = CHECKOUT / "status"
LOOPBACK_ONLY = ["allow 127.0.0.0/8;", "allow ::1;", "deny all;"]


def _status_server(conf: str) -> str:
    (status,) = [s for s in servers(conf) if "stub_status;" in s]
    return status


def _directives(block: str) -> list[str]:
    return [line.strip() for line in block.splitlines()[1:-1] if line.strip()]


def _cluster(status: str) -> dict[str, object]:
    body = re.search(r"return 200 '([^']*)';", _block(status, "location = /cluster.json"))
    assert body is not None
    cluster = json.loads(body.group(1))
    assert isinstance(cluster, dict)
    return cluster


def test_the_dashboard_is_served_from_the_status_dir(tmp_path: Path) -> None:
    status = _status_server(local_conf(tmp_path))
    assert f'root "{STATUS_DIR}";' in status
    assert "try_files $uri $uri/index.html =404;" in _block(status, "location / {")
    # Its tests are not part of the site; stub_status stays.
    assert "return 404;" in _block(status, r"location ~ (\.test\.[cm]?js$|/\.)")
    assert "stub_status;" in _block(status, "location = /nginx-status")
    for name in ("index.html", "app.mjs", "metrics.mjs", "status.css"):
        assert (STATUS_DIR / name).is_file(), name
    index = (STATUS_DIR / "index.html").read_text()
    assert 'src="app.mjs"' in index and 'href="status.css"' in index
    assert "./metrics.mjs" in (STATUS_DIR / "app.mjs").read_text()


def test_cluster_json_lists_the_layout(tmp_path: Path) -> None:
    conf = local_conf(tmp_path, 2, 3, sticky="consistent", down=["worker-2"])
    cluster = _cluster(_status_server(conf))
    assert cluster == {
        "mode": "local",
        "sticky": "consistent",
        "gateways": [
            {"name": "gateway-1", "kind": "gateway", "down": False},
            {"name": "gateway-2", "kind": "gateway", "down": False},
        ],
        "workers": [
            {"name": "worker-1", "kind": "worker", "down": False},
            {"name": "worker-2", "kind": "worker", "down": True},
            {"name": "worker-3", "kind": "worker", "down": False},
        ],
    }
    assert "default_type application/json;" in _block(conf, "location = /cluster.json")


def test_metrics_and_deps_answer_loopback_only_and_health_stays_open(tmp_path: Path) -> None:
    status = _status_server(local_conf(tmp_path, 2, 2))
    nodes = {"gateway-1": 9001, "gateway-2": 9002, "worker-1": 9101, "worker-2": 9102}
    for name, port in nodes.items():
        health = _directives(_block(status, f"location = /node/{name}/health "))
        assert health == [f"proxy_pass http://127.0.0.1:{port}/health;"], name
        metrics = _directives(_block(status, f"location = /node/{name}/metrics "))
        assert metrics == [*LOOPBACK_ONLY, f"proxy_pass http://127.0.0.1:{port}/metrics;"]
    for name in ("gateway-1", "gateway-2"):
        deps = _directives(_block(status, f"location = /node/{name}/deps "))
        assert deps == [*LOOPBACK_ONLY, f"proxy_pass http://127.0.0.1:{nodes[name]}/status/deps;"]
    assert "/node/worker-1/deps" not in status  # only gateways probe the dependencies
    # Every route to a node gives up quickly: a dead node shows down, not pending.
    assert "proxy_connect_timeout 1s;" in status and "proxy_read_timeout 3s;" in status


def test_compose_serves_the_status_dir_it_mounts() -> None:
    status = _status_server(render(compose_layout()))
    root = re.search(r'root "([^"]+)";', status)
    assert root is not None
    compose = yaml.safe_load((CHECKOUT / "compose" / "docker-compose.yml").read_text())
    mounts = [v.split(":") for v in compose["services"]["nginx"]["volumes"]]
    assert ["../status", root.group(1), "ro"] in mounts
    assert _cluster(status)["mode"] == "compose"
    assert "proxy_pass http://worker-3:8000/metrics;" in status
