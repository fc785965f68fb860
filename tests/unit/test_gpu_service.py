"""GpuService end to end on a simulated node: real device nodes, fake driver files, CDI dirs."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from typing import Any

import pytest

from agent.config import GpuSection, load
from agent.errors import ConfigError, FailedPrecondition, InvalidArgument
from agent.gpu.assignment import Assignment
from agent.gpu.service import GpuService, env_from_list
from tests.support.fake_driver import DRIVER_VERSION, NVIDIA_MAJOR, UVM_MAJOR
from tests.support.gpu_node import GPU0, GPU1, MIG0, GpuNode, make_gpu_node, simulation_toml

V = DRIVER_VERSION
LIB = "/usr/lib/x86_64-linux-gnu"
CONTROL = {"/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/nvidia-modeset"}


def section(node: GpuNode, **extra) -> GpuSection:
    path = os.path.join(node.base, "config.toml")
    open(path, "a").close()
    return load(path, environ={}, overrides=node.config_keys(**extra)).gpu


@pytest.fixture
def node(tmp_path) -> GpuNode:
    return make_gpu_node(str(tmp_path))


@pytest.fixture
def mig_node(tmp_path) -> GpuNode:
    return make_gpu_node(str(tmp_path), mig=True)


def started(node: GpuNode, **extra) -> GpuService:
    service = GpuService(section(node, **extra))
    service.start()
    return service


def applied(service: GpuService, edits) -> dict[str, Any]:
    spec = {
        "process": {
            "user": {"uid": 0, "gid": 0},
            "env": ["PATH=/bin", "NVIDIA_VISIBLE_DEVICES=all"],
        },
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
        "linux": {"devices": [], "resources": {"devices": [{"allow": False, "access": "rwm"}]}},
    }
    service.apply(spec, edits)
    return spec


def device_paths(spec: dict[str, Any]) -> set[str]:
    return {d["path"] for d in spec["linux"]["devices"]}


def allowed(spec: dict[str, Any]) -> set[tuple[int, int]]:
    return {(r["major"], r["minor"]) for r in spec["linux"]["resources"]["devices"] if r["allow"]}


def mounted(spec: dict[str, Any]) -> set[str]:
    return {m["destination"] for m in spec["mounts"]}


def env(spec: dict[str, Any]) -> dict[str, str]:
    return env_from_list(spec["process"]["env"])


# -- the facade's requests ---------------------------------------------------


def test_gpu_1_by_cdi_name_gets_exactly_its_node_the_control_nodes_and_the_driver(node):
    service = started(node)
    edits, assignment = service.resolve(cdi_devices=["nvidia.com/gpu=1"])
    ((grant),) = assignment.grants
    assert (grant.uuid, grant.index, grant.via, grant.request) == (
        GPU1,
        "1",
        "cdi",
        "nvidia.com/gpu=1",
    )
    spec = applied(service, edits)
    assert device_paths(spec) == {"/dev/nvidia1"} | CONTROL
    assert allowed(spec) == {
        (NVIDIA_MAJOR, 1),
        (NVIDIA_MAJOR, 255),
        (NVIDIA_MAJOR, 254),
        (UVM_MAJOR, 0),
        (UVM_MAJOR, 1),
    }
    nvidia1 = next(d for d in spec["linux"]["devices"] if d["path"] == "/dev/nvidia1")
    assert (nvidia1["type"], nvidia1["major"], nvidia1["minor"]) == ("c", NVIDIA_MAJOR, 1)
    assert {
        f"{LIB}/libcuda.so.{V}",
        f"{LIB}/libnvidia-ml.so.{V}",
        "/usr/bin/nvidia-smi",
    } <= mounted(spec)
    sources = {m["destination"]: m["source"] for m in spec["mounts"]}
    assert sources[f"{LIB}/libcuda.so.{V}"] == f"{node.driver.lib_dir}/libcuda.so.{V}"
    assert env(spec)["NVIDIA_VISIBLE_DEVICES"] == GPU1  # what was granted, not "all"
    (hook,) = spec["hooks"]["createContainer"]
    assert "update-ldcache" in hook["args"] and os.path.isfile(hook["path"])


def test_the_same_gpu_by_uuid_env_and_by_device_gives_the_same_devices(node):
    service = started(node)
    by_cdi = applied(service, service.resolve(cdi_devices=[f"nvidia.com/gpu={GPU1}"])[0])
    edits, env_assignment = service.resolve(
        cri_env={"NVIDIA_VISIBLE_DEVICES": GPU1}, allocated=[GPU1]
    )
    by_env = applied(service, edits)
    assert device_paths(by_env) == device_paths(by_cdi) == {"/dev/nvidia1"} | CONTROL
    assert allowed(by_env) == allowed(by_cdi)
    ((grant),) = env_assignment.grants
    assert (grant.uuid, grant.via, grant.request) == (GPU1, "env", GPU1)
    # A CRI Device entry: pods.spec applies the node itself; the facade records it and
    # adds what CUDA needs beside it (the control nodes, the driver's files, the hook).
    edits, dev_assignment = service.resolve(devices=[f"{node.dev_root}/dev/nvidia1"])
    ((grant),) = dev_assignment.grants
    assert (grant.uuid, grant.via, grant.request) == (
        GPU1,
        "device",
        f"{node.dev_root}/dev/nvidia1",
    )
    by_device = applied(service, edits)
    assert device_paths(by_device) == CONTROL
    assert mounted(by_env) <= mounted(by_device) and f"{LIB}/libcuda.so.{V}" in mounted(by_device)
    assert env(by_device)["NVIDIA_VISIBLE_DEVICES"] == GPU1
    (hook,) = by_device["hooks"]["createContainer"]
    assert "update-ldcache" in hook["args"]


def test_a_gpu_device_node_without_a_node_spec_is_still_given(node, caplog):
    """With write_node_spec = false there are no driver files to add: the device node alone,
    as before, and a warning (never a refused container)."""
    service = started(node, write_node_spec=False)
    edits, assignment = service.resolve(devices=[f"{node.dev_root}/dev/nvidia1"])
    assert [g.uuid for g in assignment.grants] == [GPU1]
    assert device_paths(applied(service, edits)) == set()  # pods.spec adds the node itself
    assert "no CDI spec" in caplog.text


def test_annotations_and_the_field_are_merged(node):
    service = started(node)
    _, assignment = service.resolve(
        cdi_devices=["nvidia.com/gpu=0"],
        annotations={"cdi.k8s.io/nvidia-device-plugin_x": "nvidia.com/gpu=0,nvidia.com/gpu=1"},
    )
    assert [(g.uuid, g.via) for g in assignment.grants] == [(GPU0, "cdi"), (GPU1, "annotation")]
    assert assignment.cdi_devices == ("nvidia.com/gpu=0", "nvidia.com/gpu=1")


def test_all_and_mig_devices(mig_node):
    service = started(mig_node)
    _, everything = service.resolve(cdi_devices=["nvidia.com/gpu=all"])
    assert [(g.uuid, g.mig) for g in everything.grants] == [(GPU0, False), (MIG0, True)]
    edits, mig = service.resolve(cdi_devices=["nvidia.com/gpu=1:0"])
    ((grant),) = mig.grants
    assert (grant.uuid, grant.gpu_uuid, grant.index, grant.profile) == (
        MIG0,
        GPU1,
        "1:0",
        "1g.18gb",
    )
    assert mig.mig_uuids == (MIG0,) and mig.gpu_uuids == () and mig.physical_gpus == (GPU1,)
    spec = applied(service, edits)
    assert (
        device_paths(spec)
        == {"/dev/nvidia1", "/dev/nvidia-caps/nvidia-cap12", "/dev/nvidia-caps/nvidia-cap13"}
        | CONTROL
    )


def test_unresolvable_names_are_errors_naming_them(node):
    service = started(node)
    with pytest.raises(InvalidArgument, match=r"nvidia.com/gpu=7 \(not defined"):
        service.resolve(cdi_devices=["nvidia.com/gpu=0", "nvidia.com/gpu=7"])
    with pytest.raises(InvalidArgument, match=r"no CDI spec for example\.com/nic"):
        service.resolve(cdi_devices=["example.com/nic=eth0"])


# -- the secure default --------------------------------------------------------


def test_the_image_variable_grants_nothing_and_is_neutralised(node):
    service = started(node)
    edits, assignment = service.resolve(image_env={"NVIDIA_VISIBLE_DEVICES": "all"})
    assert assignment.grants == () and assignment.cdi_devices == ()
    assert "image config grants no GPU" in assignment.denied[0]
    spec = applied(service, edits)
    assert env(spec)["NVIDIA_VISIBLE_DEVICES"] == "void"
    assert device_paths(spec) == set() and allowed(spec) == set()


def test_the_pod_spec_variable_without_an_allocation_grants_nothing(node, caplog):
    service = started(node)
    edits, assignment = service.resolve(cri_env={"NVIDIA_VISIBLE_DEVICES": "all"})
    assert assignment.grants == () and len(assignment.denied) == 2
    assert "was not allocated to this container" in caplog.text
    assert device_paths(applied(service, edits)) == set()


def test_accept_env_trusts_the_pod_spec(node):
    service = started(node, accept_env=True)
    _, assignment = service.resolve(cri_env={"NVIDIA_VISIBLE_DEVICES": "1"})
    assert [(g.uuid, g.via, g.request) for g in assignment.grants] == [(GPU1, "env", "1")]


def test_bad_ids_in_the_pod_spec_variable(node):
    service = started(node, accept_env=True)
    with pytest.raises(InvalidArgument, match="GPU 7 does not exist"):
        service.resolve(cri_env={"NVIDIA_VISIBLE_DEVICES": "7"})
    with pytest.raises(InvalidArgument, match="is not a device on this node"):
        service.resolve(cri_env={"NVIDIA_VISIBLE_DEVICES": "GPU-0000dead"})


# -- capabilities and requirements ---------------------------------------------


def test_driver_capabilities_select_the_driver_files(node):
    service = started(node)
    everything = mounted(applied(service, service.resolve(cdi_devices=["nvidia.com/gpu=0"])[0]))
    assert f"{LIB}/libnvidia-encode.so.{V}" in everything  # CDI alone: the spec as written
    utility = mounted(
        applied(
            service,
            service.resolve(
                cdi_devices=["nvidia.com/gpu=0"],
                image_env={"NVIDIA_DRIVER_CAPABILITIES": "utility"},
            )[0],
        )
    )
    assert "/usr/bin/nvidia-smi" in utility and f"{LIB}/libnvidia-ml.so.{V}" in utility
    assert f"{LIB}/libcuda.so.{V}" not in utility
    by_env = service.resolve(cri_env={"NVIDIA_VISIBLE_DEVICES": "0"}, allocated=[GPU0])
    default = mounted(applied(service, by_env[0]))  # the toolkit's default: compute,utility
    assert f"{LIB}/libcuda.so.{V}" in default and f"{LIB}/libnvidia-encode.so.{V}" not in default
    assert by_env[1].driver_capabilities == ("compute", "utility")


def test_requirements_are_checked_when_a_gpu_is_granted(node):
    service = started(node)
    image = {"NVIDIA_REQUIRE_CUDA": "cuda>=12.8 brand=tesla,driver>=535"}
    with pytest.raises(FailedPrecondition, match="unsatisfied condition"):
        service.resolve(cdi_devices=["nvidia.com/gpu=0"], image_env=image)
    service.resolve(image_env=image)  # no GPU, no check
    service.resolve(
        cdi_devices=["nvidia.com/gpu=0"], image_env={**image, "NVIDIA_DISABLE_REQUIRE": "1"}
    )


def test_none_gives_the_driver_files_and_no_gpu(node):
    service = started(node, accept_env=True)
    edits, assignment = service.resolve(cri_env={"NVIDIA_VISIBLE_DEVICES": "none"})
    assert assignment.grants == () and assignment.driver_only
    spec = applied(service, edits)
    assert "/usr/bin/nvidia-smi" in mounted(spec) and f"{LIB}/libcuda.so.{V}" in mounted(spec)
    assert not any(p.startswith("/dev/nvidia") and p[11:].isdigit() for p in device_paths(spec))
    assert env(spec)["NVIDIA_VISIBLE_DEVICES"] == "none"


# -- other specs, precedence, refresh ------------------------------------------


def test_a_non_gpu_cdi_device_is_injected_and_recorded(node):
    with open(os.path.join(node.etc_cdi, "nic.yaml"), "w") as f:
        f.write(
            "cdiVersion: 0.6.0\nkind: example.com/nic\ndevices:\n"
            "  - name: eth0\n    containerEdits:\n      env: [NIC=eth0]\n"
        )
    service = started(node)
    edits, assignment = service.resolve(cdi_devices=["example.com/nic=eth0"])
    assert assignment.grants == () and assignment.cdi_devices == ("example.com/nic=eth0",)
    assert env(applied(service, edits))["NIC"] == "eth0"


def test_ours_overrides_nvidia_ctk_in_etc_cdi_and_says_so(node, caplog):
    ctk = {
        "cdiVersion": "0.5.0",
        "kind": "nvidia.com/gpu",
        "devices": [
            {"name": "0", "containerEdits": {"env": ["FROM=ctk"]}},
            {"name": "gpu0", "containerEdits": {"env": ["FROM=ctk"]}},
        ],
    }
    with open(os.path.join(node.etc_cdi, "nvidia.yaml"), "w") as f:
        json.dump(ctk, f)  # JSON is YAML
    caplog.set_level(logging.INFO)
    service = started(node)
    assert "takes precedence over" in caplog.text and "nvidia.yaml" in caplog.text
    edits, assignment = service.resolve(cdi_devices=["nvidia.com/gpu=0"])
    assert "FROM" not in env(applied(service, edits)) and assignment.grants[0].uuid == GPU0
    _, other = service.resolve(cdi_devices=["nvidia.com/gpu=gpu0"])  # only the ctk spec has it
    assert other.grants == ()


def test_a_same_directory_collision_is_reported(node, caplog):
    with open(os.path.join(node.run_cdi, "nvidia.yaml"), "w") as f:
        json.dump(
            {
                "cdiVersion": "0.5.0",
                "kind": "nvidia.com/gpu",
                "devices": [{"name": "0", "containerEdits": {"env": ["FROM=ctk"]}}],
            },
            f,
        )
    service = started(node)
    assert "is also defined in" in caplog.text
    # The agent's own spec wins (the toolkit's duplicate must not take GPU 0 away).
    edits, assignment = service.resolve(cdi_devices=["nvidia.com/gpu=0"])
    assert [g.uuid for g in assignment.grants] == [GPU0] and "FROM=ctk" not in edits.env
    service.resolve(cdi_devices=["nvidia.com/gpu=1"])  # the others work as always
    assert service.status_info()["cdi"]["conflicts"]


def test_refresh_follows_the_inventory_and_rewrites_the_node_spec(node):
    service = started(node)
    path = service.status_info()["nodeSpec"]["path"]
    mtime = os.stat(path).st_mtime_ns
    assert service.refresh() is False and os.stat(path).st_mtime_ns == mtime
    node.write_simulation(
        simulation_toml().replace(f'uuid = "{GPU1}"', f'uuid = "{GPU1}"\nstate = "lost"')
    )
    assert service.refresh() is True
    with open(path) as f:
        names = [d["name"] for d in json.load(f)["devices"]]
    assert names == ["0", GPU0, "all"]
    with pytest.raises(InvalidArgument, match=r"nvidia\.com/gpu=1"):
        service.resolve(cdi_devices=["nvidia.com/gpu=1"])


async def test_run_refreshes_periodically(node):
    service = GpuService(section(node, inventory_refresh_seconds=0.05))
    await asyncio.to_thread(service.start)
    task = asyncio.create_task(service.run())
    try:
        node.write_simulation(
            simulation_toml().replace(f'uuid = "{GPU0}"', f'uuid = "{GPU0}"\nstate = "lost"')
        )
        for _ in range(100):
            if service.inventory().gpus[0].state == "lost":
                break
            await asyncio.sleep(0.02)
        assert service.inventory().gpus[0].state == "lost"
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def test_status_info(mig_node):
    info = started(mig_node).status_info()
    assert info["backend"] == {
        "name": "simulated",
        "available": True,
        "reason": f"SIMULATED GPUs from {mig_node.sim_file}",
        "simulated": True,
    }
    assert info["driver"]["driver_version"] == V and info["driver"]["cuda_driver_version"] == "12.4"
    assert [g["uuid"] for g in info["gpus"]] == [GPU0, GPU1]
    assert info["gpus"][1]["migDevices"] == [{"index": "1:0", "uuid": MIG0, "profile": "1g.18gb"}]
    assert info["cdi"]["specDirs"] == [mig_node.etc_cdi, mig_node.run_cdi]
    assert info["cdi"]["specs"][0]["kind"] == "nvidia.com/gpu"
    assert info["nodeSpec"]["devices"] == 7 and info["nodeSpec"]["problems"] == []
    json.dumps(info)  # JSON-able, for Status verbose


def test_the_assignment_round_trips_through_json(mig_node):
    _, assignment = started(mig_node).resolve(
        cdi_devices=["nvidia.com/gpu=0", "nvidia.com/gpu=1:0"],
        image_env={"NVIDIA_VISIBLE_DEVICES": "all"},
    )
    again = Assignment.from_dict(json.loads(json.dumps(assignment.to_dict())))
    assert again == assignment and len(again.grants) == 2


# -- backends that have no GPU -------------------------------------------------


def test_backend_none(node):
    service = started(node, backend="none")
    assert service.status_info()["backend"]["name"] == "none"
    assert service.inventory().gpus == ()
    assert not os.listdir(node.run_cdi)  # no GPU, no spec
    with pytest.raises(InvalidArgument, match=r"GPU 0 does not exist \(this node has 0\)"):
        started(node, backend="none", accept_env=True).resolve(
            cri_env={"NVIDIA_VISIBLE_DEVICES": "0"}
        )
    _, assignment = service.resolve(image_env={"NVIDIA_VISIBLE_DEVICES": "all"})
    assert assignment.grants == ()


def test_nvml_without_a_gpu_falls_back_to_none(node, caplog):
    caplog.set_level(logging.INFO)
    service = started(node, backend="nvml", driver_root=node.base + "/nowhere")
    info = service.status_info()["backend"]
    assert info["name"] == "none" and info["reason"].startswith("nvml: ")
    assert "GPUs: none" in caplog.text


# -- the [gpu] config section ----------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"gpu.backend": "cuda"}, "gpu.backend: 'cuda' is not one of"),
        ({"gpu.backend": "simulated"}, "gpu.simulated_file: required"),
        ({"gpu.node_spec_dir": "/elsewhere"}, "is not one of gpu.cdi_spec_dirs"),
        ({"gpu.cdi_kind": "nvidia.com"}, "is not vendor/class"),
        (
            {"gpu.driver_root": "usr/local/nvidia"},
            "gpu.driver_root: 'usr/local/nvidia' is not an absolute",
        ),
        ({"gpu.cdi_spec_dirs": "etc/cdi,/var/run/cdi"}, r"gpu.cdi_spec_dirs\[0\]"),
        ({"gpu.inventory_refresh_seconds": 0}, "must be positive"),
        ({"gpu.accept_envs": True}, "unknown key 'gpu.accept_envs'"),
    ],
)
def test_bad_gpu_config_names_the_key(tmp_path, overrides, message):
    path = tmp_path / "c.toml"
    path.write_text("")
    with pytest.raises(ConfigError, match=message):
        load(str(path), environ={}, overrides=overrides)


def test_gpu_config_defaults(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[gpu]\naccept_env = true\n")
    gpu = load(str(path), environ={}).gpu
    assert (gpu.backend, gpu.cdi_spec_dirs, gpu.node_spec_dir) == (
        "nvml",
        ["/etc/cdi", "/var/run/cdi"],
        "/var/run/cdi",
    )
    assert gpu.accept_env and gpu.cdi_kind == "nvidia.com/gpu" and gpu.driver_root == "/"
