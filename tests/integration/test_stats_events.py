"""Stats, CRI metrics and container events against real containers."""

from __future__ import annotations

import asyncio
import contextlib
import socket

import grpc
import pytest

from agent.api.cri.runtime.v1 import api_pb2 as pb
from tests.integration.test_pods import environment, images  # noqa: F401  (fixture)

pytestmark = pytest.mark.integration


@pytest.fixture
async def env(short_dir, images):  # noqa: F811
    async with environment(short_dir, images) as env:
        yield env


async def test_a_busy_container_uses_about_one_core(env):
    sid = await env.run_pod()
    cid = await env.run(sid, "burn", "sh", "-c", "while :; do :; done")
    rt = env.cri.runtime
    first = await rt.ContainerStats(pb.ContainerStatsRequest(container_id=cid))
    await asyncio.sleep(2)
    second = await rt.ContainerStats(pb.ContainerStatsRequest(container_id=cid))
    cpu = second.stats.cpu
    assert cpu.usage_core_nano_seconds.value > first.stats.cpu.usage_core_nano_seconds.value
    # Two cores shared with the agent and the test: "about one core" is 0.5..1.3.
    assert 0.5e9 < cpu.usage_nano_cores.value < 1.3e9, cpu.usage_nano_cores.value
    assert second.stats.attributes.id == cid
    assert second.stats.attributes.metadata.name == "burn"


async def test_memory_shows_in_the_working_set(env):
    sid = await env.run_pod()
    # awk keeps a 100 MiB string alive while system() runs.
    program = 'BEGIN { s = sprintf("%104857600s", ""); system("echo held; sleep 1000") }'
    cid = await env.run(sid, "hog", "busybox", "awk", program)
    await env.log(cid, "held", timeout=30)
    stats = (await env.cri.runtime.ContainerStats(pb.ContainerStatsRequest(container_id=cid))).stats
    assert stats.memory.working_set_bytes.value >= 100 << 20
    assert stats.memory.usage_bytes.value >= stats.memory.working_set_bytes.value
    assert stats.memory.rss_bytes.value >= 100 << 20
    assert stats.writable_layer.fs_id.mountpoint.endswith("/containers")
    assert stats.writable_layer.inodes_used.value >= 1


async def test_pod_network_bytes_grow_after_traffic(env):
    sid = await env.run_pod()
    await env.run(sid, "sink", "sh", "-c", "nc -ll -p 9000 > /dev/null")
    status = await env.cri.runtime.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=sid))
    ip = status.status.network.ip

    async def rx() -> int:
        stats = await env.cri.runtime.PodSandboxStats(pb.PodSandboxStatsRequest(pod_sandbox_id=sid))
        return stats.stats.linux.network.default_interface.rx_bytes.value

    before = await rx()
    payload = b"x" * (1 << 20)
    for _ in range(100):
        with contextlib.suppress(OSError):
            with socket.create_connection((ip, 9000), timeout=5) as conn:
                conn.sendall(payload)
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)
    assert await rx() - before >= len(payload)


async def test_removed_containers_and_pods_leave_no_samples_behind(env):
    """The CPU rate's last sample and the cached layer size of each object go with it
    (a node that churns pods for months must not keep one entry per pod it ever ran)."""
    rt = env.cri.runtime
    sid = await env.run_pod()
    cid = await env.run(sid, "steady", "sleep", "1000")
    await rt.ContainerStats(pb.ContainerStatsRequest(container_id=cid))
    await rt.PodSandboxStats(pb.PodSandboxStatsRequest(pod_sandbox_id=sid))
    collector = env.agent.pods._stats
    assert cid in collector._last_cpu and cid in collector._fs and sid in collector._last_cpu
    other = await env.run(sid, "second", "sleep", "1000")
    await rt.ContainerStats(pb.ContainerStatsRequest(container_id=other))
    await rt.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=0))
    await rt.RemoveContainer(pb.RemoveContainerRequest(container_id=cid))
    assert cid not in collector._last_cpu and cid not in collector._fs
    assert other in collector._last_cpu
    await rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sid))
    await rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sid))
    assert not {sid, other} & (set(collector._last_cpu) | set(collector._fs))


