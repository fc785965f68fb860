"""GPU health metrics, read from the agent's ``GpuHealth`` at scrape time.

``model_agent_gpu_healthy{gpu,UUID}`` is 1 for a healthy GPU and 0 for one the agent
marked unhealthy (an XID, an uncorrectable ECC error, lost from the bus, NVML not
answering), the same state the device plugin's ``ListAndWatch``, the DRA driver's
ResourceSlice taints and health stream report. ``gpu`` is the index and ``UUID`` the
GPU's UUID, the labels DCGM-exporter uses. A minimal collector of its own: the GPU
metrics collector (DCGM names, per-container use) can take these series over.
Imports ``gpu`` (its health state) and ``metrics.names``.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agent.gpu import GpuHealth
from agent.metrics import names

__all__ = ["GpuHealthCollector"]


class GpuHealthCollector(Collector):
    def __init__(self, health: GpuHealth, registry: CollectorRegistry | None = None) -> None:
        self._health = health
        if registry is not None:
            registry.register(self)

    def describe(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(names.GPU_HEALTHY, _HELP, labels=["gpu", "UUID"])

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(names.GPU_HEALTHY, _HELP, labels=["gpu", "UUID"])
        for uuid, health in sorted(self._health.devices().items(), key=lambda i: i[1].index):
            family.add_metric([str(health.index), uuid], 1.0 if health.healthy else 0.0)
        yield family


_HELP = "1 when the GPU is healthy, 0 when the agent marked it unhealthy (XID, ECC, lost)"
