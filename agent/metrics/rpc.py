"""Per-RPC counters and latency histograms, recorded by the CRI interceptor."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from agent.metrics import names

__all__ = ["RpcMetrics"]

# RPC latencies span sub-millisecond status calls to multi-minute image pulls.
_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    120,
    300,
    600,
)


class RpcMetrics:
    def __init__(self, registry: CollectorRegistry, version: str) -> None:
        build = Info(names.BUILD_INFO.removesuffix("_info"), "model-agent build", registry=registry)
        build.info({"version": version})
        self.operations = Counter(
            names.CRI_OPERATIONS_TOTAL.removesuffix("_total"),
            "CRI RPCs answered, by RPC and gRPC status code",
            ["operation", "code"],
            registry=registry,
        )
        self.duration = Histogram(
            names.CRI_OPERATION_DURATION_SECONDS,
            "Time to answer a CRI RPC (streams: until the stream ends)",
            ["operation"],
            buckets=_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            names.CRI_OPERATIONS_IN_FLIGHT,
            "CRI RPCs being answered right now",
            ["operation"],
            registry=registry,
        )

    def observe(self, operation: str, code: str, seconds: float) -> None:
        self.operations.labels(operation, code).inc()
        self.duration.labels(operation).observe(seconds)
