"""GPU metric families from readings made here, PID → container mapping on a fake /proc,
the simulated backend read through ``GpuReader``, and the XID tracker."""

from __future__ import annotations

import os
import tomllib
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.db import DraPreparedDevice, GpuHolder, MetadataDB
from agent.gpu.backend import (
    STATE_LOST,
    BackendStatus,
    DriverInfo,
    GpmSample,
    GpuEvent,
    GpuInfo,
    GpuProcess,
    GpuSample,
    MigInfo,
)
from agent.gpu.inventory import Inventory
from agent.gpu.simulated import SimulatedBackend
from agent.metrics import names
from agent.metrics.exposition import Family, render
from agent.metrics.gpu import ContainerRef, GpuFamilyOptions, gpu_families
from agent.metrics.gpu_reading import GpuReader, GpuReading, XidTracker, container_of_pid
from tests.support.gpu_node import GPU0, GPU1, MIG0, simulation_toml

MIB = 1024 * 1024
OPTIONS = GpuFamilyOptions(hostname="node-a")

GPU_A = GpuInfo(
    index=0,
    uuid="GPU-a",
    name="NVIDIA H200",
    minor=0,
    pci_bus_id="00000000:18:00.0",
    architecture="Hopper",
    gpm_supported=True,
)
MIG_B = MigInfo(index=0, uuid="MIG-b0", gpu_instance_id=3, compute_instance_id=0, profile="1g.18gb")
GPU_B = GpuInfo(
    index=1, uuid="GPU-b", name="NVIDIA H200", minor=1, mig_mode="enabled", mig_devices=(MIG_B,)
)


def inventory(*gpus: GpuInfo) -> Inventory:
    return Inventory(
        BackendStatus("test", True, gpu_count=len(gpus)), DriverInfo("560.1"), tuple(gpus)
    )


def holder(cid: str, device: str, *, pod: str = "p", container: str = "c", **kw: Any) -> GpuHolder:
    values = {
        "container_id": cid,
        "sandbox_id": f"s-{pod}",
        "pod_namespace": "ns",
        "pod_name": pod,
        "pod_uid": f"u-{pod}",
        "container_name": container,
        "device_uuid": device,
        "gpu_uuid": device,
        "device_index": "0",
        "mig_profile": "",
        "via": "cdi",
        "request": "nvidia.com/gpu=0",
        **kw,
    }
    return GpuHolder(**values)


def parsed(found: list[Family]) -> dict[str, Any]:
    """The families rendered as Prometheus text and parsed back by prometheus_client."""
    text = render(found, openmetrics=False)
    return {f.name: f for f in text_string_to_metric_families(text)}


def families(reading: GpuReading, refs: dict[str, ContainerRef], **kw: Any) -> dict[str, Any]:
    return parsed(gpu_families(reading, refs, {}, {}, kw.pop("options", OPTIONS), **kw))


def series(found: dict[str, Any], name: str, **labels: str) -> list[Any]:
    family = found.get(name.removesuffix("_total"), found.get(name))
    if family is None:
        return []
    return [
        s
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    ]


def ref(pod: str, container: str, live: bool = True) -> ContainerRef:
    return ContainerRef("ns", pod, container, live)


