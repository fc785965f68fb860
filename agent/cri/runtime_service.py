"""``runtime.v1.RuntimeService``: each RPC is a short recipe over domain objects.

RPCs not overridden here fall through to the generated base class, which the
interceptor answers with ``UNIMPLEMENTED`` and a message naming the RPC.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from agent._util.serde import to_dict
from agent.api.cri.runtime.v1 import api_pb2 as pb, api_pb2_grpc as pb_grpc
from agent.config import Config
from agent.cri import convert
from agent.errors import FailedPrecondition, InvalidArgument, Unavailable
from agent.health import Condition, NodeHealth
from agent.metrics import cadvisor
from agent.pods.events import SubscriberTooSlow
from agent.pods.service import PodService
from agent.pods.state import ContainerState
from agent.streaming.server import StreamingServer
from agent.streaming.tokens import AttachRequest, ExecRequest, PortForwardRequest

__all__ = ["CRI_API_VERSION", "RUNTIME_NAME", "RuntimeService"]

#: The kubelet refuses any runtime that does not answer exactly this (kuberuntime_manager.go).
CRI_API_VERSION = "0.1.0"
RUNTIME_NAME = "model-agent"

Context = grpc.aio.ServicerContext[Any, Any]

#: Items per message of the Stream* RPCs; keeps each message far below 16 MiB.
_STREAM_BATCH = 100


class _StatsRpcs:
    """Stats, metrics and events (mixed into RuntimeService)."""

    _pods: PodService

    async def _container_stats(self, f: pb.ContainerStatsFilter | None) -> list[pb.ContainerStats]:
        records = list(self._pods.store.containers.values())
        if f is not None:
            if f.id:
                records = [r for r in records if r.id.startswith(f.id)]
            if f.pod_sandbox_id:
                records = [r for r in records if r.sandbox_id.startswith(f.pod_sandbox_id)]
            if f.label_selector:
                records = [
                    r
                    for r in records
                    if all(r.config.labels.get(k) == v for k, v in f.label_selector.items())
                ]
        records = [self._pods.containers.status(r.id) for r in records]
        records = [r for r in records if r.state is ContainerState.RUNNING]
        return [convert.container_stats_to_pb(await self._pods.container_usage(r)) for r in records]

    async def ContainerStats(
        self, request: pb.ContainerStatsRequest, context: Context
    ) -> pb.ContainerStatsResponse:
        record = self._pods.containers.status(request.container_id)
        usage = await self._pods.container_usage(record)
        return pb.ContainerStatsResponse(stats=convert.container_stats_to_pb(usage))

    async def ListContainerStats(
        self, request: pb.ListContainerStatsRequest, context: Context
    ) -> pb.ListContainerStatsResponse:
        f = request.filter if request.HasField("filter") else None
        return pb.ListContainerStatsResponse(stats=await self._container_stats(f))

    async def StreamContainerStats(
        self, request: pb.StreamContainerStatsRequest, context: Context
    ) -> AsyncIterator[pb.StreamContainerStatsResponse]:
        f = request.filter if request.HasField("filter") else None
        stats = await self._container_stats(f)
        for start in range(0, len(stats), _STREAM_BATCH):
            yield pb.StreamContainerStatsResponse(
                container_stats=stats[start : start + _STREAM_BATCH]
            )

    async def _pod_usages(
        self, f: pb.PodSandboxStatsFilter | None, *, processes: bool = False
    ) -> list[Any]:
        records = list(self._pods.store.sandboxes.values())
        if f is not None:
            if f.id:
                records = [r for r in records if r.id.startswith(f.id)]
            if f.label_selector:
                records = [
                    r
                    for r in records
                    if all(r.config.labels.get(k) == v for k, v in f.label_selector.items())
                ]
        records = [r for r in records if self._pods.sandboxes.status(r.id).state.value == "READY"]
        return [await self._pods.pod_usage(r, processes=processes) for r in records]

    async def PodSandboxStats(
        self, request: pb.PodSandboxStatsRequest, context: Context
    ) -> pb.PodSandboxStatsResponse:
        record = self._pods.sandboxes.status(request.pod_sandbox_id)
        usage = await self._pods.pod_usage(record)
        return pb.PodSandboxStatsResponse(stats=convert.pod_stats_to_pb(usage))

    async def ListPodSandboxStats(
        self, request: pb.ListPodSandboxStatsRequest, context: Context
    ) -> pb.ListPodSandboxStatsResponse:
        f = request.filter if request.HasField("filter") else None
        usages = await self._pod_usages(f)
        return pb.ListPodSandboxStatsResponse(stats=[convert.pod_stats_to_pb(u) for u in usages])

    async def StreamPodSandboxStats(
        self, request: pb.StreamPodSandboxStatsRequest, context: Context
    ) -> AsyncIterator[pb.StreamPodSandboxStatsResponse]:
        f = request.filter if request.HasField("filter") else None
        stats = [convert.pod_stats_to_pb(u) for u in await self._pod_usages(f)]
        for start in range(0, len(stats), _STREAM_BATCH):
            yield pb.StreamPodSandboxStatsResponse(
                pod_sandbox_stats=stats[start : start + _STREAM_BATCH]
            )

    async def ListMetricDescriptors(
        self, request: pb.ListMetricDescriptorsRequest, context: Context
    ) -> pb.ListMetricDescriptorsResponse:
        return pb.ListMetricDescriptorsResponse(
            descriptors=convert.descriptors_to_pb(cadvisor.DESCRIPTORS)
        )

    async def ListPodSandboxMetrics(
        self, request: pb.ListPodSandboxMetricsRequest, context: Context
    ) -> pb.ListPodSandboxMetricsResponse:
        usages = await self._pod_usages(None, processes=True)
        return pb.ListPodSandboxMetricsResponse(
            pod_metrics=[convert.pod_metrics_to_pb(u) for u in usages]
        )

    async def StreamPodSandboxMetrics(
        self, request: pb.StreamPodSandboxMetricsRequest, context: Context
    ) -> AsyncIterator[pb.StreamPodSandboxMetricsResponse]:
        usages = await self._pod_usages(None, processes=True)
        metrics = [convert.pod_metrics_to_pb(u) for u in usages]
        for start in range(0, len(metrics), _STREAM_BATCH):
            yield pb.StreamPodSandboxMetricsResponse(
                pod_sandbox_metrics=metrics[start : start + _STREAM_BATCH]
            )

    async def GetContainerEvents(
        self, request: pb.GetEventsRequest, context: Context
    ) -> AsyncIterator[pb.ContainerEventResponse]:
        try:
            async for event in self._pods.events.subscribe():
                yield convert.event_to_pb(event)
        except SubscriberTooSlow as exc:
            raise Unavailable(str(exc)) from None


class RuntimeService(_StatsRpcs, pb_grpc.RuntimeServiceServicer):
    def __init__(
        self,
        *,
        config: Config,
        health: NodeHealth,
        ready: asyncio.Event,
        version: str,
        pulls: Callable[[], list[dict[str, object]]],
        pods: PodService,
        streaming: StreamingServer,
    ) -> None:
        self._streaming = streaming
        self._config = config
        self._health = health
        self._ready = ready
        self._version = version
        self._pulls = pulls
        self._pods = pods

    async def Version(self, request: pb.VersionRequest, context: Context) -> pb.VersionResponse:
        return pb.VersionResponse(
            version=CRI_API_VERSION,
            runtime_name=RUNTIME_NAME,
            runtime_version=self._version,
            runtime_api_version="v1",
        )

    async def Status(self, request: pb.StatusRequest, context: Context) -> pb.StatusResponse:
        report = await self._health.check(verbose=request.verbose)
        runtime = report.runtime
        if not self._ready.is_set():
            runtime = Condition(False, "AgentRecovering", "model-agent is recovering its state")
        conditions = [
            pb.RuntimeCondition(
                type="RuntimeReady",
                status=runtime.ready,
                reason=runtime.reason,
                message=runtime.message,
            ),
            pb.RuntimeCondition(
                type="NetworkReady",
                status=report.network.ready,
                reason=report.network.reason,
                message=report.network.message,
            ),
        ]
        # The default handler is listed under "" as the kubelet expects, then by name.
        default = self._config.runtime.default_handler
        names = ([""] if default in report.handlers else []) + sorted(report.handlers)
        handlers = [
            pb.RuntimeHandler(name=name, features=pb.RuntimeHandlerFeatures()) for name in names
        ]
        info: dict[str, str] = {}
        if request.verbose:
            info = {
                "config": json.dumps(dataclasses.asdict(self._config), sort_keys=True),
                "versions": json.dumps(report.versions, sort_keys=True),
                "cniConfig": report.network_config,
                "pulls": json.dumps(self._pulls()),
            }
        return pb.StatusResponse(
            status=pb.RuntimeStatus(conditions=conditions),
            info=info,
            runtime_handlers=handlers,
            features=pb.RuntimeFeatures(),
        )

    async def RuntimeConfig(
        self, request: pb.RuntimeConfigRequest, context: Context
    ) -> pb.RuntimeConfigResponse:
        driver = pb.CGROUPFS if self._config.runtime.cgroup_driver == "cgroupfs" else pb.SYSTEMD
        return pb.RuntimeConfigResponse(linux=pb.LinuxRuntimeConfiguration(cgroup_driver=driver))

    async def UpdateRuntimeConfig(
        self, request: pb.UpdateRuntimeConfigRequest, context: Context
    ) -> pb.UpdateRuntimeConfigResponse:
        cidr = request.runtime_config.network_config.pod_cidr
        if cidr:
            await self._pods.network.update_pod_cidr(cidr)
        return pb.UpdateRuntimeConfigResponse()

    # -- pod sandboxes -------------------------------------------------------------

    async def RunPodSandbox(
        self, request: pb.RunPodSandboxRequest, context: Context
    ) -> pb.RunPodSandboxResponse:
        convert.require(request, "config")
        config = convert.sandbox_config_from_pb(request.config, request.runtime_handler)
        sandbox_id = await self._pods.sandboxes.run(config)
        return pb.RunPodSandboxResponse(pod_sandbox_id=sandbox_id)

    async def StopPodSandbox(
        self, request: pb.StopPodSandboxRequest, context: Context
    ) -> pb.StopPodSandboxResponse:
        # api.proto: idempotent; an unknown sandbox is not an error.
        _require_id(request.pod_sandbox_id, "pod_sandbox_id")
        await self._pods.sandboxes.stop(request.pod_sandbox_id)
        return pb.StopPodSandboxResponse()

    async def RemovePodSandbox(
        self, request: pb.RemovePodSandboxRequest, context: Context
    ) -> pb.RemovePodSandboxResponse:
        # api.proto: idempotent; an unknown sandbox is not an error.
        _require_id(request.pod_sandbox_id, "pod_sandbox_id")
        await self._pods.sandboxes.remove(request.pod_sandbox_id)
        return pb.RemovePodSandboxResponse()

    async def PodSandboxStatus(
        self, request: pb.PodSandboxStatusRequest, context: Context
    ) -> pb.PodSandboxStatusResponse:
        record = self._pods.sandboxes.status(request.pod_sandbox_id)
        containers = [
            convert.container_status_to_pb(self._pods.containers.status(c.id))
            for c in self._pods.store.containers_of(record.id)
        ]
        info = {}
        if request.verbose:
            info["info"] = json.dumps(
                {
                    "pid": record.infra_pid,
                    "netns": record.netns,
                    "runtimeHandler": record.handler,
                    "cgroupsPath": record.cgroup_path,
                    "message": record.message,
                    "config": to_dict(record.config),
                },
                sort_keys=True,
            )
        return pb.PodSandboxStatusResponse(
            status=convert.sandbox_status_to_pb(record),
            info=info,
            containers_statuses=containers,
            timestamp=time.time_ns(),
        )

    def _sandboxes(
        self, request: pb.ListPodSandboxRequest | pb.StreamPodSandboxesRequest
    ) -> list[pb.PodSandbox]:
        f = request.filter
        records = list(self._pods.store.sandboxes.values())
        if f.id:
            records = [r for r in records if r.id.startswith(f.id)]
        for record in records:
            if record.state.value == "READY":
                self._pods.sandboxes.status(record.id)  # notices a dead infra
        records = [
            self._pods.store.sandboxes[r.id] for r in records if r.id in self._pods.store.sandboxes
        ]
        if f.HasField("state"):
            wanted = f.state.state
            records = [r for r in records if convert.sandbox_to_pb(r).state == wanted]
        if f.label_selector:
            records = [
                r
                for r in records
                if all(r.config.labels.get(k) == v for k, v in f.label_selector.items())
            ]
        records.sort(key=lambda r: r.created_at)
        return [convert.sandbox_to_pb(r) for r in records]

    async def ListPodSandbox(
        self, request: pb.ListPodSandboxRequest, context: Context
    ) -> pb.ListPodSandboxResponse:
        return pb.ListPodSandboxResponse(items=self._sandboxes(request))

    async def StreamPodSandboxes(
        self, request: pb.StreamPodSandboxesRequest, context: Context
    ) -> AsyncIterator[pb.StreamPodSandboxesResponse]:
        items = self._sandboxes(request)
        for start in range(0, len(items), _STREAM_BATCH):
            yield pb.StreamPodSandboxesResponse(pod_sandboxes=items[start : start + _STREAM_BATCH])

    async def UpdatePodSandboxResources(
        self, request: pb.UpdatePodSandboxResourcesRequest, context: Context
    ) -> pb.UpdatePodSandboxResourcesResponse:
        _require_id(request.pod_sandbox_id, "pod_sandbox_id")
        resources = convert.resources_from_pb(request.resources, "resources")
        self._pods.sandboxes.update_resources(request.pod_sandbox_id, resources)
        return pb.UpdatePodSandboxResourcesResponse()

    # -- containers ------------------------------------------------------------------

    async def CreateContainer(
        self, request: pb.CreateContainerRequest, context: Context
    ) -> pb.CreateContainerResponse:
        _require_id(request.pod_sandbox_id, "pod_sandbox_id")
        convert.require(request, "config")
        config = convert.container_config_from_pb(request.config)
        container_id = await self._pods.containers.create(request.pod_sandbox_id, config)
        return pb.CreateContainerResponse(container_id=container_id)

    async def StartContainer(
        self, request: pb.StartContainerRequest, context: Context
    ) -> pb.StartContainerResponse:
        _require_id(request.container_id, "container_id")
        await self._pods.containers.start(request.container_id)
        return pb.StartContainerResponse()

    async def StopContainer(
        self, request: pb.StopContainerRequest, context: Context
    ) -> pb.StopContainerResponse:
        # api.proto: idempotent; an unknown or stopped container is not an error.
        _require_id(request.container_id, "container_id")
        if request.timeout < 0:
            raise InvalidArgument("timeout must not be negative")
        await self._pods.containers.stop(request.container_id, float(request.timeout))
        return pb.StopContainerResponse()

    async def RemoveContainer(
        self, request: pb.RemoveContainerRequest, context: Context
    ) -> pb.RemoveContainerResponse:
        # api.proto: idempotent; an unknown container is not an error.
        _require_id(request.container_id, "container_id")
        await self._pods.containers.remove(request.container_id)
        return pb.RemoveContainerResponse()

    async def ContainerStatus(
        self, request: pb.ContainerStatusRequest, context: Context
    ) -> pb.ContainerStatusResponse:
        record = self._pods.containers.status(request.container_id)
        info = {}
        if request.verbose:
            info["info"] = json.dumps(
                {
                    "pid": record.pid,
                    "sandboxID": record.sandbox_id,
                    "runtimeHandler": record.handler,
                    "config": to_dict(record.config),
                    "runtimeSpec": self._pods.containers.runtime_spec(record.id),
                },
                sort_keys=True,
            )
        return pb.ContainerStatusResponse(status=convert.container_status_to_pb(record), info=info)

    def _containers(
        self, request: pb.ListContainersRequest | pb.StreamContainersRequest
    ) -> list[pb.Container]:
        f = request.filter
        records = list(self._pods.store.containers.values())
        if f.id:
            records = [r for r in records if r.id.startswith(f.id)]
        if f.pod_sandbox_id:
            records = [r for r in records if r.sandbox_id.startswith(f.pod_sandbox_id)]
        records = [self._pods.containers.status(r.id) for r in records]
        if f.HasField("state"):
            wanted = f.state.state
            records = [r for r in records if convert.container_to_pb(r).state == wanted]
        if f.label_selector:
            records = [
                r
                for r in records
                if all(r.config.labels.get(k) == v for k, v in f.label_selector.items())
            ]
        records.sort(key=lambda r: r.created_at)
        return [convert.container_to_pb(r) for r in records]

    async def ListContainers(
        self, request: pb.ListContainersRequest, context: Context
    ) -> pb.ListContainersResponse:
        return pb.ListContainersResponse(containers=self._containers(request))

    async def StreamContainers(
        self, request: pb.StreamContainersRequest, context: Context
    ) -> AsyncIterator[pb.StreamContainersResponse]:
        items = self._containers(request)
        for start in range(0, len(items), _STREAM_BATCH):
            yield pb.StreamContainersResponse(containers=items[start : start + _STREAM_BATCH])

    async def UpdateContainerResources(
        self, request: pb.UpdateContainerResourcesRequest, context: Context
    ) -> pb.UpdateContainerResourcesResponse:
        _require_id(request.container_id, "container_id")
        convert.require(request, "linux")
        resources = convert.resources_from_pb(request.linux, "linux")
        await self._pods.containers.update_resources(request.container_id, resources)
        return pb.UpdateContainerResourcesResponse()

    async def ReopenContainerLog(
        self, request: pb.ReopenContainerLogRequest, context: Context
    ) -> pb.ReopenContainerLogResponse:
        _require_id(request.container_id, "container_id")
        await self._pods.containers.reopen_log(request.container_id)
        return pb.ReopenContainerLogResponse()

    async def ExecSync(self, request: pb.ExecSyncRequest, context: Context) -> pb.ExecSyncResponse:
        _require_id(request.container_id, "container_id")
        if request.timeout < 0:
            raise InvalidArgument("timeout must not be negative")
        output = await self._pods.containers.exec_sync(
            request.container_id, list(request.cmd), float(request.timeout)
        )
        return pb.ExecSyncResponse(
            stdout=output.stdout, stderr=output.stderr, exit_code=output.exit_code
        )

    # -- streaming: validate, park under a one-time token, answer the URL -------------

    def _check_streams(self, request: pb.ExecRequest | pb.AttachRequest) -> str:
        _require_id(request.container_id, "container_id")
        if request.tty and request.stderr:
            raise InvalidArgument("tty and stderr cannot both be true")
        if not (request.stdin or request.stdout or request.stderr):
            raise InvalidArgument("one of stdin, stdout, or stderr must be set")
        record = self._pods.containers.status(request.container_id)
        if record.state is not ContainerState.RUNNING:
            raise FailedPrecondition(f"container {record.id} is not running")
        return record.id

    async def Exec(self, request: pb.ExecRequest, context: Context) -> pb.ExecResponse:
        if not request.cmd:
            raise InvalidArgument("cmd is required")
        container_id = self._check_streams(request)
        url = self._streaming.url_for(
            ExecRequest(
                container_id,
                tuple(request.cmd),
                tty=request.tty,
                stdin=request.stdin,
                stdout=request.stdout,
                stderr=request.stderr,
            )
        )
        return pb.ExecResponse(url=url)

    async def Attach(self, request: pb.AttachRequest, context: Context) -> pb.AttachResponse:
        container_id = self._check_streams(request)
        url = self._streaming.url_for(
            AttachRequest(
                container_id,
                tty=request.tty,
                stdin=request.stdin,
                stdout=request.stdout,
                stderr=request.stderr,
            )
        )
        return pb.AttachResponse(url=url)

    async def PortForward(
        self, request: pb.PortForwardRequest, context: Context
    ) -> pb.PortForwardResponse:
        _require_id(request.pod_sandbox_id, "pod_sandbox_id")
        for port in request.port:
            if not 0 < port <= 0xFFFF:
                raise InvalidArgument(f"port {port} is not a valid TCP port")
        sandbox_id = self._pods.sandboxes.status(request.pod_sandbox_id).id
        self._pods.sandboxes.network_namespace(sandbox_id)  # ready, or FAILED_PRECONDITION
        url = self._streaming.url_for(PortForwardRequest(sandbox_id, tuple(request.port)))
        return pb.PortForwardResponse(url=url)


def _require_id(value: str, field: str) -> None:
    if not value:
        raise InvalidArgument(f"{field} is required")
