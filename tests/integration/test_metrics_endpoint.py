"""``/metrics`` end to end: a real Prometheus scraping the agent, promtool, runtime metrics.

A real ``prometheus`` (the Debian package) started on 127.0.0.1 scrapes a real agent
running real containers on the simulated GPU node every second; PromQL shaped like the
chart's prometheus-adapter rule and KEDA trigger (``tests/unit/test_chart.py`` pins the
chart to these shapes) answers per pod. ``promtool check metrics`` judges the whole
exposition. The runtime metrics follow real pods: cold start, start latency, OOM kills,
states, pulls by registry, restarts and recovery, and the CRI event stream counted but
not timed.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator

import pytest

from agent.api.cri.runtime.v1 import api_pb2 as pb
from agent.gpu.simulated import SimulatedBackend
from agent.metrics import names
from tests.integration.test_pods import Env, environment, images  # noqa: F401
from tests.support.gpu_node import GPU0, GPU1, GpuNode, make_gpu_node, simulation_toml
from tests.support.prometheus import BINARY, Prometheus, promtool_check_metrics
from tests.support.scrape import Scrape, scrape

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not os.path.exists(BINARY), reason="prometheus (Debian package) is not installed"
    ),
]

MIB = 1024 * 1024
#: The chart's prometheus-adapter rule (metricsQuery) as the adapter expands it for an HPA
#: asking for the pods of namespace "test": <<.Series>>, <<.LabelMatchers>>, <<.GroupBy>>.
ADAPTER_QUERY = 'sum({series}{{namespace="test",pod=~"llm-a|llm-b"}}) by (pod)'
#: The chart's KEDA trigger query for a Deployment "llm" (model-agent.signalQuery).
KEDA_QUERY = 'sum({series}{{namespace="test",pod=~"llm-.*"}})'


@pytest.fixture
def node(short_dir: str) -> GpuNode:
    return make_gpu_node(os.path.join(short_dir, "gpunode"))


@pytest.fixture
async def gpu_env(short_dir, images, node) -> AsyncIterator[Env]:  # noqa: F811
    keys = {**node.config_keys(), "metrics.min_collect_interval_seconds": 0}
    async with environment(short_dir, images, **keys) as env:
        yield env


async def read(env: Env, **kwargs: object) -> Scrape:
    assert env.agent.metrics_server is not None
    return await asyncio.to_thread(scrape, env.agent.metrics_server.url, **kwargs)


async def container_pid(env: Env, cid: str) -> int:
    response = await env.cri.runtime.ContainerStatus(
        pb.ContainerStatusRequest(container_id=cid, verbose=True)
    )
    return int(json.loads(response.info["info"])["pid"])


async def serving_pods(env: Env) -> dict[str, str]:
    """Two pods of a Deployment "llm", each with a server on its own GPU, busy on it."""
    cids = {}
    for pod, gpu in (("llm-a", "0"), ("llm-b", "1")):
        sid = await env.run_pod(env.sandbox_config(pod))
        cids[pod] = await env.run(
            sid,
            "server",
            "sleep",
            "1000",
            CDI_devices=[pb.CDIDevice(name=f"nvidia.com/gpu={gpu}")],
        )
    simulated = env.agent.gpu.backend
    assert isinstance(simulated, SimulatedBackend)
    simulated.set_processes(
        [
            {
                "gpu": GPU0,
                "pid": await container_pid(env, cids["llm-a"]),
                "used_memory_mib": 2048,
                "sm_util": 40,
            },
            {
                "gpu": GPU1,
                "pid": await container_pid(env, cids["llm-b"]),
                "used_memory_mib": 4096,
                "sm_util": 80,
            },
        ]
    )
    return cids


async def test_prometheus_answers_the_autoscaling_queries_per_pod(gpu_env, short_dir):
    env = gpu_env
    await serving_pods(env)
    assert env.agent.metrics_server is not None
    target = env.agent.metrics_server.url.removeprefix("http://").removesuffix("/metrics")
    with Prometheus(os.path.join(short_dir, "prometheus"), [target]) as prometheus:
        utilization = names.GPU_CONTAINER_UTILIZATION_RATIO
        per_pod = await asyncio.to_thread(
            prometheus.wait_for, ADAPTER_QUERY.format(series=utilization), 2
        )
        values = {r["metric"]["pod"]: float(r["value"][1]) for r in per_pod}
        assert values == {"llm-a": pytest.approx(0.4), "llm-b": pytest.approx(0.8)}, per_pod
        memory = names.GPU_CONTAINER_MEMORY_USED_BYTES
        per_pod = await asyncio.to_thread(
            prometheus.wait_for, ADAPTER_QUERY.format(series=memory), 2
        )
        values = {r["metric"]["pod"]: float(r["value"][1]) for r in per_pod}
        assert values == {"llm-a": 2048 * MIB, "llm-b": 4096 * MIB}
        # KEDA's trigger sums over the Deployment's pods (AverageValue divides by replicas).
        (total,) = await asyncio.to_thread(prometheus.query, KEDA_QUERY.format(series=utilization))
        assert float(total["value"][1]) == pytest.approx(1.2)
        # The DCGM names a dashboard joins on: the holder is the pod, natively.
        dcgm = await asyncio.to_thread(prometheus.query, 'DCGM_FI_DEV_FB_USED{pod="llm-b"}')
        assert [r["metric"]["gpu"] for r in dcgm] == ["1"]
        (up,) = await asyncio.to_thread(prometheus.query, 'up{job="model-agent"}')
        assert up["value"][1] == "1"


async def test_the_exposition_passes_promtool_but_for_dcgms_own_names(gpu_env, node):
    env = gpu_env
    # GPU 0 reports PCIe replays, so DCGM_FI_DEV_PCIE_REPLAY_COUNTER is exported too.
    node.write_simulation(
        simulation_toml().replace("gpu_temp_c = 41\n", "gpu_temp_c = 41\npcie_replay_count = 3\n")
    )
    await serving_pods(env)
    metrics = await read(env)
    assert metrics.find("container_cpu_usage_seconds_total", pod="llm-a")
    assert metrics.value("DCGM_FI_DEV_PCIE_REPLAY_COUNTER", UUID=GPU0) == 3
    code, complaints = await asyncio.to_thread(promtool_check_metrics, metrics.text)
    reasons = {line.split(" ", 1)[1] for line in complaints}
    # Only DCGM-exporter's own names, kept as dashboards know them: modelName and
    # DCGM_FI_DEV_PCIE_REPLAY_COUNTER.
    assert reasons == names.DCGM_LINT_EXCEPTIONS, complaints
    assert all(line.startswith("DCGM_FI_") for line in complaints), complaints
    assert code == 3  # lint findings, no parse error


async def test_without_dcgm_names_the_exposition_is_lint_clean(short_dir, images, node):  # noqa: F811
    keys = {
        **node.config_keys(),
        "metrics.min_collect_interval_seconds": 0,
        "metrics.dcgm_names": False,
    }
    async with environment(short_dir, images, **keys) as env:
        await serving_pods(env)
        metrics = await read(env)
        assert not [s for s in metrics.samples if s.name.startswith("DCGM_")]
        assert metrics.find(names.GPU_CONTAINER_MEMORY_USED_BYTES, pod="llm-a")
        code, complaints = await asyncio.to_thread(promtool_check_metrics, metrics.text)
        assert (code, complaints) == (0, [])


async def test_container_metrics_under_cadvisor_names_and_their_switch(short_dir, images):  # noqa: F811
    keys = {"metrics.min_collect_interval_seconds": 0}
    async with environment(short_dir, images, **keys) as env:
        sid = await env.run_pod(env.sandbox_config("web"))
        cid = await env.run(sid, "app", "sh", "-c", "while :; do :; done")
        await asyncio.sleep(0.5)
        metrics = await read(env)
        cpu = metrics.one("container_cpu_usage_seconds_total", pod="web", container="app")
        assert cpu.labels["namespace"] == "test" and cpu.labels["id"] == cid
        assert cpu.labels["image"] == images["busybox"]
        assert 0 < cpu.value < 10 and cpu.value != int(cpu.value)  # seconds, not truncated
        # The pod's own cgroup, as cAdvisor reports it: container="", holding the container.
        pod_cpu = metrics.one("container_cpu_usage_seconds_total", pod="web", container="")
        assert pod_cpu.value >= cpu.value and pod_cpu.labels["id"] == sid
        assert metrics.value("container_memory_working_set_bytes", pod="web", container="") > 0
        fs = metrics.one("container_fs_usage_bytes", container="app")
        assert fs.labels["device"] and fs.value > 0
        assert metrics.value("container_memory_working_set_bytes", container="app") > 0
        assert metrics.find("container_network_receive_bytes_total", pod="web", interface="eth0")
        assert metrics.types["container_memory_failcnt"] == "unknown"  # cAdvisor's name kept
        assert metrics.value("model_agent_containers", state="running") == 1
        assert metrics.value("model_agent_pods", state="ready") == 1
        # A kubelet names the image by the id PullImage returned: dashboards still see
        # the name, as with containerd (ContainerStatus too).
        status = await env.cri.images.ImageStatus(
            pb.ImageStatusRequest(image=pb.ImageSpec(image=images["busybox"]))
        )
        by_id = pb.ImageSpec(image=status.image.id, user_specified_image=images["busybox"])
        config = env.container_config("sidecar", "sleep", "100")
        config.image.CopyFrom(by_id)
        kubelet_style = await env.create(sid, config)
        await env.start(kubelet_style)
        metrics = await read(env)
        sidecar = metrics.one("container_cpu_usage_seconds_total", pod="web", container="sidecar")
        assert sidecar.labels["image"] == images["busybox"]
        assert (await env.status(kubelet_style)).image.image == images["busybox"]
    async with environment(
        short_dir, images, **keys, **{"metrics.container_metrics": False}
    ) as env:
        await env.run(await env.run_pod(), "app", "sleep", "100")
        metrics = await read(env)
        assert not [s for s in metrics.samples if s.name.startswith("container_")]
        assert metrics.value("model_agent_containers", state="running") == 1


async def test_runtime_metrics_follow_pods_pulls_and_restarts(short_dir, images, registry):  # noqa: F811
    keys = {"metrics.min_collect_interval_seconds": 0}
    async with environment(short_dir, images, **keys) as env:
        rt = env.cri.runtime
        events = rt.GetContainerEvents(pb.GetEventsRequest())
        received: list[pb.ContainerEventResponse] = []

        async def follow() -> None:
            async for event in events:
                received.append(event)

        follower = asyncio.ensure_future(follow())
        await asyncio.sleep(0.3)
        # A cold pod: the kubelet pulls for it (naming it), then starts its first container.
        config = env.sandbox_config("cold")
        sid = await env.run_pod(config)
        await env.cri.images.PullImage(
            pb.PullImageRequest(image=pb.ImageSpec(image=images["model"]), sandbox_config=config)
        )
        await env.run(sid, "first", "sleep", "1000", image="model")
        await env.run(sid, "second", "sleep", "1000")
        # And one the kernel OOM-kills.
        resources = pb.LinuxContainerResources(memory_limit_in_bytes=16 << 20)
        hog = await env.create(
            sid,
            env.container_config(
                "hog",
                "sh",
                "-c",
                "x=$(head -c 67108864 /dev/zero | tr '\\0' a); echo $x | wc -c",
                linux=pb.LinuxContainerConfig(resources=resources),
            ),
        )
        await env.start(hog)
        assert (await env.wait_exit(hog, timeout=30)).reason == "OOMKilled"
        await asyncio.sleep(0.2)
        metrics = await read(env)
        assert metrics.value("model_agent_pod_cold_start_duration_seconds_count") == 1
        assert 0 < metrics.value("model_agent_pod_cold_start_duration_seconds_sum") < 60
        assert metrics.value("model_agent_container_start_duration_seconds_count") == 3
        assert metrics.value("model_agent_container_oom_kills_total") == 1
        assert metrics.value("model_agent_containers", state="running") == 2
        assert metrics.value("model_agent_containers", state="exited") == 1
        assert metrics.value("model_agent_pods", state="ready") == 1
        assert (
            metrics.value("model_agent_image_pulls_total", registry=registry.host, result="success")
            >= 1
        )
        assert metrics.value("model_agent_image_pull_bytes_total", registry=registry.host) > 0
        assert metrics.value("model_agent_image_pulls_in_flight", registry=registry.host) == 0
        assert metrics.value("model_agent_image_store_bytes") > 0
        assert metrics.value("model_agent_images") >= 2
        assert metrics.find("process_cpu_seconds_total") and metrics.find("python_info")
        # The event stream is open: counted as in flight, its messages counted, not timed.
        assert received
        assert (
            metrics.value("model_agent_cri_operations_in_flight", operation="GetContainerEvents")
            == 1
        )
        sent = metrics.value(
            "model_agent_cri_stream_messages_total", operation="GetContainerEvents"
        )
        assert sent >= len(received) > 0
        assert not metrics.find(
            "model_agent_cri_operation_duration_seconds_count", operation="GetContainerEvents"
        )
        assert (
            metrics.value(
                "model_agent_cri_operation_duration_seconds_count", operation="StartContainer"
            )
            == 3
        )
        events.cancel()
        await asyncio.gather(follower, return_exceptions=True)
        for _ in range(50):
            metrics = await read(env)
            if metrics.find("model_agent_cri_operations_total", operation="GetContainerEvents"):
                break
            await asyncio.sleep(0.1)
        assert (
            metrics.value(
                "model_agent_cri_operations_total", operation="GetContainerEvents", code="CANCELLED"
            )
            == 1
        )
        assert metrics.value("model_agent_restarts_total") == 0
        await env.restart_agent()
        metrics = await read(env)
        assert metrics.value("model_agent_restarts_total") == 1
        assert 0 < metrics.value("model_agent_recovery_duration_seconds") < 60
        assert metrics.value("model_agent_recovered_objects", kind="pods") == 1
        assert metrics.value("model_agent_recovered_objects", kind="containers") == 3
        assert metrics.value("model_agent_recovered_objects", kind="running_containers") == 2
        assert metrics.value("model_agent_recovered_objects", kind="images") >= 2