def test_device_readings_in_both_units_with_the_holder():
    reading = GpuReading(
        inventory(GPU_A),
        samples={
            "GPU-a": GpuSample(
                "GPU-a",
                "0",
                gpu_util=75,
                memory_used=2048 * MIB,
                memory_total=80 * 1024 * MIB,
                energy_joules=12.5,
                sm_clock_mhz=1980,
                remapped_rows_correctable=2,
            )
        },
        gpm={"GPU-a": GpmSample("GPU-a", "0", 1.0, {"tensor_active": 35.0})},
        holders=(holder("c1", "GPU-a", pod="llm"),),
    )
    found = families(reading, {"c1": ref("llm", "c")})
    (util,) = series(found, "DCGM_FI_DEV_GPU_UTIL")
    assert util.value == 75
    assert {k: util.labels[k] for k in ("gpu", "UUID", "device", "modelName", "Hostname")} == {
        "gpu": "0",
        "UUID": "GPU-a",
        "device": "nvidia0",
        "modelName": "NVIDIA H200",
        "Hostname": "node-a",
    }
    assert (util.labels["namespace"], util.labels["pod"], util.labels["container"]) == (
        "ns",
        "llm",
        "c",
    )
    assert util.labels["DCGM_FI_DRIVER_VERSION"] == "560.1"
    assert series(found, "model_agent_gpu_utilization_ratio")[0].value == 0.75
    assert series(found, "DCGM_FI_DEV_FB_USED")[0].value == 2048
    assert series(found, "model_agent_gpu_memory_used_bytes")[0].value == 2048 * MIB
    assert series(found, "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION")[0].value == 12500  # mJ
    assert series(found, "model_agent_gpu_energy_joules_total")[0].value == 12.5
    assert series(found, "model_agent_gpu_sm_clock_hertz")[0].value == 1.98e9
    assert series(found, "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE")[0].value == pytest.approx(0.35)
    (rows,) = series(found, "model_agent_gpu_remapped_rows_total", error_type="correctable")
    assert rows.value == 2
    # DCGM's counters keep their names (untyped); the agent's own are real counters.
    assert found["DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"].type == "unknown"
    assert found["model_agent_gpu_energy_joules"].type == "counter"
    assert "model_name" in series(found, "model_agent_gpu_healthy")[0].labels
    # Values the device lacks are absent, not zero.
    assert series(found, "DCGM_FI_DEV_POWER_USAGE") == []
    assert series(found, "model_agent_gpu_healthy")[0].value == 1


def test_holder_labels_of_shared_and_exited_holders():
    reading = GpuReading(
        inventory(GPU_A, GpuInfo(index=1, uuid="GPU-c", minor=1), GpuInfo(index=2, uuid="GPU-d")),
        samples={u: GpuSample(u, "0", gpu_util=1) for u in ("GPU-a", "GPU-c", "GPU-d")},
        holders=(
            holder("c1", "GPU-a", pod="one", container="main"),
            holder("c2", "GPU-a", pod="one", container="sidecar"),
            holder("c3", "GPU-c", pod="two"),
            holder("c4", "GPU-c", pod="three"),
            holder("c5", "GPU-d", pod="gone"),
        ),
    )
    refs = {
        "c1": ref("one", "main"),
        "c2": ref("one", "sidecar"),
        "c3": ref("two", "c"),
        "c4": ref("three", "c"),
        "c5": ref("gone", "c", live=False),
    }
    found = families(reading, refs)

    def holder_of(gpu: str) -> tuple[str, str, str]:
        (s,) = series(found, "DCGM_FI_DEV_GPU_UTIL", gpu=gpu)
        return s.labels["namespace"], s.labels["pod"], s.labels["container"]

    assert holder_of("0") == ("ns", "one", "")  # two containers of one pod: the pod
    assert holder_of("1") == ("", "", "")  # two pods: no one's
    assert holder_of("2") == ("", "", "")  # an exited container holds nothing


def test_dra_labels_join_the_holders_cdi_name():
    prepared = DraPreparedDevice(
        "uid",
        "ns",
        "claim-a",
        "gpu.model-agent.io",
        "pool-a",
        "gpu-0",
        "req",
        "k8s.gpu.model-agent.io/claim=uid-gpu-0",
        "GPU-a",
        False,
        1,
    )
    reading = GpuReading(
        inventory(GPU_A),
        samples={"GPU-a": GpuSample("GPU-a", "0", gpu_util=1)},
        holders=(holder("c1", "GPU-a", request="k8s.gpu.model-agent.io/claim=uid-gpu-0"),),
        dra_by_cdi={prepared.cdi_device: prepared},
    )
    (util,) = series(families(reading, {"c1": ref("p", "c")}), "DCGM_FI_DEV_GPU_UTIL")
    assert [util.labels[k] for k in names.DRA_LABELS] == [
        "claim-a",
        "ns",
        "gpu.model-agent.io",
        "pool-a",
        "gpu-0",
    ]
    # The same name asked for through an env variable is no claim.
    env_holder = holder("c1", "GPU-a", via="env", request=prepared.cdi_device)
    reading = GpuReading(
        reading.inventory,
        samples=reading.samples,
        holders=(env_holder,),
        dra_by_cdi=reading.dra_by_cdi,
    )
    (util,) = series(families(reading, {"c1": ref("p", "c")}), "DCGM_FI_DEV_GPU_UTIL")
    assert util.labels["dra_claim_name"] == ""


