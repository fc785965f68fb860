"""GPUs in containers through the CRI: CDI names, NVIDIA_VISIBLE_DEVICES, CRI devices.

A simulated two-GPU node (``tests.support.gpu_node``: the simulated NVML backend,
real character devices with NVIDIA's majors in a test device root, a fake
driver of ELF libraries and binaries) under a real agent, real runc and conmon.
A container given GPU 1 sees exactly ``/dev/nvidia1`` and the control nodes, the
driver's files mounted read-only, and its device cgroup allows exactly those;
the ldconfig hook really ran. The secure default holds; the assignment is in
``ContainerStatus`` and ``Status`` verbose info and survives an agent restart.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest

from agent.api.cri.runtime.v1 import api_pb2 as pb
from tests.integration.test_ctl_verbs import ctl
from tests.integration.test_pods import Env, cgroup_dirs, environment, images  # noqa: F401
from tests.support.gpu_node import GPU0, GPU1, GpuNode, make_gpu_node
from tests.support.images import busybox_image
from tests.support.push import RegistryClient

pytestmark = pytest.mark.integration

#: What /dev holds in a container that got GPU 1 (and what its cgroup allows).
GPU1_NODES = {"nvidia1", "nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-modeset"}
LIB = "/usr/lib/x86_64-linux-gnu"


@pytest.fixture
def node(short_dir: str) -> GpuNode:
    return make_gpu_node(os.path.join(short_dir, "gpunode"))


@pytest.fixture(scope="session")
def cuda_like_image(registry) -> str:
    """busybox with a CUDA base image's environment (``NVIDIA_VISIBLE_DEVICES=all``)."""
    env = ["PATH=/bin", "NVIDIA_VISIBLE_DEVICES=all", "NVIDIA_DRIVER_CAPABILITIES=compute,utility"]
    RegistryClient(registry.url).push_image("gpu/cuda-like", busybox_image(env=env), tag="v1")
    return f"{registry.host}/gpu/cuda-like:v1"


@pytest.fixture
async def gpu_env(short_dir, images, node, cuda_like_image) -> AsyncIterator[Env]:  # noqa: F811
    async with environment(
        short_dir, {**images, "cuda-like": cuda_like_image}, **node.config_keys()
    ) as env:
        await env.cri.images.PullImage(
            pb.PullImageRequest(image=pb.ImageSpec(image=cuda_like_image))
        )
        yield env


async def nvidia_nodes(env: Env, cid: str) -> set[str]:
    listed = await env.exec(
        cid, "sh", "-c", "ls /dev | grep nvidia; ls /dev/nvidia-caps 2>/dev/null"
    )
    return set(listed.stdout.decode().split())


def allowed_devices(env: Env, cid: str) -> set[str]:
    """The container's device cgroup (v1 ``devices.list``): ``c 195:1 rwm`` entries."""
    if not os.path.isdir("/sys/fs/cgroup/devices"):
        pytest.skip("cgroup v2: device rules are an eBPF program, there is no devices.list")
    for path in cgroup_dirs(f"{env.cgroup_parent}/{cid}"):
        if "/devices/" in path:
            with open(os.path.join(path, "devices.list")) as f:
                return {line.strip() for line in f}
    raise AssertionError(f"no devices cgroup for {cid}")


def nvidia_rules(rules: set[str], majors: set[str]) -> dict[str, str]:
    """The rules that can open an NVIDIA node (its majors, or any major with r or w):
    ``{"c 195:1": "rwm"}``."""
    found = {}
    for rule in rules:
        kind, number, access = rule.split()
        major = number.split(":")[0]
        if major in majors or (major == "*" and set(access) & set("rw")):
            found[f"{kind} {number}"] = access
    return found


async def verbose_gpu(env: Env, cid: str) -> dict[str, object]:
    response = await env.cri.runtime.ContainerStatus(
        pb.ContainerStatusRequest(container_id=cid, verbose=True)
    )
    info: dict[str, object] = json.loads(response.info["info"])
    gpu = info.get("gpu", {})
    assert isinstance(gpu, dict)
    return gpu


async def gpu_container(env: Env, sid: str, name: str, **changes: object) -> str:
    return await env.run(sid, name, "sleep", "1000", **changes)


