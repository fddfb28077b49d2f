"""The status listener of a real cluster: the dashboard's files, the node list, every
node's metrics and the Redis and Kafka probe through nginx; and the latency histograms
after one chat."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from tests.chat_client import Answer, ChatClient

pytestmark = pytest.mark.e2e

DEADLINE_S = 20.0


def sample_sum(text: str, name: str) -> float | None:
    """The sum of every sample of `name` (any labels) in Prometheus text; None if absent."""
    total = None
    for line in text.splitlines():
        head, _, value = line.rpartition(" ")
        if head == name or head.startswith(name + "{"):
            total = (total or 0.0) + float(value)
    return total


async def eventually(check: Callable[[], Awaitable[Any]], what: str) -> Any:
    """Poll `check` until it returns something truthy; fail at the deadline."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {DEADLINE_S}s waiting for {what}")
        await asyncio.sleep(0.1)


async def test_the_dashboard_and_its_node_list(cluster) -> None:  # type: ignore[no-untyped-def]
    async with httpx.AsyncClient(base_url=cluster.status_url, timeout=5) as http:
        index = await http.get("/")
        assert index.status_code == 200
        assert index.headers["content-type"].startswith("text/html")
        assert 'src="app.mjs"' in index.text
        for path in ("/app.mjs", "/metrics.mjs"):
            script = await http.get(path)
            assert script.status_code == 200, path
            assert script.headers["content-type"].startswith("application/javascript"), path
        assert (await http.get("/status.css")).headers["content-type"].startswith("text/css")
        assert (await http.get("/metrics.test.mjs")).status_code == 404
        cluster_json = (await http.get("/cluster.json")).json()
        assert [g["name"] for g in cluster_json["gateways"]] == cluster.gateway_names
        assert [w["name"] for w in cluster_json["workers"]] == cluster.worker_names
        assert cluster_json["sticky"] == cluster.spec.sticky
        stub = await http.get("/nginx-status")
        assert stub.status_code == 200 and "Active connections" in stub.text
        health = await http.get(f"/node/{cluster.worker_names[0]}/health")
        assert health.status_code == 200 and health.json()["status"] == "ok"


async def test_node_metrics_and_the_dependency_probe(cluster) -> None:  # type: ignore[no-untyped-def]
    async with httpx.AsyncClient(base_url=cluster.status_url, timeout=5) as http:
        for name in [*cluster.gateway_names, *cluster.worker_names]:
            reply = await http.get(f"/node/{name}/metrics")
            assert reply.status_code == 200, name
            text = reply.text
            kind = name.split("-")[0]
            assert sample_sum(text, f"{kind}_loop_lag_seconds") is not None, name
            assert (sample_sum(text, "process_start_time_seconds") or 0) > 0, name
            assert (sample_sum(text, "process_resident_memory_bytes") or 0) > 0, name
            assert "_created" not in text, name
        gateway = cluster.gateway_names[0]
        metrics = (await http.get(f"/node/{gateway}/metrics")).text
        for name in ("gateway_connections_open", "gateway_answers_streaming"):
            assert sample_sum(metrics, name) is not None, name

        async def deps_up() -> dict[str, Any] | None:
            reply = await http.get(f"/node/{gateway}/deps")
            assert reply.status_code == 200
            body: dict[str, Any] = reply.json()
            return body if body["kafka"]["status"] == "up" else None

        deps = await eventually(deps_up, "the event producer to connect")
        redis = deps["redis"]
        assert redis["status"] == "up"
        assert redis["uptime_s"] > 0 and redis["connected_clients"] > 0
        assert redis["role"] == "master" and redis["version"]
        kafka = deps["kafka"]
        assert kafka["broker_reachable"] is True and kafka["producer_connected"] is True
        assert isinstance(kafka["outbox_length"], int)
        # Workers have no probe.
        assert (await http.get(f"/node/{cluster.worker_names[0]}/deps")).status_code == 404


async def test_one_chat_is_timed_on_its_gateway_and_its_worker(cluster) -> None:  # type: ignore[no-untyped-def]
    client = ChatClient(
        cluster.ws_url(f"status-{uuid.uuid4().hex[:8]}", user_id="status"),
        local_ip="127.0.77.1",
    )
    welcome = await client.connect()
    try:
        ack = await client.chat("How long does an answer take?", "c1")
        assert ack["type"] == "ack", ack
        answer = await client.read_answer(Answer(ack["message_id"]))
        assert answer.done is not None and answer.seqs
    finally:
        await client.close()
    gateway = welcome["node_id"]

    async with httpx.AsyncClient(base_url=cluster.status_url, timeout=5) as http:

        async def metrics(name: str) -> str:
            return (await http.get(f"/node/{name}/metrics")).text

        text = await metrics(gateway)
        assert (sample_sum(text, "gateway_time_to_first_chunk_seconds_count") or 0) >= 1
        assert (sample_sum(text, "gateway_answer_duration_seconds_count") or 0) >= 1
        first = sample_sum(text, "gateway_time_to_first_chunk_seconds_sum") or 0
        assert 0 < first <= (sample_sum(text, "gateway_answer_duration_seconds_sum") or 0)

        async def workers_timed() -> bool:
            texts = [await metrics(name) for name in cluster.worker_names]
            ttft = sum(
                sample_sum(t, "worker_time_to_first_token_seconds_count") or 0 for t in texts
            )
            done = sum(sample_sum(t, "worker_answer_duration_seconds_count") or 0 for t in texts)
            tokens = sum(sample_sum(t, "worker_tokens_written_total") or 0 for t in texts)
            return ttft >= 1 and done >= 1 and tokens >= len(answer.seqs)

        await eventually(workers_timed, "a worker to observe the answer's latencies")
