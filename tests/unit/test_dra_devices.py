"""The DRA driver's pool: device names, NVIDIA's attribute names, taints — and the slices
it builds, checked against the Kubernetes 1.36 schemas (``kubernetes-validate``) and the
API server's own ResourceSlice rules."""

from __future__ import annotations

import pytest

from agent.gpu.backend import BackendStatus, DriverInfo, GpuInfo, MigInfo
from agent.gpu.cdi.claimspec import CLAIM_KIND, claim_device_name, claim_spec
from agent.gpu.cdi.spec import ContainerEdits, Device, DeviceNode, Spec
from agent.gpu.dra.devices import binary_quantity, dra_devices, semver, slice_device
from agent.gpu.dra.kube import ResourceApi
from agent.gpu.dra.slices import MAX_DEVICES_PER_SLICE, SlicePublisher
from agent.gpu.health import DeviceHealth
from agent.gpu.inventory import Inventory
from tests.support.apiserver_validation import check_resource_slice, check_schema

DRIVER = DriverInfo(driver_version="535.104.05", cuda_driver_version="12.2")
H100 = GpuInfo(
    0,
    "GPU-0000",
    name="NVIDIA H100 80GB HBM3",
    brand="Nvidia",
    memory_total=81559 * 1024 * 1024,
    minor=0,
    pci_bus_id="00000000:18:00.0",
    numa_node=0,
    architecture="Hopper",
    cuda_compute_capability="9.0",
)
MIG = MigInfo(
    0, "MIG-aaaa", 7, 0, "1g.10gb", memory_total=9984 * 1024 * 1024, multiprocessor_count=16
)
A100 = GpuInfo(
    1,
    "GPU-1111",
    name="NVIDIA A100-SXM4-40GB",
    brand="Nvidia",
    memory_total=40 * 1024**3,
    minor=1,
    pci_bus_id="00000000:2A:00.0",
    architecture="Ampere",
    cuda_compute_capability="8.0",
    mig_mode="enabled",
    mig_devices=(MIG,),
)
INVENTORY = Inventory(BackendStatus("simulated", True), DRIVER, (H100, A100))


def no_api() -> ResourceApi:
    raise AssertionError("building slices needs no API server")


def offline_publisher() -> SlicePublisher:
    return SlicePublisher(no_api, driver="gpu.model-agent.io", node="node-a", retry_max=1)


def resource_slice(devices: list[dict[str, object]]) -> dict[str, object]:
    publisher = offline_publisher()
    publisher._devices = devices  # what set_devices would store, without an event loop
    [body] = publisher.wanted()
    return body


def valid(body: dict[str, object]) -> None:
    assert check_schema(body) == []
    assert check_resource_slice(body) == []


def test_gpus_whole_and_mig_devices_instead_of_their_parent():
    names = [d.name for d in dra_devices(INVENTORY, {H100.uuid, A100.uuid}, 1)]
    assert names == ["gpu-0", "gpu-1-mig-7-0"]
    assert [d.name for d in dra_devices(INVENTORY, {A100.uuid}, 1)] == ["gpu-1-mig-7-0"]


def test_nvidias_attribute_and_capacity_names():
    [gpu, mig] = dra_devices(INVENTORY, {H100.uuid, A100.uuid}, 1)
    entry = slice_device(gpu, DRIVER, None)
    attrs = entry["attributes"]
    assert attrs["type"] == {"string": "gpu"}
    assert attrs["uuid"] == {"string": "GPU-0000"}
    assert attrs["index"] == {"int": 0} and attrs["minor"] == {"int": 0}
    assert attrs["productName"] == {"string": "NVIDIA H100 80GB HBM3"}
    assert attrs["brand"] == {"string": "Nvidia"}
    assert attrs["architecture"] == {"string": "Hopper"}
    assert attrs["cudaComputeCapability"] == {"version": "9.0.0"}
    assert attrs["driverVersion"] == {"version": "535.104.5"}
    assert attrs["cudaDriverVersion"] == {"version": "12.2.0"}
    assert attrs["pcieBusID"] == {"string": "0000:18:00.0"}
    assert attrs["resource.kubernetes.io/pciBusID"] == {"string": "0000:18:00.0"}
    assert entry["capacity"] == {"memory": {"value": "81559Mi"}}
    assert "taints" not in entry
    mig_entry = slice_device(mig, DRIVER, None)
    mig_attrs = mig_entry["attributes"]
    assert mig_attrs["type"] == {"string": "mig"}
    assert mig_attrs["uuid"] == {"string": "MIG-aaaa"}
    assert mig_attrs["parentUUID"] == {"string": "GPU-1111"}
    assert mig_attrs["parentIndex"] == {"int": 1} and mig_attrs["parentMinor"] == {"int": 1}
    assert mig_attrs["profile"] == {"string": "1g.10gb"}
    assert mig_entry["capacity"] == {
        "memory": {"value": "9984Mi"},
        "multiprocessors": {"value": "16"},
    }
    valid(resource_slice([entry, mig_entry]))