async def assert_holds_exactly_gpu_1(env: Env, node: GpuNode, cid: str) -> None:
    """GPU 1's node and the control nodes in /dev and in the device cgroup, none of GPU 0;
    the driver's files mounted read-only and found through the ld cache the hook wrote."""
    assert await nvidia_nodes(env, cid) == GPU1_NODES
    libs = await env.exec(cid, "sh", "-c", f"ls {LIB}; echo x > {LIB}/libcuda.so.1")
    assert "libcuda.so.1" in libs.stdout.decode() and libs.exit_code != 0
    assert b"Read-only file system" in libs.stderr
    smi = await env.exec(cid, "/usr/bin/nvidia-smi")
    assert smi.stdout == b"fake\n"
    cache = await env.exec(cid, "cat", "/etc/ld.so.cache")
    assert b"libcuda.so.1" in cache.stdout  # written by the hook, in the container's root
    env_out = await env.exec(cid, "sh", "-c", "echo $NVIDIA_VISIBLE_DEVICES")
    assert env_out.stdout.decode().strip() == GPU1
    # Last, as it skips on cgroup v2: exactly GPU 1's rules for the NVIDIA majors.
    majors = {str(major) for major, _ in node.device_nodes.values()}
    rules = nvidia_rules(allowed_devices(env, cid), majors)
    expected = {"c {}:{}".format(*node.device_nodes[name]) for name in GPU1_NODES}
    assert set(rules) == expected, rules
    assert all(set(access) >= set("rw") for access in rules.values()), rules


async def test_a_container_given_gpu_1_by_cdi_name_sees_exactly_it(gpu_env, node):
    env = gpu_env
    sid = await env.run_pod()
    cid = await gpu_container(env, sid, "cdi", CDI_devices=[pb.CDIDevice(name="nvidia.com/gpu=1")])
    await assert_holds_exactly_gpu_1(env, node, cid)
    gpu = await verbose_gpu(env, cid)
    grants = gpu["grants"]
    assert isinstance(grants, list)
    assert [(g["uuid"], g["via"], g["request"]) for g in grants] == [
        (GPU1, "cdi", "nvidia.com/gpu=1")
    ]


async def test_by_uuid_env_when_the_node_accepts_env_and_by_device(short_dir, images, node):  # noqa: F811
    keys = node.config_keys(accept_env=True)
    async with environment(short_dir, images, **keys) as env:
        sid = await env.run_pod()
        by_env = await gpu_container(
            env, sid, "env", envs=[pb.KeyValue(key="NVIDIA_VISIBLE_DEVICES", value=GPU1)]
        )
        await assert_holds_exactly_gpu_1(env, node, by_env)
        device = pb.Device(
            container_path="/dev/nvidia1",
            host_path=os.path.join(node.dev_root, "dev", "nvidia1"),
            permissions="rw",
        )
        # A device plugin's DeviceSpec: the node itself, and what CUDA needs beside it.
        by_device = await gpu_container(env, sid, "dev", devices=[device])
        await assert_holds_exactly_gpu_1(env, node, by_device)
        grants = (await verbose_gpu(env, by_device))["grants"]
        assert isinstance(grants, list)
        assert [(g["uuid"], g["via"]) for g in grants] == [(GPU1, "device")]


async def inspected_info(env: Env, *cids: str) -> list[dict[str, Any]]:
    """Each container's verbose ``info`` as ``ctl inspect`` prints it (JSON)."""
    out = json.loads((await ctl(env, "inspect", *cids)).stdout)
    return [doc["info"] for doc in (out if isinstance(out, list) else [out])]


