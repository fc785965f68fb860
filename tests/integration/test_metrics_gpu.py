"""GPU metrics on ``/metrics`` with the simulated NVML backend and real containers.

The simulated node of ``tests.support.gpu_node`` (two GPUs, optionally GPU 1 in MIG mode)
under a real agent, runc and conmon. The simulated process table is given the real host
PIDs of the test's containers, so the agent maps them to containers through
``/proc/<pid>/cgroup`` as it would on a GPU node. Every test scrapes the real endpoint.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator

import pytest

from agent.api.cri.runtime.v1 import api_pb2 as pb
from agent.db import DraPreparedDevice
from agent.gpu import GpuEvent
from agent.gpu.simulated import SimulatedBackend
from tests.integration.test_pods import Env, environment, images  # noqa: F401
from tests.support.gpu_node import GPU0, GPU1, MIG0, GpuNode, make_gpu_node
from tests.support.scrape import Scrape, scrape

pytestmark = pytest.mark.integration

MIB = 1024 * 1024


@pytest.fixture
def node(short_dir: str) -> GpuNode:
    return make_gpu_node(os.path.join(short_dir, "gpunode"))


@pytest.fixture
async def gpu_env(short_dir, images, node) -> AsyncIterator[Env]:  # noqa: F811
    keys = {**node.config_keys(), "metrics.min_collect_interval_seconds": 0}
    async with environment(short_dir, images, **keys) as env:
        yield env


async def read(env: Env) -> Scrape:
    assert env.agent.metrics_server is not None
    return await asyncio.to_thread(scrape, env.agent.metrics_server.url)


def backend(env: Env) -> SimulatedBackend:
    simulated = env.agent.gpu.backend
    assert isinstance(simulated, SimulatedBackend)
    return simulated


async def container_pid(env: Env, cid: str) -> int:
    response = await env.cri.runtime.ContainerStatus(
        pb.ContainerStatusRequest(container_id=cid, verbose=True)
    )
    pid = int(json.loads(response.info["info"])["pid"])
    assert pid > 0
    return pid


async def gpu_pod(env: Env, pod: str, container: str, cdi: str) -> tuple[str, str]:
    sid = await env.run_pod(env.sandbox_config(pod))
    cid = await env.run(sid, container, "sleep", "1000", CDI_devices=[pb.CDIDevice(name=cdi)])
    return sid, cid


async def test_gpu_1_carries_its_holder_until_the_container_is_removed(gpu_env):
    env = gpu_env
    _, cid = await gpu_pod(env, "llm-0", "server", "nvidia.com/gpu=1")
    metrics = await read(env)
    held = {"namespace": "test", "pod": "llm-0", "container": "server"}
    holder_families = (
        "DCGM_FI_DEV_FB_USED",
        "model_agent_gpu_memory_used_bytes",
        "model_agent_gpu_healthy",
    )
    for name in holder_families:
        sample = metrics.one(name, gpu="1")
        assert {k: sample.labels[k] for k in held} == held, sample
        assert sample.labels["UUID"] == GPU1
        assert sample.labels["device"] == "nvidia1"
        assert sample.labels["pci_bus_id"] == "00000000:2A:00.0"
        assert sample.labels["dra_claim_name"] == ""
    dcgm = metrics.one("DCGM_FI_DEV_FB_USED", gpu="1")
    assert dcgm.labels["modelName"] == "NVIDIA H100 80GB HBM3"
    assert dcgm.labels["DCGM_FI_DRIVER_VERSION"] == "550.54.15"
    assert metrics.one("model_agent_gpu_memory_used_bytes", gpu="1").labels["model_name"] == (
        "NVIDIA H100 80GB HBM3"
    )
    # GPU 0 is held by no one; its readings are the simulation's, in both units.
    free = metrics.one("DCGM_FI_DEV_GPU_UTIL", gpu="0")
    assert (free.labels["pod"], free.labels["container"]) == ("", "")
    assert free.value in (10, 50, 90)
    used_mib = metrics.value("DCGM_FI_DEV_FB_USED", gpu="0")
    assert used_mib in (1024, 2048)
    total = metrics.value("model_agent_gpu_memory_total_bytes", gpu="0")
    assert total == 81559 * MIB
    assert metrics.value("model_agent_gpu_power_watts", gpu="0") == 300
    assert metrics.value("model_agent_gpu_healthy", gpu="1") == 1
    # GPU 0 has GPM (Hopper): the profiling fields, as DCGM's ratios.
    metrics = await read(env)  # GPM needs two readings (the first one primes it)
    assert metrics.value("DCGM_FI_PROF_SM_ACTIVE", gpu="0") in (0.2, 0.4)
    assert metrics.value("model_agent_gpu_tensor_active_ratio", gpu="0") == pytest.approx(0.1)
    assert not metrics.find("DCGM_FI_PROF_SM_ACTIVE", gpu="1")  # GPU 1 lacks GPM

    await env.cri.runtime.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=0))
    await env.cri.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=cid))
    metrics = await read(env)
    for name in ("DCGM_FI_DEV_FB_USED", "model_agent_gpu_memory_used_bytes"):
        sample = metrics.one(name, gpu="1")
        assert (sample.labels["namespace"], sample.labels["pod"], sample.labels["container"]) == (
            "",
            "",
            "",
        )


async def test_two_containers_time_sharing_a_gpu_get_their_own_series(gpu_env):
    env = gpu_env
    _, first = await gpu_pod(env, "shared-a", "worker", "nvidia.com/gpu=0")
    _, second = await gpu_pod(env, "shared-b", "worker", f"nvidia.com/gpu={GPU0}")
    pids = {first: await container_pid(env, first), second: await container_pid(env, second)}
    backend(env).set_processes(
        [
            {"gpu": GPU0, "pid": pids[first], "used_memory_mib": 512, "sm_util": 30},
            {"gpu": GPU0, "pid": pids[second], "used_memory_mib": 1536, "sm_util": 55},
            # this test process: on the GPU, but in no container of the agent
            {"gpu": GPU0, "pid": os.getpid(), "used_memory_mib": 64, "sm_util": 5},
        ]
    )
    metrics = await read(env)
    memory = {
        s.labels["pod"]: s.value
        for s in metrics.find("model_agent_gpu_container_memory_used_bytes", gpu="0")
    }
    assert memory == {"shared-a": 512 * MIB, "shared-b": 1536 * MIB}
    utilization = {
        s.labels["pod"]: s.value
        for s in metrics.find("model_agent_gpu_container_utilization_ratio", gpu="0")
    }
    assert utilization == {"shared-a": pytest.approx(0.30), "shared-b": pytest.approx(0.55)}
    for sample in metrics.find("model_agent_gpu_container_memory_used_bytes"):
        assert sample.labels["container"] == "worker" and sample.labels["UUID"] == GPU0
    assert metrics.value("model_agent_gpu_unattributed_memory_used_bytes", gpu="0") == 64 * MIB
    # The device's own reading belongs to neither pod: not copied to each.
    device = metrics.one("DCGM_FI_DEV_GPU_UTIL", gpu="0")
    assert (device.labels["namespace"], device.labels["pod"]) == ("", "")
    assert metrics.value("model_agent_gpu_process_utilization_supported", gpu="0") == 1
    # A process that leaves is gone from the next scrape.
    backend(env).set_processes(
        [{"gpu": GPU0, "pid": pids[second], "used_memory_mib": 1536, "sm_util": 55}]
    )
    metrics = await read(env)
    pods = {s.labels["pod"] for s in metrics.find("model_agent_gpu_container_memory_used_bytes")}
    assert pods == {"shared-b"}


async def test_dra_labels_come_from_the_drivers_prepared_devices(gpu_env):
    env = gpu_env
    _, cid = await gpu_pod(env, "claimed", "server", "nvidia.com/gpu=1")
    db = env.agent.db
    assert db is not None
    db.put_dra_claim(
        "uid-1",
        [
            DraPreparedDevice(
                claim_uid="uid-1",
                claim_namespace="test",
                claim_name="gpu-claim",
                driver="gpu.model-agent.io",
                pool="node-a",
                device="gpu-1",
                request="gpu",
                cdi_device="nvidia.com/gpu=1",
                device_uuid=GPU1,
                admin_access=False,
                prepared_at=1,
            )
        ],
    )
    backend(env).set_processes(
        [{"gpu": GPU1, "pid": await container_pid(env, cid), "used_memory_mib": 100}]
    )
    metrics = await read(env)
    expected = {
        "dra_claim_name": "gpu-claim",
        "dra_claim_namespace": "test",
        "dra_driver_name": "gpu.model-agent.io",
        "dra_pool_name": "node-a",
        "dra_device_name": "gpu-1",
    }
    for name in (
        "DCGM_FI_DEV_FB_USED",
        "model_agent_gpu_healthy",
        "model_agent_gpu_container_memory_used_bytes",
    ):
        sample = metrics.one(name, gpu="1")
        assert {k: sample.labels[k] for k in expected} == expected, sample
    assert metrics.one("DCGM_FI_DEV_FB_USED", gpu="0").labels["dra_claim_name"] == ""
    db.delete_dra_claim("uid-1")
    metrics = await read(env)
    assert metrics.one("DCGM_FI_DEV_FB_USED", gpu="1").labels["dra_claim_name"] == ""


async def test_a_lost_gpu_turns_unhealthy_and_xids_are_reported(gpu_env, node):
    env = gpu_env
    backend(env).inject_event(GpuEvent("xid", GPU0, xid=79))
    for _ in range(100):  # the event thread waits up to a second per round
        metrics = await read(env)
        if metrics.find("model_agent_gpu_xid_errors_total", gpu="0"):
            break
        await asyncio.sleep(0.1)
    assert metrics.value("model_agent_gpu_xid_errors_total", gpu="0", xid="79") == 1
    assert metrics.value("DCGM_FI_DEV_XID_ERRORS", gpu="0") == 79
    assert metrics.value("DCGM_FI_DEV_XID_ERRORS", gpu="1") == 0
    with open(node.sim_file) as f:
        text = f.read()
    node.write_simulation(text.replace(f'uuid = "{GPU1}"', f'uuid = "{GPU1}"\nstate = "lost"', 1))
    await asyncio.to_thread(env.agent.gpu.refresh)
    metrics = await read(env)
    assert metrics.value("model_agent_gpu_healthy", gpu="1") == 0
    # XID 79 (fell off the bus) needs a reset: the health monitor, which the device plugin
    # and DRA driver follow, marked GPU 0 unhealthy, and the metric says the same.
    assert metrics.value("model_agent_gpu_healthy", gpu="0") == 0
    assert not metrics.find("DCGM_FI_DEV_FB_USED", gpu="1")  # no readings from a lost GPU


async def test_mig_devices_have_their_own_series_and_no_per_process_utilisation(
    short_dir,
    images,  # noqa: F811
):
    node = make_gpu_node(os.path.join(short_dir, "gpunode"), mig=True)
    keys = {**node.config_keys(), "metrics.min_collect_interval_seconds": 0}
    async with environment(short_dir, images, **keys) as env:
        _, cid = await gpu_pod(env, "mig-pod", "server", "nvidia.com/gpu=1:0")
        backend(env).set_processes(
            [
                {
                    "gpu": GPU1,
                    "mig": MIG0,
                    "pid": await container_pid(env, cid),
                    "used_memory_mib": 700,
                }
            ]
        )
        metrics = await read(env)
        mig = metrics.one("DCGM_FI_DEV_FB_USED", gpu="1", GPU_I_ID="7")
        assert mig.labels["GPU_I_PROFILE"] == "1g.18gb" and mig.labels["UUID"] == GPU1
        assert (mig.labels["pod"], mig.labels["container"]) == ("mig-pod", "server")
        assert mig.value in (100, 200)
        # The parent GPU is held by no one as a whole.
        parent = metrics.one("DCGM_FI_DEV_FB_USED", gpu="1", GPU_I_ID="")
        assert parent.labels["pod"] == ""
        assert not metrics.find("DCGM_FI_DEV_GPU_UTIL", GPU_I_ID="7")  # NVML has none on MIG
        memory = metrics.one("model_agent_gpu_container_memory_used_bytes", GPU_I_ID="7")
        assert memory.value == 700 * MIB and memory.labels["pod"] == "mig-pod"
        # No per-process utilisation on MIG: said so, and not made up from the device.
        assert not metrics.find("model_agent_gpu_container_utilization_ratio")
        assert (
            metrics.value("model_agent_gpu_process_utilization_supported", gpu="1", GPU_I_ID="7")
            == 0
        )
