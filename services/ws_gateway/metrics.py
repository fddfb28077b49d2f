"""The gateway's Prometheus metrics: the numbers that prove nothing is lost, and how
long clients wait (`AnswerTimer`)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from services.common.metrics import LATENCY_BUCKETS, MetricsFactory
from services.common.overload import REASONS
from services.common.protocol import ErrorCode

RESUME_OUTCOMES = ("recovered", "expired", "not_found")


DURABLE_OPS = ("create", "append", "read", "long_poll", "sse", "head", "delete", "other")
DURABLE_REFUSALS = ("400", "401", "403", "404", "405", "409", "410", "413", "501", "503")


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        m = MetricsFactory(registry, "gateway")
        self.connections = m.gauge("connections_open", "Open WebSocket connections")
        self.answers_streaming = m.gauge(
            "answers_streaming", "Answers this node relays to at least one connection"
        )
        self.answers_driving = m.gauge(
            "answers_driving", "Answers whose generate call this node holds open"
        )
        self.time_to_first_chunk = m.histogram(
            "time_to_first_chunk_seconds",
            "From accepting a chat to queueing its first chunk for the client that sent it",
            LATENCY_BUCKETS,
        )
        self.answer_duration = m.histogram(
            "answer_duration_seconds",
            "From accepting a chat to queueing its done for the client that sent it",
            LATENCY_BUCKETS,
        )
        self.streams_relayed = m.counter(
            "streams_relayed", "Message streams followed by a connection"
        )
        self.chunks_sent = m.counter("chunks_sent", "Chunk frames queued to clients")
        self.resumes = m.counter(
            "resumes", "Resume requests by outcome", "outcome", RESUME_OUTCOMES
        )
        self.takeovers = m.counter("takeovers", "Answers handed to another worker")
        self.slow_closes = m.counter("slow_consumer_closes", "Clients closed with 4008")
        self.queue_depth = m.histogram(
            "queue_depth",
            "Frames waiting in a connection's queue when it sends",
            (0, 1, 2, 5, 10, 50, 100, 500, 1000, 5000),
        )
        self.chunk_delay = m.histogram(
            "chunk_delay_seconds",
            "From the worker writing a chunk to the gateway queueing it for a live client",
            (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )
        self.reader_batches = m.counter("relay_reads", "XREAD calls of the node's relay reader")
        self.malformed_entries = m.counter(
            "malformed_stream_entries", "Stream entries the relay could not decode and skipped"
        )
        self.state_lost = m.counter(
            "state_lost", "Answers ended for a client because storage lost their state"
        )
        self.errors = m.counter(
            "errors_sent", "Error frames by code", "code", [c.value for c in ErrorCode]
        )
        self.chats_refused = m.counter(
            "chats_refused", "Chats refused by admission (busy + retry_after)", "reason", REASONS
        )
        self.workers_busy = m.counter(
            "workers_busy", "Generate calls a full worker refused (the answer waits and retries)"
        )
        self.loop_lag = m.gauge("loop_lag_seconds", "The event loop's smoothed lag")
        self.answer_limit = m.gauge(
            "answer_limit", "Answers in hand admission allows now (lowered while the loop lags)"
        )
        self.upstream_failures = m.counter(
            "upstream_unavailable", "Answers ended because no worker could finish them"
        )
        # Durable Streams over HTTP (services/durable).
        self.durable_requests = m.counter(
            "durable_requests", "Durable Streams requests by operation", "op", DURABLE_OPS
        )
        self.durable_refused = m.counter(
            "durable_refused",
            "Durable Streams requests refused, by status",
            "status",
            DURABLE_REFUSALS,
        )
        self.durable_live_reads = m.gauge(
            "durable_live_reads", "Durable Streams long-poll and SSE reads open on this node"
        )
        self.durable_bytes_appended = m.counter(
            "durable_bytes_appended", "Bytes appended to durable streams through this node"
        )


@dataclass(slots=True)
class AnswerTimer:
    """A chat as the connection that sent it sees it: accepted at `accepted_at`, then
    its first chunk and its end queued for the client (`time.monotonic()` seconds)."""

    accepted_at: float
    first_chunk_seen: bool = False

    def step(self, chunks: int, finished: bool, now: float) -> tuple[float | None, float | None]:
        """(time to the first chunk, if this step queues it; the answer's duration, if
        this step ends it)."""
        first: float | None = None
        if chunks and not self.first_chunk_seen:
            self.first_chunk_seen = True
            first = now - self.accepted_at
        return first, (now - self.accepted_at) if finished else None

    def observe(self, metrics: GatewayMetrics, chunks: int, finished: bool, now: float) -> None:
        first, duration = self.step(chunks, finished, now)
        if first is not None:
            metrics.time_to_first_chunk.observe(first)
        if duration is not None:
            metrics.answer_duration.observe(duration)
