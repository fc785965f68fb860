"""Container and pod metrics under the cAdvisor names, for the agent's own ``/metrics``.

The same samples the CRI's ``ListPodSandboxMetrics`` sends the kubelet
(``cadvisor.pod_values`` over ``PodService.pod_usages``), as families with exact
values. Where cAdvisor's name and type disagree with Prometheus's naming rules (the
counter ``container_memory_failcnt`` has no ``_total``, the gauge
``container_fs_inodes_total`` has one) the family is exposed untyped: a Prometheus
client names every counter ``*_total``, ``promtool`` refuses a gauge named so, and
the names must stay as dashboards know them. Imports ``pods`` types only.
"""

from __future__ import annotations

from collections.abc import Iterable

from agent.metrics import cadvisor
from agent.metrics.exposition import COUNTER, GAUGE, UNKNOWN, Family, FamilyBuilder, LabelCache
from agent.pods import PodUsage

__all__ = ["container_families"]


def _kind(descriptor: cadvisor.Descriptor) -> str:
    if descriptor.counter != descriptor.name.endswith("_total"):
        return UNKNOWN
    return COUNTER if descriptor.counter else GAUGE


def container_families(pods: Iterable[PodUsage], cache: LabelCache | None = None) -> list[Family]:
    cache = cache or LabelCache()
    builders = {
        d.name: FamilyBuilder(d.name, d.help, _kind(d), d.labels, cache)
        for d in cadvisor.DESCRIPTORS
    }
    for pod in pods:
        pod_level, per_container = cadvisor.pod_values(pod)
        for descriptor, labels, value in pod_level:
            builders[descriptor.name].add(labels, value)
        for values in per_container.values():
            for descriptor, labels, value in values:
                builders[descriptor.name].add(labels, value)
    return [b.family for b in builders.values() if b.family.lines]
