"""The gateway's Prometheus metrics: the numbers that prove nothing is lost."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.common.protocol import ErrorCode

RESUME_OUTCOMES = ("recovered", "expired", "not_found")


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.connections = Gauge(
            "gateway_connections_open", "Open WebSocket connections", registry=registry
        )
        self.streams_relayed = Counter(
            "gateway_streams_relayed", "Message streams followed by a connection", registry=registry
        )
        self.chunks_sent = Counter(
            "gateway_chunks_sent", "Chunk frames queued to clients", registry=registry
        )
        self.resumes = Counter(
            "gateway_resumes", "Resume requests by outcome", ["outcome"], registry=registry
        )
        self.takeovers = Counter(
            "gateway_takeovers", "Answers handed to another worker", registry=registry
        )
        self.slow_closes = Counter(
            "gateway_slow_consumer_closes", "Clients closed with 4008", registry=registry
        )
        self.queue_depth = Histogram(
            "gateway_queue_depth",
            "Frames waiting in a connection's queue when it sends",
            buckets=(0, 1, 2, 5, 10, 50, 100, 500, 1000, 5000),
            registry=registry,
        )
        self.chunk_delay = Histogram(
            "gateway_chunk_delay_seconds",
            "From the worker writing a chunk to the gateway queueing it for a live client",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=registry,
        )
        self.reader_batches = Counter(
            "gateway_relay_reads", "XREAD calls of the node's relay reader", registry=registry
        )
        self.malformed_entries = Counter(
            "gateway_malformed_stream_entries",
            "Stream entries the relay could not decode and skipped",
            registry=registry,
        )
        self.state_lost = Counter(
            "gateway_state_lost",
            "Answers ended for a client because storage lost their state",
            registry=registry,
        )
        self.errors = Counter(
            "gateway_errors_sent", "Error frames by code", ["code"], registry=registry
        )
        # Every label value from the start, so dashboards see zeros rather than gaps.
        for outcome in RESUME_OUTCOMES:
            self.resumes.labels(outcome)
        for code in ErrorCode:
            self.errors.labels(code.value)
        self.upstream_failures = Counter(
            "gateway_upstream_unavailable",
            "Answers ended because no worker could finish them",
            registry=registry,
        )
