"""The registry writer gives byte for byte what prometheus_client's encoders give."""

from __future__ import annotations

import pytest
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Enum,
    Gauge,
    GCCollector,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    Summary,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from agent.metrics import RpcMetrics, RuntimeMetrics, registry_text
from agent.metrics.images import PullMetrics
from agent.metrics.registry_text import encoder_for

PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0;escaping=underscores;q=0.5,"
    "application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
)
ACCEPTS = [
    "",
    "text/plain;version=0.0.4",
    "application/openmetrics-text",
    "application/openmetrics-text;version=1.0.0",
    PROMETHEUS_ACCEPT,
    # not answered by the fast writer: prometheus_client's own, same bytes by definition
    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8",
    "text/plain;version=1.0.0",
]


def agent_registry() -> CollectorRegistry:
    """The agent's registry, its metrics used, label values that need escaping."""
    registry = CollectorRegistry()
    rpc = RpcMetrics(registry, version='0.1.0 "dev"')
    for operation, code, seconds in (
        ("RunPodSandbox", "OK", 0.4),
        ("ListContainers", "OK", 0.0004),
        ("CreateContainer", "InvalidArgument", 0.02),
    ):
        rpc.started(operation)
        rpc.finished(operation, code, seconds)
    rpc.message_sent("GetContainerEvents")
    runtime = RuntimeMetrics(registry)
    runtime.agent_started(2)
    runtime.recovery_finished(0.25, {"containers": 3, "sandboxes": 1})
    images = PullMetrics(registry)
    images.pull_started("registry.local:5000")
    images.bytes_received("registry.local:5000", 3 << 30)
    images.pull_finished("registry.local:5000", "ok", 41.5)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    odd = Gauge("demo_odd", 'Help with "quotes", a \\ and a\nnewline.', ["v"], registry=registry)
    odd.labels('a"b\\c\nd').set(1e21)
    odd.labels("").set(float("-inf"))
    Counter("demo_bytes", "Bytes.", unit="bytes", registry=registry).inc(7)
    Summary("demo_latency_seconds", "Latency.", registry=registry).observe(0.3)
    Enum("demo_state", "State.", states=["a", "b"], registry=registry).state("b")
    Info("demo", "Info.", registry=registry).info({"k": "v"})
    Histogram("demo_empty_seconds", "No observations.", ["op"], registry=registry)
    return registry


@pytest.mark.parametrize("accept", ACCEPTS)
def test_the_agents_registry_is_written_as_prometheus_client_writes_it(accept):
    registry = agent_registry()
    encoder, content_type = encoder_for(accept)
    reference, reference_type = choose_encoder(accept)
    # ProcessCollector reads /proc at collect time: freeze one collection for both.
    frozen = Frozen(registry)
    assert content_type == reference_type
    assert encoder(frozen).decode() == reference(frozen).decode()


@pytest.mark.parametrize("openmetrics", [False, True])
def test_the_agents_registry_takes_the_fast_path(openmetrics):
    """Not a fallback that would make the test above hold by definition."""
    frozen = Frozen(agent_registry())
    accept = "application/openmetrics-text;version=1.0.0" if openmetrics else ""
    reference, _ = choose_encoder(accept)
    assert registry_text._write(frozen.collect(), openmetrics) == reference(frozen)


class Frozen(Collector):
    """A registry's metrics collected once, the same for every encoder."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._metrics = list(registry.collect())

    def collect(self):
        return iter(self._metrics)


class Unusual(Collector):
    """Samples the fast writer leaves to prometheus_client."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def collect(self):
        family = GaugeMetricFamily("demo_plain", "Plain.", labels=["a"])
        family.add_metric(["x"], 1)
        yield family
        if self.kind == "timestamp":
            stamped = GaugeMetricFamily("demo_stamped", "Stamped.", labels=[])
            stamped.add_metric([], 2, timestamp=1700000000.5)
            yield stamped
        elif self.kind == "utf8":
            yield GaugeMetricFamily("demo.dotted", "Dotted.", value=3)
        elif self.kind == "label":
            family = GaugeMetricFamily("demo_label", "Label.", labels=["my.label"])
            family.add_metric(["v"], 4)
            yield family


@pytest.mark.parametrize("kind", ["timestamp", "utf8", "label"])
@pytest.mark.parametrize("accept", ACCEPTS[:5])
def test_what_the_writer_does_not_know_is_written_by_prometheus_client(kind, accept):
    registry = CollectorRegistry()
    registry.register(Unusual(kind))
    encoder, _ = encoder_for(accept)
    reference, _ = choose_encoder(accept)
    written = encoder(registry).decode()
    assert written == reference(registry).decode()
    assert "demo_plain" in written and written.count("# HELP") >= 2
