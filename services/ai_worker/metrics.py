"""The worker's Prometheus metrics, on a registry of its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from services.common.protocol import FinishReason


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.in_flight = Gauge(
            "worker_generations_in_flight", "Answers being generated", registry=registry
        )
        self.chunks = Counter("worker_chunks_written", "Chunks appended", registry=registry)
        self.finished = Counter(
            "worker_answers_finished", "Answers finished", ["finish_reason"], registry=registry
        )
        for reason in FinishReason:
            self.finished.labels(reason.value)
        self.takeovers = Counter(
            "worker_takeovers", "Answers continued after another worker's seq", registry=registry
        )
        self.chunks_rewritten = Counter(
            "worker_chunks_rewritten",
            "Chunks Redis lost that the worker wrote again from memory",
            registry=registry,
        )
        self.provider_errors = Counter(
            "worker_provider_errors", "Model provider failures", registry=registry
        )
        self.leased_elsewhere = Counter(
            "worker_leased_elsewhere",
            "Requests for answers another worker holds",
            registry=registry,
        )
