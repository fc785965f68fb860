"""The device plugin's pure parts: resources per MIG strategy, replica ids, the kubelet
path split, allocation tokens in the database, and the config that drives them."""

from __future__ import annotations

import dataclasses

import pytest

from agent.config import GpuSection, load
from agent.db import MetadataDB
from agent.errors import ConfigError
from agent.gpu.backend import STATE_LOST, BackendStatus, DriverInfo, GpuInfo, MigInfo
from agent.gpu.deviceplugin.resources import plugin_resources, socket_name
from agent.gpu.deviceplugin.tokens import ALLOCATION_ENV, POD_UID_LABEL, AllocationTokens
from agent.gpu.inventory import Inventory
from agent.gpu.kubelet_split import kubelet_paths

MIG_A = MigInfo(0, "MIG-a", 7, 0, "1g.10gb")
MIG_B = MigInfo(1, "MIG-b", 8, 0, "2g.20gb")
GPUS = (
    GpuInfo(0, "GPU-0", minor=0, numa_node=0),
    GpuInfo(1, "GPU-1", minor=1, numa_node=1, mig_mode="enabled", mig_devices=(MIG_A, MIG_B)),
    GpuInfo(2, "GPU-2", minor=2, state=STATE_LOST),
)
INVENTORY = Inventory(BackendStatus("simulated", True), DriverInfo(), GPUS)
ALL = {"GPU-0", "GPU-1", "GPU-2"}


def resources(strategy: str, replicas: int = 1) -> dict[str, list[str]]:
    found = plugin_resources(
        INVENTORY, ALL, resource_name="nvidia.com/gpu", mig_strategy=strategy, replicas=replicas
    )
    return {r.name: [d.id for d in r.devices] for r in found}


def test_mig_strategies():
    assert resources("none") == {"nvidia.com/gpu": ["GPU-0"]}
    assert resources("single") == {"nvidia.com/gpu": ["GPU-0", "MIG-a", "MIG-b"]}
    assert resources("mixed") == {
        "nvidia.com/gpu": ["GPU-0"],
        "nvidia.com/mig-1g.10gb": ["MIG-a"],
        "nvidia.com/mig-2g.20gb": ["MIG-b"],
    }
    assert socket_name("nvidia.com/mig-1g.10gb") == "model-agent-nvidia.com-mig-1g.10gb.sock"


def test_replicas_use_nvidias_time_slicing_ids():
    assert resources("none", replicas=2) == {"nvidia.com/gpu": ["GPU-0::0", "GPU-0::1"]}


def split(**gpu: object) -> dict[str, str]:
    return kubelet_paths(GpuSection(**gpu), INVENTORY)  # type: ignore[arg-type]


def test_each_gpu_goes_through_exactly_one_kubelet_path():
    assert split() == {"GPU-0": "device-plugin", "GPU-1": "device-plugin"}  # the default
    assert split(kubelet_api="dra") == {"GPU-0": "dra", "GPU-1": "dra"}
    assert split(kubelet_api="none") == {}
    kubelet = dataclasses.replace(GpuSection().kubelet, dra_gpus=["1", "GPU-9"])
    assert split(kubelet_api="split", kubelet=kubelet) == {"GPU-0": "device-plugin", "GPU-1": "dra"}


def test_tokens_grant_their_devices_once_bound_to_a_pod(tmp_path):
    db = MetadataDB(str(tmp_path / "metadata.db"))
    try:
        tokens = AllocationTokens(db)
        token = tokens.issue("nvidia.com/gpu", ["GPU-0::1"], ["GPU-0"])
        assert len(token) == 32
        pod_a = {POD_UID_LABEL: "pod-a"}
        assert tokens.devices_for({ALLOCATION_ENV: token}, pod_a) == {"GPU-0"}
        assert tokens.devices_for({ALLOCATION_ENV: token}, pod_a) == {"GPU-0"}  # a restart
        assert tokens.devices_for({ALLOCATION_ENV: token}, {POD_UID_LABEL: "pod-b"}) == set()
        assert tokens.devices_for({ALLOCATION_ENV: "0" * 32}, pod_a) == set()
        assert tokens.devices_for({}, pod_a) == set()
        stored = db.device_allocation(token)
        assert (
            stored is not None and stored.pod_uid == "pod-a" and stored.device_ids == ("GPU-0::1",)
        )
        assert db.prune_device_allocations(unused_before=0, idle_before=2**40) == 1  # no holder
        assert db.device_allocation(token) is None
    finally:
        db.close()


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("gpu.kubelet_api", "both", "is not one of"),
        ("gpu.kubelet.dir", "kubelet", "not an absolute path"),
        ("gpu.kubelet.dra_gpus", ["0"], "only with gpu.kubelet_api = split"),
        ("gpu.dra.driver_name", "GPU_driver", "DNS subdomain"),
        ("gpu.device_plugin.resource_name", "gpu", "extended resource name"),
        ("gpu.device_plugin.resource_name", "kubernetes.io/gpu", "extended resource name"),
        ("gpu.device_plugin.mig_strategy", "auto", "is not one of"),
        ("gpu.sharing.replicas", 0, "between 1 and 64"),
        ("gpu.health.check_interval_seconds", 0, "must be positive"),
        ("gpu.health.ignored_xids", [0], "positive"),
    ],
)
def test_bad_kubelet_plugin_config_names_the_key(tmp_path, key, value, message):
    path = tmp_path / "config.toml"
    path.write_text("")
    with pytest.raises(ConfigError, match=message) as info:
        load(str(path), environ={}, overrides={key: value})
    assert key.rsplit(".", 1)[-1] in str(info.value)