def test_per_container_use_and_mig_without_per_process_utilisation():
    reading = GpuReading(
        inventory(GPU_A, GPU_B),
        samples={
            "GPU-a": GpuSample("GPU-a", "0", gpu_util=90),
            "MIG-b0": GpuSample("MIG-b0", "1:0", parent_uuid="GPU-b", memory_used=MIB),
        },
        processes=(
            GpuProcess("GPU-a", 10, used_memory=100 * MIB),
            GpuProcess("GPU-a", 11, used_memory=50 * MIB),  # a second process of c1
            GpuProcess("GPU-a", 20, used_memory=300 * MIB),
            GpuProcess("GPU-a", 30, used_memory=7 * MIB),  # no container of ours
            GpuProcess("GPU-a", 40, used_memory=None),  # the driver cannot say
            GpuProcess("GPU-b", 50, used_memory=200 * MIB, mig_uuid="MIG-b0", gpu_instance_id=3),
        ),
        utilization={("GPU-a", 10): 20.0, ("GPU-a", 11): 5.0, ("GPU-a", 20): 60.0},
        pid_containers={10: "c1", 11: "c1", 20: "c2", 40: "c3", 50: "c4"},
    )
    refs = {
        "c1": ref("a", "x"),
        "c2": ref("b", "y"),
        "c3": ref("c", "z"),
        "c4": ref("d", "w"),
    }
    found = families(reading, refs)
    memory = {
        s.labels["pod"]: s.value for s in series(found, names.GPU_CONTAINER_MEMORY_USED_BYTES)
    }
    assert memory == {"a": 150 * MIB, "b": 300 * MIB, "d": 200 * MIB}  # c3: unknown, absent
    util = {s.labels["pod"]: s.value for s in series(found, names.GPU_CONTAINER_UTILIZATION_RATIO)}
    assert util == {"a": pytest.approx(0.25), "b": pytest.approx(0.6), "c": 0.0}  # no MIG "d"
    processes = {s.labels["pod"]: s.value for s in series(found, names.GPU_CONTAINER_PROCESSES)}
    assert processes == {"a": 2, "b": 1, "c": 1, "d": 1}
    (mig_memory,) = [
        s for s in series(found, names.GPU_CONTAINER_MEMORY_USED_BYTES) if s.labels["pod"] == "d"
    ]
    assert (mig_memory.labels["GPU_I_ID"], mig_memory.labels["GPU_I_PROFILE"]) == ("3", "1g.18gb")
    assert mig_memory.labels["UUID"] == "GPU-b" and mig_memory.labels["gpu"] == "1"
    (other,) = series(found, names.GPU_UNATTRIBUTED_MEMORY_USED_BYTES)
    assert other.value == 7 * MIB
    supported = {
        s.labels["GPU_I_ID"]: s.value
        for s in series(found, names.GPU_PROCESS_UTILIZATION_SUPPORTED)
    }
    assert supported == {"": 1.0, "3": 0.0}
    # A MIG device has readings of its own, and no health series (the GPU has it).
    assert series(found, "DCGM_FI_DEV_FB_USED", GPU_I_ID="3")[0].value == 1
    assert [s.labels["gpu"] for s in series(found, names.GPU_HEALTHY)] == ["0", "1"]


def test_without_dcgm_names_and_a_lost_gpu():
    lost = GpuInfo(index=0, uuid="GPU-a", minor=0, state=STATE_LOST)
    reading = GpuReading(
        inventory(lost), samples={"GPU-a": GpuSample("GPU-a", "0", state=STATE_LOST)}
    )
    found = families(reading, {}, options=GpuFamilyOptions(hostname="n", dcgm_names=False))
    assert not [name for name in found if name.startswith("DCGM_")]
    assert series(found, names.GPU_HEALTHY)[0].value == 0
    (info,) = series(found, names.GPU_INFO)
    assert info.labels["device_uuid"] == "GPU-a"


def test_a_gpu_the_health_monitor_marked_unhealthy_is_unhealthy_here_too():
    ok = GpuInfo(index=0, uuid="GPU-a", minor=0)
    other = GpuInfo(index=1, uuid="GPU-b", minor=1)
    reading = GpuReading(inventory(ok, other), unhealthy=frozenset({"GPU-b"}))
    found = families(reading, {}, options=GpuFamilyOptions(hostname="n", dcgm_names=False))
    health = {s.labels["UUID"]: s.value for s in series(found, names.GPU_HEALTHY)}
    assert health == {"GPU-a": 1.0, "GPU-b": 0.0}


