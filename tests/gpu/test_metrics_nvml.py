"""Real NVML through the metrics path: one scrape's reading and the GPU families it makes.

Skipped, with the reason, where NVML finds no GPU (``tests/gpu/conftest.py``). Read-only:
the same calls a scrape makes (samples, processes, per-process utilisation, GPM). Needs
only ``gpu``, ``db`` and ``prometheus_client`` of the agent's imports (tests/gpu/run.sh
brings the wheel).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.gpu.backend import GpuBackend
from agent.gpu.inventory import Inventory
from agent.metrics import names
from agent.metrics.exposition import render
from agent.metrics.gpu import GpuFamilyOptions, gpu_families
from agent.metrics.gpu_reading import GpuReader

pytestmark = pytest.mark.gpu

MIB = 1024 * 1024


def scrape(reader: GpuReader, nvml: GpuBackend) -> tuple[str, dict[str, list[Any]]]:
    reading = reader.attribute(reader.read(nvml, Inventory.read(nvml)), (), {})
    text = render(
        gpu_families(reading, {}, {}, {}, GpuFamilyOptions("gpu-node")), openmetrics=False
    )
    by_name: dict[str, list[Any]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            by_name.setdefault(sample.name, []).append(sample)
    return text, by_name


def test_a_scrape_reads_every_gpu_in_both_names(nvml: GpuBackend):
    reader = GpuReader(None)
    inventory = Inventory.read(nvml)
    started = time.monotonic()
    _, first = scrape(reader, nvml)
    elapsed = time.monotonic() - started
    assert elapsed < 5, f"one reading of {len(inventory.gpus)} GPUs took {elapsed:.1f}s"
    time.sleep(1.0)
    text, second = scrape(reader, nvml)
    for gpu in inventory.gpus:
        if gpu.state != "ok":
            continue
        mine = {"gpu": str(gpu.index), "GPU_I_ID": ""}

        def one(
            name: str, found: dict[str, list[Any]] = second, labels: dict[str, str] = mine
        ) -> float:
            hits = [
                s for s in found.get(name, []) if all(s.labels[k] == v for k, v in labels.items())
            ]
            assert len(hits) == 1, (name, labels, hits)
            return float(hits[0].value)

        assert one(names.GPU_HEALTHY) == 1
        total = one("model_agent_gpu_memory_total_bytes")
        assert total == gpu.memory_total > 0
        used_mib = one("DCGM_FI_DEV_FB_USED")
        assert 0 <= used_mib * MIB <= total
        assert 0 <= one("DCGM_FI_DEV_GPU_TEMP") < 120
        assert 0 < one("DCGM_FI_DEV_SM_CLOCK") < 5000
        assert one("model_agent_gpu_power_watts") > 0
        if gpu.mig_mode != "enabled":
            assert 0 <= one("DCGM_FI_DEV_GPU_UTIL") <= 100
        energy = [
            one("model_agent_gpu_energy_joules_total", first),
            one("model_agent_gpu_energy_joules_total"),
        ]
        assert energy[1] > energy[0] >= 0  # a second at > 0 W
        if gpu.gpm_supported and gpu.mig_mode != "enabled":
            # Hopper: GPM gives the profiling fields from the second reading on.
            assert 0 <= one("DCGM_FI_PROF_SM_ACTIVE") <= 1
            assert 0 <= one("model_agent_gpu_tensor_active_ratio") <= 1
        for mig in gpu.mig_devices:
            labels = {"gpu": str(gpu.index), "GPU_I_ID": str(mig.gpu_instance_id)}
            assert one("DCGM_FI_DEV_FB_USED", labels=labels) >= 0
            assert one(names.GPU_PROCESS_UTILIZATION_SUPPORTED, labels=labels) == 0
    promtool = shutil.which("promtool")
    if promtool is not None:
        done = subprocess.run(
            [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
        )
        reasons = {
            line.split(" ", 1)[1]
            for line in (done.stdout + done.stderr).splitlines()
            if " " in line
        }
        assert reasons <= names.DCGM_LINT_EXCEPTIONS, done.stdout + done.stderr
