"""The server's Prometheus metrics, named once, in their own registry.

These are the series an autoscaler reads (KEDA's Prometheus trigger or an HPA through
prometheus-adapter, see each example's ``k8s/``):

- ``model_server_requests_total{model,status}``: inference requests answered, by HTTP status;
- ``model_server_request_duration_seconds{model,status}``: their latency (histogram);
- ``model_server_requests_in_flight{model}``: requests received and not yet answered;
- ``model_server_queue_length{model}``: requests waiting for a batch (the scaling signal);
- ``model_server_batch_size{model}``: rows per batch run (histogram);
- ``model_server_model_ready{model}`` and ``model_server_model_info{model,version,device}``.

Must not import ``app`` or any model module.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE", "ServerMetrics"]

CONTENT_TYPE = CONTENT_TYPE_LATEST
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServerMetrics:
    """One registry per server (tests run several servers in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "model_server_requests",
            "Inference requests answered, by model and HTTP status.",
            ["model", "status"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "model_server_request_duration_seconds",
            "Time from receiving an inference request to answering it.",
            ["model", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "model_server_requests_in_flight",
            "Inference requests received and not yet answered.",
            ["model"],
            registry=self.registry,
        )
        self.queue_length = Gauge(
            "model_server_queue_length",
            "Inference requests waiting in the batcher's queue.",
            ["model"],
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "model_server_batch_size",
            "Rows per batch the model ran.",
            ["model"],
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.ready = Gauge(
            "model_server_model_ready",
            "1 once the model's weights are loaded and it answers inference requests.",
            ["model"],
            registry=self.registry,
        )
        self.info = Gauge(
            "model_server_model_info",
            "The loaded model: its version and the device it runs on (always 1).",
            ["model", "version", "device"],
            registry=self.registry,
        )

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