async def test_ctl_inspect_shows_which_gpus_a_container_holds_and_how(short_dir, images, node):  # noqa: F811
    """An operator asks ``ctl inspect`` which GPU a pod got; the device plugin's CDI name
    and an accepted NVIDIA_VISIBLE_DEVICES both answer under ``info.gpu.grants``."""
    async with environment(short_dir, images, **node.config_keys(accept_env=True)) as env:
        sid = await env.run_pod()
        plugin_name = f"nvidia.com/gpu={GPU1}"  # what the device plugin's Allocate answers
        by_plugin = await gpu_container(
            env, sid, "plugin", CDI_devices=[pb.CDIDevice(name=plugin_name)]
        )
        by_env = await gpu_container(
            env, sid, "env", envs=[pb.KeyValue(key="NVIDIA_VISIBLE_DEVICES", value=GPU0)]
        )
        plain = await gpu_container(env, sid, "plain")
        plugin_info, env_info, plain_info = await inspected_info(env, by_plugin, by_env, plain)
        plugin_gpu, env_gpu = plugin_info["gpu"], env_info["gpu"]
        assert [(g["uuid"], g["index"], g["via"], g["request"]) for g in plugin_gpu["grants"]] == [
            (GPU1, "1", "cdi", plugin_name)
        ]
        assert plugin_gpu["cdi_devices"] == [plugin_name]
        assert [(g["uuid"], g["index"], g["via"]) for g in env_gpu["grants"]] == [
            (GPU0, "0", "env")
        ]
        assert "gpu" not in plain_info  # no assignment, no field


async def test_the_secure_default_grants_nothing_from_environment_variables(gpu_env):
    """CUDA images set NVIDIA_VISIBLE_DEVICES=all; a pod spec can set it too. Neither is a
    Kubernetes resource request, so neither gets a GPU unless the node opts in."""
    env = gpu_env
    sid = await env.run_pod()
    cid = await gpu_container(
        env, sid, "asks", envs=[pb.KeyValue(key="NVIDIA_VISIBLE_DEVICES", value="all")]
    )
    assert await nvidia_nodes(env, cid) == set()
    visible = await env.exec(cid, "sh", "-c", "echo $NVIDIA_VISIBLE_DEVICES")
    assert visible.stdout.decode().strip() == "void"
    gpu = await verbose_gpu(env, cid)
    assert gpu.get("grants", []) == [] and gpu["denied"]
    from_image = await gpu_container(env, sid, "image", image="cuda-like")
    assert await nvidia_nodes(env, from_image) == set()
    visible = await env.exec(from_image, "sh", "-c", "echo $NVIDIA_VISIBLE_DEVICES")
    assert visible.stdout.decode().strip() == "void"


async def test_bad_requests_create_nothing(gpu_env, node):
    env = gpu_env
    sid = await env.run_pod()
    cases: list[tuple[list[pb.CDIDevice], list[pb.KeyValue], str]] = [
        ([pb.CDIDevice(name="nvidia.com/gpu=7")], [], "nvidia.com/gpu=7"),
        ([pb.CDIDevice(name="example.com/nic=eth9")], [], "example.com/nic=eth9"),
    ]
    for cdi, envs, fragment in cases:
        config = env.container_config("bad", "sleep", "1000", CDI_devices=cdi, envs=envs)
        await env.create_refused(sid, config, fragment)
    state_dir = env.agent.config.agent.state_dir
    assert os.listdir(f"{state_dir}/containers") == []


async def test_assignments_survive_a_restart_and_show_in_status(gpu_env):
    env = gpu_env
    sid = await env.run_pod()
    first = await gpu_container(
        env, sid, "one", CDI_devices=[pb.CDIDevice(name="nvidia.com/gpu=0")]
    )
    second = await gpu_container(
        env, sid, "two", CDI_devices=[pb.CDIDevice(name=f"nvidia.com/gpu={GPU1}")]
    )
    await env.restart_agent()
    gpu = await verbose_gpu(env, second)
    grants = gpu["grants"]
    assert isinstance(grants, list) and grants[0]["uuid"] == GPU1
    status = await env.cri.runtime.Status(pb.StatusRequest(verbose=True))
    node_gpus = json.loads(status.info["gpu"])
    assert [g["uuid"] for g in node_gpus["gpus"]] == [GPU0, GPU1]
    holders = {
        (h["device_uuid"], h["container_id"], h["container_name"]) for h in node_gpus["holders"]
    }
    assert holders == {(GPU0, first, "one"), (GPU1, second, "two")}
    table = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "agent", "ctl", "--socket", env.agent.socket_path, "gpus"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = {line.split()[1]: line for line in table.stdout.splitlines()[1:] if line.strip()}
    assert "/one (" in lines[GPU0] and "/two (" in lines[GPU1], table.stdout + table.stderr
    await env.cri.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=first))
    status = await env.cri.runtime.Status(pb.StatusRequest(verbose=True))
    remaining = json.loads(status.info["gpu"])["holders"]
    assert [h["container_id"] for h in remaining] == [second]
