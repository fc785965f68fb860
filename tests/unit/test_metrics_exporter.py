"""``NodeMetrics`` gathering: a failing part keeps its previous reading."""

from __future__ import annotations

import os
from typing import cast

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from agent.config import MetricsSection
from agent.gpu import GpuService
from agent.gpu.inventory import Inventory
from agent.gpu.simulated import SimulatedBackend
from agent.metrics import names
from agent.metrics.exporter import NodeMetrics
from agent.metrics.exposition import render
from tests.support.gpu_node import GPU0, simulation_toml
from tests.support.prometheus import PROMTOOL, promtool_check_metrics


class FlakyGpus:
    """``GpuService`` as the exporter uses it, whose inventory read fails when told."""

    def __init__(self, backend: SimulatedBackend) -> None:
        self.backend = backend
        self.fail = False

    def inventory(self) -> Inventory:
        if self.fail:
            raise RuntimeError("NVML went away")
        return Inventory.read(self.backend)


def samples(metrics: NodeMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = render(metrics.families(), openmetrics=False)
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def simulated(tmp_path, text: str) -> tuple[FlakyGpus, NodeMetrics]:
    sim = tmp_path / "sim.toml"
    sim.write_text(text)
    backend = SimulatedBackend(str(sim))
    backend.open()
    gpus = FlakyGpus(backend)
    metrics = NodeMetrics(
        CollectorRegistry(),
        MetricsSection(min_collect_interval_seconds=0, hostname="node-a"),
        gpu=cast(GpuService, gpus),
    )
    return gpus, metrics


async def test_a_failing_gpu_inventory_serves_the_previous_reading(tmp_path):
    gpus, metrics = simulated(tmp_path, simulation_toml())
    await metrics.refresh()
    first = samples(metrics)
    gpu_series = {k for k in first if ("UUID", GPU0) in k[1]}
    assert gpu_series, sorted(first)[:20]
    gpus.fail = True
    await metrics.refresh()  # raised out of the scrape before
    second = samples(metrics)
    assert gpu_series <= set(second)
    errors = (names.METRICS_COLLECT_ERRORS_TOTAL, (("collector", "gpus"),))
    assert second[errors] == 1


@pytest.mark.skipif(not os.path.exists(PROMTOOL), reason="promtool is not installed")
async def test_simulated_pcie_replays_are_exported_and_promtool_names_the_dcgm_counter(tmp_path):
    text = simulation_toml().replace(
        "gpu_temp_c = 41\n", "gpu_temp_c = 41\npcie_replay_count = 3\n"
    )
    _, metrics = simulated(tmp_path, text)
    await metrics.refresh()
    read = samples(metrics)
    gpu0 = {k[0]: v for k, v in read.items() if ("UUID", GPU0) in k[1]}
    assert gpu0["DCGM_FI_DEV_PCIE_REPLAY_COUNTER"] == 3
    assert gpu0["model_agent_gpu_pcie_replays_total"] == 3
    _, complaints = promtool_check_metrics(render(metrics.families(), openmetrics=False))
    reasons = {line.split(" ", 1)[1] for line in complaints}
    assert reasons == names.DCGM_LINT_EXCEPTIONS, complaints