async def test_list_and_single_variants_agree(env):
    sid = await env.run_pod()
    cid = await env.run(sid, "steady", "sleep", "1000")
    stopped = await env.run(sid, "done", "true")
    await env.wait_exit(stopped)
    rt = env.cri.runtime
    listed = await rt.ListContainerStats(pb.ListContainerStatsRequest())
    assert [s.attributes.id for s in listed.stats] == [cid]  # running containers only
    filtered = await rt.ListContainerStats(
        pb.ListContainerStatsRequest(filter=pb.ContainerStatsFilter(pod_sandbox_id=sid[:10]))
    )
    single = await rt.ContainerStats(pb.ContainerStatsRequest(container_id=cid))
    assert filtered.stats[0].attributes == single.stats.attributes
    a, b = (
        listed.stats[0].memory.working_set_bytes.value,
        single.stats.memory.working_set_bytes.value,
    )
    assert abs(a - b) < 4 << 20
    streamed = [
        s.attributes.id
        async for m in rt.StreamContainerStats(pb.StreamContainerStatsRequest())
        for s in m.container_stats
    ]
    assert streamed == [cid]

    pod = (await rt.PodSandboxStats(pb.PodSandboxStatsRequest(pod_sandbox_id=sid))).stats
    assert pod.attributes.id == sid
    assert [c.attributes.id for c in pod.linux.containers] == [cid]
    assert pod.linux.process.process_count.value >= 2  # catatonit + sleep
    assert pod.linux.memory.working_set_bytes.value > 0
    pods = await rt.ListPodSandboxStats(pb.ListPodSandboxStatsRequest())
    assert [p.attributes.id for p in pods.stats] == [sid]
    streamed_pods = [
        p.attributes.id
        async for m in rt.StreamPodSandboxStats(pb.StreamPodSandboxStatsRequest())
        for p in m.pod_sandbox_stats
    ]
    assert streamed_pods == [sid]


async def test_cadvisor_metrics(env):
    sid = await env.run_pod()
    cid = await env.run(sid, "measured", "sleep", "1000")
    rt = env.cri.runtime
    descriptors = (await rt.ListMetricDescriptors(pb.ListMetricDescriptorsRequest())).descriptors
    by_name = {d.name: d for d in descriptors}
    for name in (
        "container_cpu_usage_seconds_total",
        "container_memory_working_set_bytes",
        "container_network_receive_bytes_total",
        "container_processes",
        "container_fs_usage_bytes",
        "container_oom_events_total",
    ):
        assert name in by_name
    metrics = (await rt.ListPodSandboxMetrics(pb.ListPodSandboxMetricsRequest())).pod_metrics
    (pod,) = metrics
    assert pod.pod_sandbox_id == sid
    (container,) = pod.container_metrics
    assert container.container_id == cid
    samples = {m.name: m for m in container.metrics}
    working_set = samples["container_memory_working_set_bytes"]
    labels = dict(zip(by_name[working_set.name].label_keys, working_set.label_values, strict=True))
    assert labels["container"] == "measured"
    assert labels["id"] == cid
    assert working_set.value.value > 0
    assert samples["container_processes"].value.value >= 1
    network = [m for m in pod.metrics if m.name == "container_network_receive_bytes_total"]
    assert network
    keys = by_name["container_network_receive_bytes_total"].label_keys
    assert {dict(zip(keys, m.label_values, strict=True))["interface"] for m in network} == {"eth0"}


async def test_container_events_stream(env):
    rt = env.cri.runtime
    received: list[pb.ContainerEventResponse] = []
    stream = rt.GetContainerEvents(pb.GetEventsRequest())

    async def collect() -> None:
        async for event in stream:
            received.append(event)

    collector = asyncio.ensure_future(collect())
    await asyncio.sleep(0.2)
    sid = await env.run_pod()
    cid = await env.run(sid, "evented", "sleep", "1000")
    await rt.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=1))
    await rt.RemoveContainer(pb.RemoveContainerRequest(container_id=cid))
    for _ in range(100):
        if len([e for e in received if e.container_id == cid]) >= 4:
            break
        await asyncio.sleep(0.05)
    stream.cancel()
    with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
        await collector
    mine = [e for e in received if e.container_id == cid]
    assert [e.container_event_type for e in mine] == [
        pb.CONTAINER_CREATED_EVENT,
        pb.CONTAINER_STARTED_EVENT,
        pb.CONTAINER_STOPPED_EVENT,
        pb.CONTAINER_DELETED_EVENT,
    ]
    assert all(e.pod_sandbox_status.id == sid for e in mine)
    started = mine[1]
    assert [c.state for c in started.containers_statuses if c.id == cid] == [pb.CONTAINER_RUNNING]
    assert all(e.created_at > 0 for e in mine)
    sandbox_events = [e for e in received if e.container_id == sid]
    assert sandbox_events and sandbox_events[0].container_event_type == pb.CONTAINER_STARTED_EVENT
