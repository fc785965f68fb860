"""Pod sandbox RPCs of ``RuntimeService``: each a short recipe over ``PodService``."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from agent.api.cri.runtime.v1 import api_pb2 as pb
from agent.cri import convert
from agent.cri.batches import batches
from agent.cri.converted import Converted
from agent.cri.validate import require, require_id
from agent.pods import PodService, SandboxRecord

__all__ = ["SandboxRpcs"]

Context = grpc.aio.ServicerContext[Any, Any]


class SandboxRpcs:
    """Mixed into ``RuntimeService``."""

    _pods: PodService
    _listed_sandboxes: Converted[SandboxRecord, pb.PodSandbox]

    async def RunPodSandbox(
        self, request: pb.RunPodSandboxRequest, context: Context
    ) -> pb.RunPodSandboxResponse:
        require(request, "config")
        config = convert.sandbox_config_from_pb(request.config, request.runtime_handler)
        sandbox_id = await self._pods.run_sandbox(config)
        return pb.RunPodSandboxResponse(pod_sandbox_id=sandbox_id)

    async def StopPodSandbox(
        self, request: pb.StopPodSandboxRequest, context: Context
    ) -> pb.StopPodSandboxResponse:
        # api.proto: idempotent; an unknown sandbox is not an error.
        require_id(request.pod_sandbox_id, "pod_sandbox_id")
        await self._pods.stop_sandbox(request.pod_sandbox_id)
        return pb.StopPodSandboxResponse()

    async def RemovePodSandbox(
        self, request: pb.RemovePodSandboxRequest, context: Context
    ) -> pb.RemovePodSandboxResponse:
        # api.proto: idempotent; an unknown sandbox is not an error.
        require_id(request.pod_sandbox_id, "pod_sandbox_id")
        await self._pods.remove_sandbox(request.pod_sandbox_id)
        return pb.RemovePodSandboxResponse()

    async def PodSandboxStatus(
        self, request: pb.PodSandboxStatusRequest, context: Context
    ) -> pb.PodSandboxStatusResponse:
        record = self._pods.sandbox_status(request.pod_sandbox_id)
        containers = self._pods.sandbox_containers(record.id)
        return pb.PodSandboxStatusResponse(
            status=convert.sandbox_status_to_pb(record),
            info=convert.sandbox_verbose_info(record) if request.verbose else {},
            containers_statuses=[convert.container_status_to_pb(c) for c in containers],
            timestamp=time.time_ns(),
        )

    def _sandboxes(
        self, request: pb.ListPodSandboxRequest | pb.StreamPodSandboxesRequest
    ) -> list[pb.PodSandbox]:
        records = self._pods.list_sandboxes(convert.sandbox_selector(request.filter))
        return self._listed_sandboxes.all(records)

    async def ListPodSandbox(
        self, request: pb.ListPodSandboxRequest, context: Context
    ) -> pb.ListPodSandboxResponse:
        return pb.ListPodSandboxResponse(items=self._sandboxes(request))

    async def StreamPodSandboxes(
        self, request: pb.StreamPodSandboxesRequest, context: Context
    ) -> AsyncIterator[pb.StreamPodSandboxesResponse]:
        for batch in batches(self._sandboxes(request)):
            yield pb.StreamPodSandboxesResponse(pod_sandboxes=batch)

    async def UpdatePodSandboxResources(
        self, request: pb.UpdatePodSandboxResourcesRequest, context: Context
    ) -> pb.UpdatePodSandboxResourcesResponse:
        require_id(request.pod_sandbox_id, "pod_sandbox_id")
        resources = convert.resources_from_pb(request.resources, "resources")
        self._pods.update_sandbox_resources(request.pod_sandbox_id, resources)
        return pb.UpdatePodSandboxResourcesResponse()
