"""A node's Prometheus metrics, on a registry of its own, every name under the prefix
of its kind of node (`gateway_`, `worker_`)."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


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
