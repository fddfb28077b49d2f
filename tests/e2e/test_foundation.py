"""The foundation through the real cluster: health, stickiness, isolation, WebSocket."""

from __future__ import annotations

import json
import socket
import uuid

import httpx
import pytest
import websockets
from websockets.asyncio.client import connect

from deploy.probes import port_open
from deploy.supervisor import pid_alive
from tests.conftest import ClusterHandle, StartCluster

pytestmark = pytest.mark.e2e


def _health_via(url: str, source_ip: str) -> str:
    """node_id answering GET url/health from a client bound to source_ip (new connection)."""
    transport = httpx.HTTPTransport(local_address=source_ip)
    with httpx.Client(transport=transport, timeout=5) as client:
        resp = client.get(f"{url}/health")
    assert resp.status_code == 200, resp.text
    node_id: str = resp.json()["node_id"]
    return node_id


def test_every_node_is_healthy(cluster: ClusterHandle) -> None:
    infos = cluster.cluster.supervisor.processes()
    assert {n: i["statename"] for n, i in infos.items()} == {
        name: "RUNNING"
        for name in ["redis", "kafka", "nginx", *cluster.gateway_names, *cluster.worker_names]
    }
    for name in cluster.gateway_names + cluster.worker_names:
        resp = httpx.get(f"{cluster.node_url(name)}/health", timeout=5)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["status"] == "ok"
        assert body["node_id"] == name
        assert body["pid"] == cluster.pid_of(name)
        assert body["service"] == ("ws_gateway" if name.startswith("gateway") else "ai_worker")


def test_one_client_always_reaches_the_same_gateway(cluster: ClusterHandle) -> None:
    seen = {_health_via(cluster.public_url, "127.0.0.1") for _ in range(10)}
    assert len(seen) == 1
    assert seen <= set(cluster.gateway_names)


def test_clients_on_different_24s_reach_every_gateway(cluster: ClusterHandle) -> None:
    # ip_hash hashes the first three octets, so 127.0.N.1 are different "networks".
    by_source = {n: _health_via(cluster.public_url, f"127.0.{n}.1") for n in range(1, 61)}
    assert set(by_source.values()) == set(cluster.gateway_names)
    # ... and each of them keeps its gateway.
    for n in (1, 17, 42):
        assert _health_via(cluster.public_url, f"127.0.{n}.1") == by_source[n]


def test_access_log_names_the_upstream(cluster: ClusterHandle) -> None:
    _health_via(cluster.public_url, "127.0.0.1")
    gateway_addrs = {
        f"upstream=127.0.0.1:{cluster.spec.node_port(n)}" for n in cluster.gateway_names
    }
    log = (cluster.run_dir / "logs" / "nginx-access.log").read_text()
    assert any(addr in log for addr in gateway_addrs)


def test_consistent_hashing_spreads_clients_of_one_24(cluster_factory: StartCluster) -> None:
    small = cluster_factory(gateways=3, workers=1, sticky="consistent")
    # `hash $remote_addr consistent` uses the whole address: one /24 spreads out.
    by_source = {n: _health_via(small.public_url, f"127.0.0.{n}") for n in range(1, 41)}
    assert set(by_source.values()) == set(small.gateway_names)
    assert _health_via(small.public_url, "127.0.0.7") == by_source[7]
    assert small.stop().clean


def test_ai_upstream_is_not_reachable_through_the_public_port(cluster: ClusterHandle) -> None:
    resp = httpx.post(f"{cluster.public_url}/v1/generate", json={}, timeout=5)
    assert resp.status_code == 404
    for path in ("/v1/cancel", "/metrics", "/ready", "/"):
        assert httpx.get(f"{cluster.public_url}{path}", timeout=5).status_code == 404


def test_ai_upstream_is_reachable_on_the_internal_listener_only(cluster: ClusterHandle) -> None:
    resp = httpx.get(f"{cluster.internal_url}/health", timeout=5)
    assert resp.status_code == 200
    assert resp.json()["node_id"] in cluster.worker_names
    # Bound to 127.0.0.1 only: another loopback address of this host is refused.
    with (
        pytest.raises(OSError),
        socket.create_connection(("127.0.0.2", cluster.spec.internal_port), timeout=2),
    ):
        pass


def test_status_port(cluster: ClusterHandle) -> None:
    stub = httpx.get(f"{cluster.status_url}/nginx-status", timeout=5)
    assert stub.status_code == 200
    assert "Active connections" in stub.text
    page = httpx.get(f"{cluster.status_url}/", timeout=5)
    assert page.status_code == 200 and "cluster status" in page.text
    # The dashboard learns the nodes from /cluster.json (test_status_page.py has more).
    layout = httpx.get(f"{cluster.status_url}/cluster.json", timeout=5).text
    assert all(name in layout for name in cluster.gateway_names + cluster.worker_names)
    node = httpx.get(f"{cluster.status_url}/node/worker-2/health", timeout=5)
    assert node.json()["node_id"] == "worker-2"


def test_frontend_port_serves(cluster: ClusterHandle) -> None:
    resp = httpx.get(f"{cluster.frontend_url}/", timeout=5)
    assert resp.status_code == 200
    assert "text/html" in resp.headers["content-type"]


async def test_welcome_frame_through_nginx(cluster: ClusterHandle) -> None:
    session_id = f"s-{uuid.uuid4().hex[:12]}"
    async with connect(cluster.ws_url(session_id, user_id="u1"), open_timeout=10) as ws:
        frame = json.loads(await ws.recv(decode=True))
    assert frame["type"] == "welcome"
    assert frame["protocol"] == 1
    assert frame["session_id"] == session_id
    assert frame["user_id"] == "u1"
    assert frame["node_id"] in cluster.gateway_names
    assert frame["streams"] == []


async def test_bad_token_is_closed_with_4401(cluster: ClusterHandle) -> None:
    for token in ("not-a-jwt", None):
        url = cluster.ws_url(f"s-{uuid.uuid4().hex[:12]}", token=token)
        with pytest.raises(websockets.ConnectionClosed) as closed:
            async with connect(url, open_timeout=10) as ws:
                await ws.recv()
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 4401


async def test_foreign_origin_is_refused_with_403(cluster: ClusterHandle) -> None:
    url = cluster.ws_url(f"s-{uuid.uuid4().hex[:12]}")
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with connect(url, origin=websockets.Origin("http://evil.example"), open_timeout=10):
            pass
    assert refused.value.response.status_code == 403
    # The deploy's own frontend origin is allowed.
    origin = websockets.Origin(f"http://localhost:{cluster.spec.frontend_port}")
    async with connect(url, origin=origin, open_timeout=10) as ws:
        assert json.loads(await ws.recv(decode=True))["type"] == "welcome"


def test_stop_leaves_nothing_running(cluster_factory: StartCluster) -> None:
    small = cluster_factory(gateways=1, workers=1)
    pids = small.pids()
    assert all(pids.values()) and len(pids) == 5
    daemon = small.cluster.supervisor.daemon_pid()
    assert daemon is not None
    report = small.stop()
    assert report.clean, report
    assert [pid for pid in [*pids.values(), daemon] if pid_alive(pid)] == []
    assert [port for port in small.ports.values() if port_open(port)] == []
    # Stopping again is harmless and the handle's stop is idempotent.
    assert small.cluster.stop().clean


def test_killed_gateway_is_restarted(cluster: ClusterHandle) -> None:
    name = cluster.gateway_names[-1]
    old = cluster.kill9(name)
    new = cluster.wait_healthy(name, timeout=30)
    assert new != old
    assert all(cluster.gateway_pids().values())