def test_replicas_for_time_slicing():
    devices = dra_devices(INVENTORY, {H100.uuid}, 3)
    assert [d.name for d in devices] == ["gpu-0-replica-0", "gpu-0-replica-1", "gpu-0-replica-2"]
    entries = [slice_device(d, DRIVER, None) for d in devices]
    assert [e["attributes"]["replica"] for e in entries] == [{"int": r} for r in range(3)]
    assert {e["attributes"]["uuid"]["string"] for e in entries} == {"GPU-0000"}
    valid(resource_slice(entries))


@pytest.mark.parametrize(
    ("health", "taint"),
    [
        (
            DeviceHealth("GPU-0000", 0, False, "xid", 63, "XID 63", since=1.7e9),
            {"key": "gpu.model-agent.io/xid", "value": "63", "effect": "NoSchedule"},
        ),
        (
            DeviceHealth("GPU-0000", 0, False, "xid", 79, "XID 79", since=1.7e9, needs_reset=True),
            {"key": "gpu.model-agent.io/xid", "value": "79", "effect": "NoExecute"},
        ),
        (
            DeviceHealth(
                "GPU-0000", 0, False, "gpu-lost", 0, "lost", since=1.7e9, needs_reset=True
            ),
            {"key": "gpu.model-agent.io/gpu-lost", "value": "", "effect": "NoExecute"},
        ),
        (
            DeviceHealth("GPU-0000", 0, False, "ecc", 0, "dbe", since=1.7e9, needs_reset=True),
            {"key": "gpu.model-agent.io/ecc", "value": "uncorrectable", "effect": "NoExecute"},
        ),
        (
            DeviceHealth("GPU-0000", 0, False, "nvml-error", 0, "Unknown Error", since=1.7e9),
            {"key": "gpu.model-agent.io/unhealthy", "value": "nvml-error", "effect": "NoSchedule"},
        ),
    ],
)
def test_unhealthy_devices_are_tainted(health, taint):
    [gpu] = dra_devices(INVENTORY, {H100.uuid}, 1)
    entry = slice_device(gpu, DRIVER, health)
    assert entry["taints"] == [taint | {"timeAdded": "2023-11-14T22:13:20Z"}]
    valid(resource_slice([entry]))


def test_many_devices_split_into_slices_of_one_pool():
    publisher = offline_publisher()
    [gpu] = dra_devices(INVENTORY, {H100.uuid}, 1)
    entry = slice_device(gpu, DRIVER, None)
    publisher._devices = [entry | {"name": f"gpu-{i}"} for i in range(MAX_DEVICES_PER_SLICE + 1)]
    bodies = publisher.wanted(generation=3)
    assert [b["metadata"]["name"] for b in bodies] == [
        "node-a-gpu.model-agent.io-0",
        "node-a-gpu.model-agent.io-1",
    ]
    assert {
        (b["spec"]["pool"]["generation"], b["spec"]["pool"]["resourceSliceCount"]) for b in bodies
    } == {(3, 2)}
    for body in bodies:
        valid(body)


def test_versions_and_quantities():
    assert semver("550.54.15") == "550.54.15"
    assert semver("12.4") == "12.4.0" and semver("9") == "9.0.0"
    assert semver("") is None and semver("550.54.15.1") is None and semver("r550") is None
    assert binary_quantity(80 * 1024**3) == "80Gi"
    assert binary_quantity(1536) == "1536" and binary_quantity(0) == "0"


def test_a_claim_spec_reuses_the_node_specs_edits():
    gpu_node = DeviceNode("/dev/nvidia1")
    node_edits = ContainerEdits(
        env=("NVIDIA_VISIBLE_DEVICES=void",), device_nodes=(DeviceNode("/dev/nvidiactl"),)
    )
    node = Spec(
        "0.6.0",
        "nvidia.com/gpu",
        (Device("GPU-1111", ContainerEdits(device_nodes=(gpu_node,))),),
        node_edits,
    )
    spec = claim_spec("0d3b7f8e-uid", [("gpu-1", "GPU-1111")], node)
    assert spec.kind == CLAIM_KIND == "k8s.gpu.model-agent.io/claim"
    assert [(d.name, d.edits.device_nodes) for d in spec.devices] == [
        ("0d3b7f8e-uid-gpu-1", (gpu_node,))
    ]
    assert spec.edits == node_edits
    assert (
        claim_device_name("0d3b7f8e-uid", "gpu-1")
        == "k8s.gpu.model-agent.io/claim=0d3b7f8e-uid-gpu-1"
    )
    with pytest.raises(LookupError, match="GPU-9999"):
        claim_spec("u", [("gpu-9", "GPU-9999")], node)
