"""Per-RPC counters, latency histograms and open calls, recorded by the CRI interceptor.

Every call is counted by RPC and final gRPC code when it ends. Unary calls and the
bounded server streams (``StreamContainerStats`` and its siblings, which end once
they have sent the list) are timed. Long-lived streams (``GetContainerEvents``, which
the kubelet keeps open for the agent's lifetime) are not: one endless call would
land in the top bucket and say nothing. They show up as open calls in
``..._in_flight`` while they last, their messages in ``..._stream_messages_total``,
and in ``..._operations_total`` when they end (usually ``CANCELLED``: the client went).
Imports nothing of the agent but ``names`` (``cri.rpc`` calls it, not the reverse).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from agent.metrics import names

__all__ = ["LONG_LIVED_STREAMS", "RpcMetrics"]

#: Server streams that stay open until the client leaves.
LONG_LIVED_STREAMS = frozenset({"GetContainerEvents"})

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
            "CRI RPCs answered, by RPC and gRPC status code (long-lived streams when they end)",
            ["operation", "code"],
            registry=registry,
        )
        self.duration = Histogram(
            names.CRI_OPERATION_DURATION_SECONDS,
            "Time to answer a CRI RPC (bounded streams: until the last message; long-lived "
            "streams such as GetContainerEvents are not timed)",
            ["operation"],
            buckets=_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            names.CRI_OPERATIONS_IN_FLIGHT,
            "CRI RPCs being answered right now, open streams included",
            ["operation"],
            registry=registry,
        )
        self.stream_messages = Counter(
            names.CRI_STREAM_MESSAGES_TOTAL.removesuffix("_total"),
            "Messages sent on CRI server streams, by RPC",
            ["operation"],
            registry=registry,
        )

    def started(self, operation: str) -> None:
        self.in_flight.labels(operation).inc()

    def message_sent(self, operation: str) -> None:
        self.stream_messages.labels(operation).inc()

    def finished(self, operation: str, code: str, seconds: float) -> None:
        self.in_flight.labels(operation).dec()
        self.operations.labels(operation, code).inc()
        if operation not in LONG_LIVED_STREAMS:
            self.duration.labels(operation).observe(seconds)
