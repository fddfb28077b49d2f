"""The worker's Prometheus metrics, on a registry of its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from services.common.metrics import LATENCY_BUCKETS, MetricsFactory
from services.common.overload import REASONS
from services.common.protocol import FinishReason


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        m = MetricsFactory(registry, "worker")
        self.in_flight = m.gauge("generations_in_flight", "Answers being generated")
        self.chunks = m.counter("chunks_written", "Chunks appended")
        self.tokens = m.counter(
            "tokens_written", "Tokens appended (estimated from each chunk's text)"
        )
        self.time_to_first_token = m.histogram(
            "time_to_first_token_seconds",
            "From a new answer's generation start to its first chunk written",
            LATENCY_BUCKETS,
        )
        self.answer_duration = m.histogram(
            "answer_duration_seconds",
            "From a new answer's generation start to its final record written",
            LATENCY_BUCKETS,
        )
        self.finished = m.counter(
            "answers_finished", "Answers finished", "finish_reason", [r.value for r in FinishReason]
        )
        self.takeovers = m.counter("takeovers", "Answers continued after another worker's seq")
        self.chunks_rewritten = m.counter(
            "chunks_rewritten", "Chunks Redis lost that the worker wrote again from memory"
        )
        self.finished_rewritten = m.counter(
            "finished_rewritten",
            "Finished answers Redis lost (restart, failover) that the worker wrote again",
        )
        self.finished_lost = m.counter(
            "finished_lost",
            "Finished answers Redis lost that the worker could not write again",
        )
        self.refused = m.counter(
            "generations_refused",
            "New answers refused for lack of room (429)",
            "reason",
            REASONS,
        )
        self.loop_lag = m.gauge("loop_lag_seconds", "The event loop's smoothed lag")
        self.provider_errors = m.counter("provider_errors", "Model provider failures")
        self.leased_elsewhere = m.counter(
            "leased_elsewhere", "Requests for answers another worker holds"
        )
