"""Stats, CRI metrics and container events of ``RuntimeService``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from agent.api.cri.runtime.v1 import api_pb2 as pb
from agent.cri import convert
from agent.cri.batches import batches
from agent.errors import Unavailable
from agent.metrics import cadvisor
from agent.pods import PodService, Selector, SubscriberTooSlow

__all__ = ["StatsRpcs"]

Context = grpc.aio.ServicerContext[Any, Any]


class StatsRpcs:
    """Mixed into ``RuntimeService``."""

    _pods: PodService

    async def _container_stats(self, f: pb.ContainerStatsFilter | None) -> list[pb.ContainerStats]:
        usages = await self._pods.container_usages(convert.container_selector(f))
        return [convert.container_stats_to_pb(u) for u in usages]

    async def ContainerStats(
        self, request: pb.ContainerStatsRequest, context: Context
    ) -> pb.ContainerStatsResponse:
        usage = await self._pods.container_usage(request.container_id)
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
        for batch in batches(await self._container_stats(f)):
            yield pb.StreamContainerStatsResponse(container_stats=batch)

    async def _pod_stats(self, f: pb.PodSandboxStatsFilter | None) -> list[pb.PodSandboxStats]:
        usages = await self._pods.pod_usages(convert.sandbox_selector(f))
        return [convert.pod_stats_to_pb(u) for u in usages]

    async def PodSandboxStats(
        self, request: pb.PodSandboxStatsRequest, context: Context
    ) -> pb.PodSandboxStatsResponse:
        usage = await self._pods.pod_usage(request.pod_sandbox_id)
        return pb.PodSandboxStatsResponse(stats=convert.pod_stats_to_pb(usage))

    async def ListPodSandboxStats(
        self, request: pb.ListPodSandboxStatsRequest, context: Context
    ) -> pb.ListPodSandboxStatsResponse:
        f = request.filter if request.HasField("filter") else None
        return pb.ListPodSandboxStatsResponse(stats=await self._pod_stats(f))

    async def StreamPodSandboxStats(
        self, request: pb.StreamPodSandboxStatsRequest, context: Context
    ) -> AsyncIterator[pb.StreamPodSandboxStatsResponse]:
        f = request.filter if request.HasField("filter") else None
        for batch in batches(await self._pod_stats(f)):
            yield pb.StreamPodSandboxStatsResponse(pod_sandbox_stats=batch)

    async def ListMetricDescriptors(
        self, request: pb.ListMetricDescriptorsRequest, context: Context
    ) -> pb.ListMetricDescriptorsResponse:
        return pb.ListMetricDescriptorsResponse(
            descriptors=convert.descriptors_to_pb(cadvisor.DESCRIPTORS)
        )

    async def _pod_metrics(self) -> list[pb.PodSandboxMetrics]:
        usages = await self._pods.pod_usages(Selector(), processes=True)
        return [convert.pod_metrics_to_pb(u) for u in usages]

    async def ListPodSandboxMetrics(
        self, request: pb.ListPodSandboxMetricsRequest, context: Context
    ) -> pb.ListPodSandboxMetricsResponse:
        return pb.ListPodSandboxMetricsResponse(pod_metrics=await self._pod_metrics())

    async def StreamPodSandboxMetrics(
        self, request: pb.StreamPodSandboxMetricsRequest, context: Context
    ) -> AsyncIterator[pb.StreamPodSandboxMetricsResponse]:
        for batch in batches(await self._pod_metrics()):
            yield pb.StreamPodSandboxMetricsResponse(pod_sandbox_metrics=batch)

    async def GetContainerEvents(
        self, request: pb.GetEventsRequest, context: Context
    ) -> AsyncIterator[pb.ContainerEventResponse]:
        try:
            async for event in self._pods.subscribe_events():
                yield convert.event_to_pb(event)
        except SubscriberTooSlow as exc:
            raise Unavailable(str(exc)) from None
