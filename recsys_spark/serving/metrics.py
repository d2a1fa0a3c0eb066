"""The service's Prometheus metrics (``GET /metrics``), one registry per service.

Latency is measured from the request's arrival in the handler to its answer, per route and per
answer (cache, realtime, fallback, or error); the cache's hit ratio is the share of lookups that
found a list since the start (also derivable from the counters as a rate).
"""

from __future__ import annotations

from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# Seconds: fine below 10 ms, where the cached path lives.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0,
                   2.0, 5.0)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class ServiceMetrics:
    """Every metric of one service, registered in its own CollectorRegistry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.latency = Histogram("recsys_serve_request_seconds", "Time to answer a request, by route and answer",
                                 ["route", "answered_by"], buckets=LATENCY_BUCKETS, registry=r)
        self.requests = Counter("recsys_serve_requests", "Requests answered, by route and HTTP status",
                                ["route", "status"], registry=r)
        self.answers = Counter("recsys_serve_answers", "Lists answered, by what answered",
                               ["answered_by"], registry=r)
        self.cache = Counter("recsys_serve_cache_lookups", "Cache lookups: hit, miss or error (Redis unreachable "
                             "or slow, or skipped after a recent failure)", ["result"], registry=r)
        self.fallbacks = Counter("recsys_serve_fallbacks", "Fallback answers, by reason", ["reason"], registry=r)
        self.errors = Counter("recsys_serve_errors", "Errors the service survived, by kind", ["kind"], registry=r)
        self.unknown_products = Counter("recsys_serve_unknown_products",
                                        "Posted events whose product the features' vocabulary lacks", registry=r)
        self.model_loads = Counter("recsys_serve_model_loads", "Champion loads, by outcome", ["outcome"], registry=r)
        self.model_version = Gauge("recsys_serve_model_version", "The champion's registered version (0: none)",
                                   registry=r)
        self.hit_ratio = Gauge("recsys_serve_cache_hit_ratio", "Cache hits / lookups since the start", registry=r)
        self.exposures_written = Gauge("recsys_serve_exposures_written", "Exposure rows written to paths.feedback",
                                       registry=r)
        self.exposures_lost = Gauge("recsys_serve_exposures_lost", "Exposure rows lost (failed or interrupted "
                                    "writes, or dropped while too many waited)", registry=r)
        self.exposures_pending = Gauge("recsys_serve_exposures_pending", "Exposure rows not yet written", registry=r)
        self.writer_restarts = Gauge("recsys_serve_exposure_writer_restarts", "Times the exposure writer thread was "
                                     "started again after it stopped", registry=r)
        self._lookups = {"hit": 0, "miss": 0, "error": 0}
        self.hit_ratio.set_function(self._hit_ratio)
        self._children: dict[tuple, object] = {}

    def child(self, metric, *labels: str):
        """``metric.labels(*labels)``, looked up once (prometheus_client's lookup takes a lock and
        checks every label: a tenth of a cached answer's CPU)."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def lookup(self, result: str) -> None:
        """Count a cache lookup: "hit", "miss" or "error"."""
        self.child(self.cache, result).inc()
        self._lookups[result] += 1  # a race may lose one: the ratio is a gauge, the counter is exact

    def watch_writer(self, counts: Callable[[], object]) -> None:
        """Read the exposure writer's counts at each scrape (exposures.WriterCounts)."""
        self.exposures_written.set_function(lambda: counts().written)
        self.exposures_lost.set_function(lambda: counts().lost)
        self.exposures_pending.set_function(lambda: counts().pending)
        self.writer_restarts.set_function(lambda: counts().restarts)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def value(self, name: str, **labels: str) -> float:
        """A sample's current value (0 when absent), e.g. value("recsys_serve_answers_total", answered_by="cache")."""
        found = self.registry.get_sample_value(name, labels)
        return 0.0 if found is None else found

    def _hit_ratio(self) -> float:
        total = sum(self._lookups.values())
        return self._lookups["hit"] / total if total else 0.0
