"""Image pull metrics by registry: bytes, duration, pulls in flight and their outcomes.

``PullMetrics`` is the pull pipeline's ``images.pull.PullObserver`` (it matches the
protocol structurally; this package does not import ``images``). ``registry`` is the
host the reference names (``docker.io``, ``registry.internal:5000``), not a mirror
that served it, so a dashboard groups pulls the way users name images.
"""

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
            "Compressed image bytes received from registries, by registry",
            ["registry"],
            registry=registry,
        )
        self.duration = Histogram(
            names.IMAGE_PULL_DURATION_SECONDS,
            "Time from the start of a pull to the image being usable (successful pulls)",
            ["registry"],
            buckets=_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            names.IMAGE_PULLS_IN_FLIGHT,
            "Image pulls in progress, by registry",
            ["registry"],
            registry=registry,
        )
        self.pulls = Counter(
            names.IMAGE_PULLS_TOTAL.removesuffix("_total"),
            "Image pulls finished, by registry and result (success, error, stalled)",
            ["registry", "result"],
            registry=registry,
        )

    # -- images.pull.PullObserver ------------------------------------------------------

    def pull_started(self, registry: str) -> None:
        self.in_flight.labels(registry).inc()

    def bytes_received(self, registry: str, count: int) -> None:
        self.bytes_pulled.labels(registry).inc(count)

    def pull_finished(self, registry: str, result: str, seconds: float) -> None:
        self.in_flight.labels(registry).dec()
        self.pulls.labels(registry, result).inc()
        if result == "success":
            self.duration.labels(registry).observe(seconds)
