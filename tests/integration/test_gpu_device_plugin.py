"""The agent's device plugin against the kubelet stand-in's device manager.

Real gRPC over unix sockets in a temporary kubelet dir: registration after serving,
ListAndWatch with NUMA topology and health that follows injected XIDs (and recovers),
a GPU lost from the bus, re-registration after a kubelet restart, GetPreferredAllocation
on a simulated 2x4-GPU NUMA/NVLink node, and Allocate — whose CDI names and whose env
fallback give a real runc container its GPU through the CRI, while a forged token, a
missing one or another pod's token gives none.
"""

from __future__ import annotations

import asyncio
import os
import socket
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import pytest

from agent.api.cri.runtime.v1 import api_pb2 as pb
from agent.api.kubelet.deviceplugin.v1beta1 import api_pb2 as dp
from tests.integration.test_gpu_containers import GPU1_NODES, nvidia_nodes, verbose_gpu
from tests.integration.test_pods import environment, images  # noqa: F401
from tests.support.gpu_node import GPU0, GPU1, GpuNode, make_gpu_node, simulation_toml
from tests.support.kubelet import Kubelet

pytestmark = pytest.mark.integration

RESOURCE = "nvidia.com/gpu"
TOKEN_ENV = "MODEL_AGENT_GPU_ALLOCATION"


@pytest.fixture
def node(short_dir: str) -> GpuNode:
    return make_gpu_node(os.path.join(short_dir, "gpunode"))


@pytest.fixture
async def kubelet(short_dir: str) -> AsyncIterator[Kubelet]:
    async with Kubelet(f"{short_dir}/kubelet") as k:
        yield k


def plugin_keys(node: GpuNode, base: str, **extra: Any) -> dict[str, Any]:
    keys = node.config_keys()  # kubelet_api = "device-plugin" is the default
    keys |= {
        "gpu.kubelet.dir": f"{base}/kubelet",
        "gpu.health.recovery_seconds": 1.0,
        "gpu.health.check_interval_seconds": 0.2,
    }
    return keys | extra


def health_of(update: dp.ListAndWatchResponse) -> dict[str, str]:
    return {d.ID: d.health for d in update.devices}


def events(xid: int) -> str:
    return f'[[events]]\ngpu = 1\nkind = "xid"\nxid = {xid}\nat_seconds = 0\n'


async def test_list_and_watch_follows_xids_loss_and_recovery_and_a_kubelet_restart(
    start_agent, node, kubelet, short_dir
):
    agent = await start_agent(**plugin_keys(node, short_dir))
    plugin = await kubelet.devices.wait_plugin(RESOURCE)
    [registration] = kubelet.devices.registrations
    assert registration.error == "" and registration.request.version == "v1beta1"
    assert registration.request.endpoint == "model-agent-nvidia.com-gpu.sock"
    assert plugin.options.get_preferred_allocation_available
    first = await plugin.wait_update(lambda u: len(u.devices) == 2)
    assert health_of(first) == {GPU0: "Healthy", GPU1: "Healthy"}
    assert {d.ID: [n.ID for n in d.topology.nodes] for d in first.devices} == {GPU0: [0], GPU1: [1]}

    # An application XID changes nothing; a critical one marks GPU 1 until it is quiet.
    seen = len(plugin.updates)
    node.write_simulation(simulation_toml(events=events(13) + events(63)))
    sick = await plugin.wait_update(lambda u: health_of(u)[GPU1] == "Unhealthy", after=seen)
    assert health_of(sick)[GPU0] == "Healthy"
    assert float(await metric(agent, GPU1)) == 0.0
    seen = len(plugin.updates)
    await plugin.wait_update(lambda u: health_of(u)[GPU1] == "Healthy", after=seen)
    assert float(await metric(agent, GPU1)) == 1.0

    # XID 79 needs a reset: quiet for longer than recovery_seconds, it stays unhealthy.
    seen = len(plugin.updates)
    node.write_simulation(simulation_toml(events=events(79)))
    await plugin.wait_update(lambda u: health_of(u)[GPU1] == "Unhealthy", after=seen)
    await asyncio.sleep(2.0)
    assert health_of(plugin.updates[-1])[GPU1] == "Unhealthy"
    # Lost from the bus (the reset), then back: the agent keeps running and it recovers.
    lost = simulation_toml().replace(
        f'uuid = "{GPU1}"', f'uuid = "{GPU1}"\nstate = "lost"\nerror = "GPU is lost"'
    )
    node.write_simulation(lost)
    await asyncio.sleep(0.5)
    assert plugin.devices() == {GPU0: "Healthy", GPU1: "Unhealthy"}  # listed, not gone
    seen = len(plugin.updates)
    node.write_simulation(simulation_toml())
    await plugin.wait_update(lambda u: health_of(u)[GPU1] == "Healthy", after=seen, timeout=15)

    # A kubelet restart deletes the plugin's socket: the plugin serves anew and registers.
    await kubelet.devices.restart()
    again = await kubelet.devices.wait_plugin(RESOURCE, after=plugin)
    update = await again.wait_update(lambda u: len(u.devices) == 2)
    assert health_of(update) == {GPU0: "Healthy", GPU1: "Healthy"}
    assert os.path.exists(
        os.path.join(kubelet.device_plugins_dir, "model-agent-nvidia.com-gpu.sock")
    )


