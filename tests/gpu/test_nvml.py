"""Real NVML: the inventory matches ``nvidia-smi -q``, and every reading works on this GPU.

Skipped, with the reason, where NVML finds no GPU. Never changes GPU state
(no MIG mode changes, no clocks, no resets): read-only calls only.
"""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET

import pytest

from agent.gpu.backend import GpuBackend
from agent.gpu.inventory import Inventory
from tests.support.nvidia_host import nvidia_smi

pytestmark = pytest.mark.gpu

MIB = 1024 * 1024


def smi_xml() -> ET.Element:
    done = nvidia_smi("-q", "-x")
    if done.returncode != 0:
        pytest.skip(f"nvidia-smi -q -x failed: {done.stderr.strip() or done.stdout.strip()}")
    return ET.fromstring(done.stdout)


def text(element: ET.Element, path: str) -> str:
    found = element.find(path)
    return (found.text or "").strip() if found is not None else ""


def test_inventory_matches_nvidia_smi(nvml: GpuBackend):
    inventory = Inventory.read(nvml)
    root = smi_xml()
    assert text(root, "driver_version") == inventory.driver.driver_version
    cuda = text(root, "cuda_version")
    assert cuda == inventory.driver.cuda_driver_version, (cuda, inventory.driver)
    smi_gpus = root.findall("gpu")
    assert len(smi_gpus) == len(inventory.gpus) == int(text(root, "attached_gpus"))
    by_uuid = {g.uuid: g for g in inventory.gpus}
    for element in smi_gpus:
        uuid = text(element, "uuid")
        ours = by_uuid[uuid]
        assert ours.state == "ok", ours.error
        assert ours.name == text(element, "product_name")
        assert ours.minor == int(text(element, "minor_number"))
        assert ours.pci_bus_id.lower() == (element.get("id") or "").lower()
        total_mib = int(text(element, "fb_memory_usage/total").split()[0])
        assert abs(ours.memory_total / MIB - total_mib) <= max(2, total_mib * 0.01)
        arch = text(element, "product_architecture")
        if arch:
            assert ours.architecture.split()[0] == arch.split()[0]
        mig = text(element, "mig_mode/current_mig").lower()
        if mig in ("enabled", "disabled"):
            assert ours.mig_mode == mig
            smi_migs = element.findall("mig_devices/mig_device")
            assert len(ours.mig_devices) == len(smi_migs)
        else:
            assert ours.mig_mode == "unsupported"
        assert ours.cuda_compute_capability.count(".") == 1


def test_the_inventory_has_what_the_dra_driver_publishes(nvml: GpuBackend):
    for gpu in Inventory.read(nvml).gpus:
        assert gpu.uuid.startswith("GPU-") and gpu.brand and gpu.architecture
        assert gpu.memory_total > 0 and gpu.minor is not None
        assert gpu.pci_bus_id.count(":") == 2


def test_samples_processes_and_utilisation(nvml: GpuBackend):
    samples = nvml.samples()
    gpus = [s for s in samples if not s.parent_uuid]
    assert len(gpus) == nvml.status().gpu_count
    for sample in gpus:
        assert sample.state == "ok", sample.errors
        assert sample.memory_total and sample.memory_total > 0
        assert sample.memory_used is not None and sample.memory_free is not None
        assert sample.gpu_temp_c is not None and 0 < sample.gpu_temp_c < 120
        assert sample.power_watts is None or sample.power_watts > 0
        assert sample.sm_clock_mhz is None or sample.sm_clock_mhz >= 0
        assert set(sample.errors) <= {"memory_temp_c", "pcie_replay_count"}, sample.errors
    for process in nvml.processes():
        assert process.pid > 0 and process.gpu_uuid.startswith("GPU-")
    since = int((time.time() - 10) * 1_000_000)
    for util in nvml.process_utilization(since):
        assert util.timestamp_us > since and 0 <= util.sm_util <= 100


def test_gpm_on_gpus_that_have_it(nvml: GpuBackend):
    supported = [g for g in Inventory.read(nvml).gpus if g.gpm_supported]
    if not supported:
        pytest.skip("no GPU here supports GPM (Hopper and later do)")
    nvml.gpm_samples()  # primes the buffers (values need two samples)
    time.sleep(0.2)
    samples = nvml.gpm_samples()
    assert {s.uuid for s in samples} >= {g.uuid for g in supported if g.mig_mode != "enabled"}
    for sample in samples:
        assert sample.interval_seconds > 0
        assert "sm_active" in sample.metrics and 0 <= sample.metrics["sm_active"] <= 100


def test_the_event_wait_works_and_closes(nvml: GpuBackend):
    stream = nvml.open_events()
    start = time.monotonic()
    events = stream.wait(0.5)
    assert time.monotonic() - start < 5
    for event in events:  # an idle GPU normally has none; any that came must be well-formed
        assert event.kind in ("xid", "ecc_single", "ecc_double", "gpu_lost", "error")
    stream.close()
    assert stream.wait(0.1) == []
