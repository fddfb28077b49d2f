"""A node's Prometheus metrics, on a registry of its own, every name under the prefix
of its kind of node (`gateway_`, `worker_`), beside the process's own (`process_`,
`python_`) from `node_registry`.

`_created` series are turned off at import: every counter and histogram would
otherwise carry a second series with its creation time, which no dashboard reads.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)

disable_created_metrics()  # type: ignore[no-untyped-call]

#: From a chat's start to its first chunk, or to its end: the model's pace, from tens
#: of milliseconds (a first chunk) to minutes (a long answer).
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)


def node_registry() -> CollectorRegistry:
    """A registry with the process's CPU seconds, resident memory, open fds and start
    time (`process_*`), the Python version (`python_info`) and GC counts (`python_gc_*`)."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


class MetricsFactory:
    def __init__(self, registry: CollectorRegistry, prefix: str) -> None:
        self._registry = registry
        self._prefix = prefix

    def counter(
        self, name: str, doc: str, label: str | None = None, values: Iterable[str] = ()
    ) -> Counter:
        """A counter; one with a `label` has every one of its `values` from the start,
        so dashboards see zeros rather than gaps."""
        labels = [label] if label else []
        counter = Counter(self._name(name), doc, labels, registry=self._registry)
        for value in values:
            counter.labels(value)
        return counter

    def gauge(self, name: str, doc: str) -> Gauge:
        return Gauge(self._name(name), doc, registry=self._registry)

    def histogram(self, name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
        return Histogram(self._name(name), doc, buckets=buckets, registry=self._registry)

    def _name(self, name: str) -> str:
        return f"{self._prefix}_{name}"
