"""Runtime metrics from container events made here, the CRI call metrics, and the
cAdvisor-named families' types."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from agent.metrics import RpcMetrics, RuntimeMetrics
from agent.metrics.containers import container_families
from agent.metrics.exposition import render
from agent.pods import (
    CgroupReading,
    ContainerEvent,
    ContainerRecord,
    ContainerState,
    ContainerUsage,
    EventKind,
    PodUsage,
    SandboxRecord,
    SandboxState,
    SubscriberTooSlow,
    model,
)

S = 10**9


def sandbox(uid: str = "uid-1") -> SandboxRecord:
    meta = model.PodMetadata(name="pod", uid=uid, namespace="ns")
    return SandboxRecord("sb", model.SandboxConfig(metadata=meta), SandboxState.READY, 1, "runc")


def container(cid: str, *, created: int, started: int = 0, reason: str = "") -> ContainerRecord:
    state = ContainerState.RUNNING if started and not reason else ContainerState.EXITED
    return ContainerRecord(
        id=cid,
        sandbox_id="sb",
        config=model.ContainerConfig(name=cid, attempt=0, image="img"),
        image_id="sha256:i",
        image_ref="img",
        state=state if started else ContainerState.CREATED,
        created_at=created,
        log_path="",
        handler="runc",
        started_at=started,
        reason=reason,
    )


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def started(cid: str, *containers: ContainerRecord, uid: str = "uid-1") -> ContainerEvent:
    return ContainerEvent(cid, EventKind.STARTED, 0, sandbox(uid), containers)


def test_start_latency_and_the_cold_start_of_a_pod_that_pulled():
    registry = CollectorRegistry()
    metrics = RuntimeMetrics(registry)
    metrics.pull_requested("uid-1", at_ns=100 * S)
    metrics.pull_requested("uid-1", at_ns=105 * S)  # a later pull of the same pod: the first counts
    metrics.pull_requested("")  # a pull naming no pod
    first = container("a", created=110 * S, started=112 * S)
    metrics.observe(started("a", first))
    second = container("b", created=113 * S, started=113 * S + S // 2)
    metrics.observe(started("b", first, second))
    assert value(registry, "model_agent_container_start_duration_seconds_count") == 2
    assert value(registry, "model_agent_container_start_duration_seconds_sum") == 2.5
    assert value(registry, "model_agent_pod_cold_start_duration_seconds_count") == 1
    assert value(registry, "model_agent_pod_cold_start_duration_seconds_sum") == 12
    # A pod whose images were all there pulled nothing: no cold start.
    warm = container("c", created=200 * S, started=201 * S)
    metrics.observe(started("c", warm, uid="uid-2"))
    assert value(registry, "model_agent_pod_cold_start_duration_seconds_count") == 1


def test_pull_starts_of_removed_pods_are_forgotten():
    registry = CollectorRegistry()
    metrics = RuntimeMetrics(registry)
    metrics.pull_requested("uid-1", at_ns=100 * S)
    metrics.observe(ContainerEvent("sb", EventKind.DELETED, 0, sandbox(), ()))
    metrics.observe(started("a", container("a", created=110 * S, started=111 * S)))
    assert value(registry, "model_agent_pod_cold_start_duration_seconds_count") == 0


def test_oom_kills_restarts_and_recovery():
    registry = CollectorRegistry()
    metrics = RuntimeMetrics(registry)
    killed = container("a", created=1, started=2, reason="OOMKilled")
    metrics.observe(ContainerEvent("a", EventKind.STOPPED, 0, sandbox(), (killed,)))
    done = container("b", created=1, started=2, reason="Completed")
    metrics.observe(ContainerEvent("b", EventKind.STOPPED, 0, sandbox(), (done,)))
    metrics.observe(ContainerEvent("sb", EventKind.STOPPED, 0, sandbox(), (killed, done)))
    assert value(registry, "model_agent_container_oom_kills_total") == 1
    metrics.agent_started(3)
    metrics.recovery_finished(1.5, {"pods": 2, "containers": 5})
    assert value(registry, "model_agent_restarts_total") == 3
    assert value(registry, "model_agent_recovery_duration_seconds") == 1.5
    assert value(registry, "model_agent_recovered_objects", kind="containers") == 5


async def test_watch_follows_the_stream_again_after_being_dropped():
    registry = CollectorRegistry()
    metrics = RuntimeMetrics(registry)
    calls = 0

    async def subscribe() -> AsyncIterator[ContainerEvent]:
        nonlocal calls
        calls += 1
        killed = container(f"k{calls}", created=1, started=2, reason="OOMKilled")
        yield ContainerEvent(killed.id, EventKind.STOPPED, 0, sandbox(), (killed,))
        if calls == 1:
            raise SubscriberTooSlow("behind")
        await asyncio.Event().wait()

    task = asyncio.ensure_future(metrics.watch(subscribe))
    for _ in range(100):
        if value(registry, "model_agent_container_oom_kills_total") == 2:
            break
        await asyncio.sleep(0.02)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert calls == 2
    assert value(registry, "model_agent_container_oom_kills_total") == 2


def test_long_lived_streams_are_counted_not_timed():
    registry = CollectorRegistry()
    rpc = RpcMetrics(registry, "1.0")
    labels = {"operation": "GetContainerEvents"}
    rpc.started("GetContainerEvents")
    rpc.message_sent("GetContainerEvents")
    assert value(registry, "model_agent_cri_operations_in_flight", **labels) == 1
    rpc.finished("GetContainerEvents", "CANCELLED", 86400.0)
    rpc.started("Version")
    rpc.finished("Version", "OK", 0.002)
    assert value(registry, "model_agent_cri_operations_total", code="CANCELLED", **labels) == 1
    assert value(registry, "model_agent_cri_stream_messages_total", **labels) == 1
    assert value(registry, "model_agent_cri_operation_duration_seconds_count", **labels) is None
    assert (
        value(registry, "model_agent_cri_operation_duration_seconds_count", operation="Version")
        == 1
    )
    assert value(registry, "model_agent_cri_operations_in_flight", **labels) == 0


def test_cadvisor_families_keep_cadvisors_names_under_prometheus_types():
    record = container("a", created=1, started=2 * S)
    reading = CgroupReading(cpu_usage_ns=1_500_000_000, memory_failcnt=4, memory_working_set=9)
    usage = ContainerUsage(record, 3 * S, reading, None, None)
    pod = PodUsage(sandbox(), 3 * S, None, None, {}, [usage])
    text = render(container_families([pod]), openmetrics=False)
    found = {f.name: f for f in text_string_to_metric_families(text)}
    cpu = found["container_cpu_usage_seconds"]
    assert cpu.type == "counter"
    assert [s.value for s in cpu.samples] == [1.5]  # exact seconds, not CRI's whole ones
    assert cpu.samples[0].labels["namespace"] == "ns" and cpu.samples[0].labels["pod"] == "pod"
    assert found["container_memory_failcnt"].type == "unknown"
    assert found["container_memory_working_set_bytes"].type == "gauge"
    assert found["container_start_time_seconds"].samples[0].value == 2


def test_a_pod_whose_pulls_fetched_nothing_is_no_cold_start():
    registry = CollectorRegistry()
    metrics = RuntimeMetrics(registry)
    metrics.pull_requested("uid-1", 100 * S, False)  # imagePullPolicy: Always, cached
    metrics.observe(started("a", container("a", created=110 * S, started=111 * S)))
    assert value(registry, "model_agent_pod_cold_start_duration_seconds_count") == 0
    # A cached pull then one that fetched: cold, timed from the pod's first pull.
    metrics.pull_requested("uid-2", 200 * S, False)
    metrics.pull_requested("uid-2", 203 * S, True)
    metrics.observe(started("b", container("b", created=210 * S, started=212 * S), uid="uid-2"))
    assert value(registry, "model_agent_pod_cold_start_duration_seconds_count") == 1
    assert value(registry, "model_agent_pod_cold_start_duration_seconds_sum") == 12
