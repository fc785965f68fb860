"""Container and pod metrics under the cAdvisor names, for the agent's own ``/metrics``.

The same samples the CRI's ``ListPodSandboxMetrics`` sends the kubelet
(``cadvisor.pod_samples`` over ``PodService.pod_usages``), as Prometheus families
with exact values. Where cAdvisor's name and type disagree with Prometheus's naming
rules (the counter ``container_memory_failcnt`` has no ``_total``, the gauge
``container_fs_inodes_total`` has one) the family is exposed untyped: a Prometheus
client names every counter ``*_total``, ``promtool`` refuses a gauge named so, and
the names must stay as dashboards know them.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    UnknownMetricFamily,
)

from agent.metrics import cadvisor
from agent.pods import PodUsage

__all__ = ["container_families"]


_Family = CounterMetricFamily | GaugeMetricFamily | UnknownMetricFamily


def _family(descriptor: cadvisor.Descriptor) -> _Family:
    labels = list(descriptor.labels)
    if descriptor.counter != descriptor.name.endswith("_total"):
        return UnknownMetricFamily(descriptor.name, descriptor.help, labels=labels)
    if descriptor.counter:
        return CounterMetricFamily(descriptor.name, descriptor.help, labels=labels)
    return GaugeMetricFamily(descriptor.name, descriptor.help, labels=labels)


def container_families(pods: Iterable[PodUsage]) -> list[Metric]:
    families = {d.name: _family(d) for d in cadvisor.DESCRIPTORS}
    for pod in pods:
        pod_level, per_container = cadvisor.pod_samples(pod)
        for sample in pod_level:
            families[sample.name].add_metric(sample.label_values, sample.value)
        for samples in per_container.values():
            for sample in samples:
                families[sample.name].add_metric(sample.label_values, sample.value)
    return [f for f in families.values() if f.samples]