async def metric(agent: Any, uuid: str) -> str:
    assert agent.metrics_server is not None
    url = agent.metrics_server.url

    def fetch() -> str:
        with urllib.request.urlopen(url, timeout=10) as response:
            return str(response.read().decode())

    text = await asyncio.to_thread(fetch)
    for line in text.splitlines():
        if line.startswith("model_agent_gpu_healthy{") and f'UUID="{uuid}"' in line:
            return line.rsplit(" ", 1)[1]
    raise AssertionError(f"no model_agent_gpu_healthy for {uuid} in:\n{text}")


def eight_gpus() -> str:
    """Two NUMA nodes of four GPUs, NVLink pairs 0-1, 2-3, 4-5, 6-7."""
    parts = ['driver_version = "550.54.15"', 'cuda_driver_version = "12.4"']
    for i in range(8):
        parts.append(
            f'[[gpus]]\nuuid = "GPU-{i:08d}-0000-0000-0000-000000000000"\n'
            f"numa_node = {i // 4}\nnvlink_peers = [{i ^ 1}]\n"
        )
    return "\n".join(parts)


async def test_preferred_allocation_packs_numa_nodes_and_nvlink_pairs(
    start_agent, node, kubelet, short_dir
):
    node.write_simulation(eight_gpus())
    await start_agent(**plugin_keys(node, short_dir))
    plugin = await kubelet.devices.wait_plugin(RESOURCE)
    update = await plugin.wait_update(lambda u: len(u.devices) == 8)
    ids = sorted(d.ID for d in update.devices)

    def gpu(i: int) -> str:
        return f"GPU-{i:08d}-0000-0000-0000-000000000000"

    assert ids == [gpu(i) for i in range(8)]
    assert await plugin.get_preferred_allocation(ids, [], 2) == [gpu(0), gpu(1)]
    assert await plugin.get_preferred_allocation(ids, [], 4) == [gpu(i) for i in range(4)]
    free = [gpu(i) for i in range(2, 8)]  # 0 and 1 are taken: keep NUMA node 1 whole
    assert await plugin.get_preferred_allocation(free, [], 2) == [gpu(2), gpu(3)]
    assert await plugin.get_preferred_allocation(ids, [gpu(5)], 2) == [gpu(5), gpu(4)]


async def test_time_slicing_replicas_are_spread(start_agent, node, kubelet, short_dir):
    await start_agent(**plugin_keys(node, short_dir, **{"gpu.sharing.replicas": 3}))
    plugin = await kubelet.devices.wait_plugin(RESOURCE)
    update = await plugin.wait_update(lambda u: len(u.devices) == 6)
    ids = sorted(d.ID for d in update.devices)
    assert ids == sorted(f"{g}::{r}" for g in (GPU0, GPU1) for r in range(3))
    chosen = await plugin.get_preferred_allocation(ids, [], 2)
    assert sorted(c.split("::")[0] for c in chosen) == [GPU0, GPU1]
    response = await plugin.allocate([[f"{GPU1}::0", f"{GPU1}::2"]])
    [answer] = response.container_responses
    assert [c.name for c in answer.cdi_devices] == [f"nvidia.com/gpu={GPU1}"]


