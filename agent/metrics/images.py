"""Image pull metrics: bytes, duration, pulls in flight and their outcomes."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from agent.metrics import names

__all__ = ["PullMetrics"]

# From a cached small image (well under a second) to a cold 20 GB model image.
_BUCKETS = (0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600)


class PullMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.bytes_pulled = Counter(
            names.IMAGE_PULL_BYTES_TOTAL.removesuffix("_total"),
            "Compressed image bytes received from registries",
            registry=registry,
        )
        self.duration = Histogram(
            names.IMAGE_PULL_DURATION_SECONDS,
            "Time from the start of a pull to the image being usable (successful pulls)",
            buckets=_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            names.IMAGE_PULLS_IN_FLIGHT, "Image pulls in progress", registry=registry
        )
        self.pulls = Counter(
            names.IMAGE_PULLS_TOTAL.removesuffix("_total"),
            "Image pulls finished, by result (success, error, stalled)",
            ["result"],
            registry=registry,
        )

    # -- images.pull.PullObserver ------------------------------------------------------

    def pull_started(self, registry: str) -> None:
        self.in_flight.inc()

    def bytes_received(self, registry: str, count: int) -> None:
        self.bytes_pulled.inc(count)

    def pull_finished(self, registry: str, result: str, seconds: float) -> None:
        self.in_flight.dec()
        self.pulls.labels(result).inc()
        if result == "success":
            self.duration.observe(seconds)