def test_xids_last_value_and_counts():
    tracker = XidTracker()
    tracker.observe(
        [
            GpuEvent("xid", "GPU-a", xid=31),
            GpuEvent("xid", "GPU-a", xid=79),
            GpuEvent("xid", "GPU-a", xid=79),
            GpuEvent("ecc_double", "GPU-a"),
            GpuEvent("error"),
        ]
    )
    assert tracker.last() == {"GPU-a": 79}
    assert tracker.counts() == {("GPU-a", 31): 1, ("GPU-a", 79): 2}
    reading = GpuReading(inventory(GPU_A), samples={"GPU-a": GpuSample("GPU-a", "0")})
    found = parsed(gpu_families(reading, {}, tracker.last(), tracker.counts(), OPTIONS))
    assert series(found, "DCGM_FI_DEV_XID_ERRORS")[0].value == 79
    counts = {s.labels["xid"]: s.value for s in series(found, names.GPU_XID_ERRORS_TOTAL)}
    assert counts == {"31": 1, "79": 2}


def write_proc(root: str, pid: int, text: str) -> None:
    os.makedirs(os.path.join(root, str(pid)), exist_ok=True)
    with open(os.path.join(root, str(pid), "cgroup"), "w") as f:
        f.write(text)


def test_pids_map_to_containers_through_their_cgroup(tmp_path):
    root = str(tmp_path)
    cid = "a" * 64
    other = "b" * 64
    write_proc(root, 1, f"12:memory:/kubepods/pod1/{cid}\n11:cpu,cpuacct:/kubepods/pod1/{cid}\n")
    write_proc(root, 2, f"0::/kubepods.slice/kubepods-pod1.slice/model-agent-{cid}.scope\n")
    write_proc(root, 3, f"0::/kubepods/pod1/{cid}/worker\n")  # a sub-cgroup of the container
    write_proc(root, 4, f"0::/kubepods/pod2/{other}\n")  # a container we do not know
    write_proc(root, 5, "0::/user.slice/session-1.scope\n")
    known = {cid}
    assert [container_of_pid(pid, known, root) for pid in (1, 2, 3, 4, 5, 6)] == [
        cid,
        cid,
        cid,
        None,
        None,
        None,  # no such process
    ]


def test_reader_batches_the_simulated_backend_and_the_record(tmp_path):
    sim = tmp_path / "sim.toml"
    processes = f"""
[[processes]]
gpu = "{GPU0}"
pid = 4242
used_memory_mib = 512
sm_util = [30, 50]
[[processes]]
gpu = "{GPU1}"
mig = "{MIG0}"
pid = 4343
used_memory_mib = 64
"""
    sim.write_text(simulation_toml(mig=True, processes=processes))
    tomllib.loads(sim.read_text())  # the file is what the README documents
    backend = SimulatedBackend(str(sim))
    backend.open()
    db = MetadataDB(str(tmp_path / "metadata.db"))
    proc = str(tmp_path / "proc")
    write_proc(proc, 4242, "0::/pods/" + "c" * 64 + "\n")
    reader = GpuReader(db, proc)
    try:
        first = reader.read(backend, Inventory.read(backend))
        assert first.pid_containers == {}  # attributed next, once the cgroups were read
        assert reader.needs_proc(first, {})
        first = reader.attribute(first, {"c" * 64}, {})
        assert set(first.samples) == {GPU0, GPU1, MIG0}
        assert {p.pid for p in first.processes} == {4242, 4343}
        assert first.pid_containers == {4242: "c" * 64}
        assert first.utilization == {(GPU0, 4242): 30.0}  # none on the MIG device
        assert first.gpm == {}  # the first GPM read primes
        assert first.holders == () and first.dra_by_cdi == {}
        second = reader.read(backend, Inventory.read(backend))
        assert second.utilization == {(GPU0, 4242): 50.0}  # only samples since the last read
        assert set(second.gpm) == {GPU0}
        # PIDs the scrape found in the containers' cgroup.procs need no /proc read:
        # 4343 has no /proc entry here, 4242's would say container c.
        listed = {4343: "d" * 64, 4242: "e" * 64}
        assert not reader.needs_proc(second, listed)
        third = reader.attribute(second, {"c" * 64, "d" * 64, "e" * 64}, listed)
        assert third.pid_containers == listed
        # A listed container that is not (or no longer) known: /proc decides.
        fourth = reader.attribute(second, {"c" * 64, "d" * 64}, listed)
        assert fourth.pid_containers == {4343: "d" * 64, 4242: "c" * 64}
    finally:
        db.close()