async def test_allocate_gives_a_real_container_its_gpu_by_cdi_and_by_env_fallback_only(
    short_dir,
    images,  # noqa: F811
    node,
    kubelet,
):
    async with environment(short_dir, images, **plugin_keys(node, short_dir)) as env:
        plugin = await kubelet.devices.wait_plugin(RESOURCE)
        await plugin.wait_update(lambda u: len(u.devices) == 2)
        response = await plugin.allocate([[GPU1]])
        [answer] = response.container_responses
        assert [c.name for c in answer.cdi_devices] == [f"nvidia.com/gpu={GPU1}"]
        assert answer.envs["NVIDIA_VISIBLE_DEVICES"] == GPU1
        token = answer.envs[TOKEN_ENV]
        with pytest.raises(Exception, match="unknown device ids"):
            await plugin.allocate([["GPU-nope"]])

        def kubelet_config(
            name: str, pod_uid: str, envs: dict[str, str], **kw: Any
        ) -> pb.ContainerConfig:
            config = env.container_config(
                name,
                "sleep",
                "1000",
                envs=[pb.KeyValue(key=k, value=v) for k, v in envs.items()],
                **kw,
            )
            config.labels["io.kubernetes.pod.uid"] = pod_uid
            return config

        async def create(sandbox: str, config: pb.ContainerConfig) -> str:
            cid = await env.create(sandbox, config)
            await env.start(cid)
            return cid

        pod = env.sandbox_config("pod-a")
        sid = await env.run_pod(pod)
        uid = pod.metadata.uid
        # The kubelet passes the CDI names on: the container gets exactly GPU 1.
        by_cdi = await create(
            sid,
            kubelet_config(
                "cdi", uid, {}, CDI_devices=[pb.CDIDevice(name=c.name) for c in answer.cdi_devices]
            ),
        )
        assert await nvidia_nodes(env, by_cdi) == GPU1_NODES
        # An older kubelet passes only the env: the token makes the variable count.
        by_env = await create(sid, kubelet_config("env", uid, dict(answer.envs)))
        assert await nvidia_nodes(env, by_env) == GPU1_NODES
        grants = (await verbose_gpu(env, by_env))["grants"]
        assert isinstance(grants, list) and [(g["uuid"], g["via"]) for g in grants] == [
            (GPU1, "env")
        ]
        # A forged token, none at all, or this token in another pod: nothing.
        forged = {"NVIDIA_VISIBLE_DEVICES": GPU1, TOKEN_ENV: "0123456789abcdef0123456789abcdef"}
        untokened = {"NVIDIA_VISIBLE_DEVICES": GPU1}
        for name, envs in (("forged", forged), ("none", untokened)):
            cid = await create(sid, kubelet_config(name, uid, envs))
            assert await nvidia_nodes(env, cid) == set(), name
            assert (await verbose_gpu(env, cid))["denied"], name
        other = env.sandbox_config("pod-b")
        other_sid = await env.run_pod(other)
        cid = await create(
            other_sid, kubelet_config("stolen", other.metadata.uid, dict(answer.envs))
        )
        assert await nvidia_nodes(env, cid) == set()
        # The token survives an agent restart: a crashed container is re-created with it.
        await env.restart_agent()
        again = await create(sid, kubelet_config("env-again", uid, dict(answer.envs)))
        assert await nvidia_nodes(env, again) == GPU1_NODES
        assert token == answer.envs[TOKEN_ENV]


async def test_a_stale_kubelet_socket_neither_stops_the_agent_nor_the_later_registration(
    start_agent, node, short_dir
):
    plugins_dir = f"{short_dir}/kubelet/device-plugins"
    os.makedirs(plugins_dir)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(f"{plugins_dir}/kubelet.sock")  # a dead kubelet's: bound, nobody listens
    stale.close()
    agent = await start_agent(**plugin_keys(node, short_dir))
    assert agent.ready.is_set()
    assert agent.kubelet_plugins is not None and agent.kubelet_plugins.device_plugins is not None
    [server] = agent.kubelet_plugins.device_plugins.plugins.values()
    assert server.last_error and server.registrations == 0
    async with Kubelet(f"{short_dir}/kubelet") as kubelet:  # cleans the dir, listens anew
        plugin = await kubelet.devices.wait_plugin(RESOURCE)
        assert len((await plugin.wait_update(lambda u: len(u.devices) == 2)).devices) == 2
    assert server.registrations == 1
