"""The nodes' registries: process metrics, no `_created` series, the latency
histograms, and the gateway's per-chat timer (pure)."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from services.ai_worker.metrics import WorkerMetrics
from services.common.metrics import LATENCY_BUCKETS, node_registry
from services.ws_gateway.metrics import AnswerTimer, GatewayMetrics

pytestmark = pytest.mark.unit


def exposition(registry: CollectorRegistry) -> str:
    return generate_latest(registry).decode()


def test_a_node_registry_exports_the_process_metrics() -> None:
    registry = node_registry()
    text = exposition(registry)
    for name in (
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
        "python_gc_collections_total",
    ):
        assert f"\n{name}" in text, name
    assert (registry.get_sample_value("process_resident_memory_bytes") or 0) > 0
    assert "python_info{" in text


def test_no_created_series_even_after_observations() -> None:
    registry = node_registry()
    gateway, worker = GatewayMetrics(registry), WorkerMetrics(registry)
    gateway.chunks_sent.inc()
    gateway.time_to_first_chunk.observe(0.2)
    gateway.errors.labels("busy").inc()
    worker.tokens.inc(3)
    worker.answer_duration.observe(1.5)
    text = exposition(registry)
    assert "gateway_chunks_sent_total 1.0" in text
    assert "_created" not in text


@pytest.mark.parametrize(
    ("make", "names"),
    [
        (
            GatewayMetrics,
            ["gateway_time_to_first_chunk_seconds", "gateway_answer_duration_seconds"],
        ),
        (
            WorkerMetrics,
            ["worker_time_to_first_token_seconds", "worker_answer_duration_seconds"],
        ),
    ],
)
def test_latency_histograms_span_50ms_to_2min(make: type, names: list[str]) -> None:
    registry = CollectorRegistry()
    make(registry)
    for name in names:
        bounds = [
            float(s.labels["le"])
            for metric in registry.collect()
            for s in metric.samples
            if s.name == f"{name}_bucket"
        ]
        assert bounds == [*LATENCY_BUCKETS, float("inf")], name
    assert LATENCY_BUCKETS[0] == 0.05 and LATENCY_BUCKETS[-1] == 120.0


def test_gateway_gauges_for_the_status_page() -> None:
    registry = CollectorRegistry()
    metrics = GatewayMetrics(registry)
    metrics.answers_streaming.set_function(lambda: 4)
    metrics.answers_driving.set_function(lambda: 2)
    assert registry.get_sample_value("gateway_answers_streaming") == 4
    assert registry.get_sample_value("gateway_answers_driving") == 2


def test_answer_timer_reports_the_first_chunk_once_and_the_end() -> None:
    timer = AnswerTimer(accepted_at=100.0)
    assert timer.step(0, False, 100.1) == (None, None)  # the catch-up's empty page
    assert timer.step(3, False, 100.5) == (pytest.approx(0.5), None)
    assert timer.step(2, False, 101.0) == (None, None)
    assert timer.step(1, True, 102.0) == (None, pytest.approx(2.0))


def test_answer_timer_an_answer_that_ends_in_its_first_step() -> None:
    timer = AnswerTimer(accepted_at=10.0)
    assert timer.step(5, True, 10.25) == (pytest.approx(0.25), pytest.approx(0.25))


def test_answer_timer_observes_into_the_gateway_histograms() -> None:
    registry = CollectorRegistry()
    metrics = GatewayMetrics(registry)
    timer = AnswerTimer(accepted_at=0.0)
    timer.observe(metrics, 1, False, 0.3)
    timer.observe(metrics, 1, False, 0.4)
    timer.observe(metrics, 0, True, 2.0)
    assert registry.get_sample_value("gateway_time_to_first_chunk_seconds_count") == 1
    assert registry.get_sample_value("gateway_time_to_first_chunk_seconds_sum") == pytest.approx(
        0.3
    )
    assert registry.get_sample_value("gateway_answer_duration_seconds_count") == 1
    assert registry.get_sample_value("gateway_answer_duration_seconds_bucket", {"le": "2.0"}) == 1
