"""Container RPCs of ``RuntimeService``: each a short recipe over ``PodService``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from agent.api.cri.runtime.v1 import api_pb2 as pb
from agent.cri import convert
from agent.cri.batches import batches
from agent.cri.converted import Converted
from agent.cri.validate import require, require_id
from agent.errors import InvalidArgument
from agent.pods import ContainerRecord, PodService

__all__ = ["ContainerRpcs"]

Context = grpc.aio.ServicerContext[Any, Any]


class ContainerRpcs:
    """Mixed into ``RuntimeService``."""

    _pods: PodService
    _listed_containers: Converted[ContainerRecord, pb.Container]

    async def CreateContainer(
        self, request: pb.CreateContainerRequest, context: Context
    ) -> pb.CreateContainerResponse:
        require_id(request.pod_sandbox_id, "pod_sandbox_id")
        require(request, "config")
        config = convert.container_config_from_pb(request.config)
        container_id = await self._pods.create_container(request.pod_sandbox_id, config)
        return pb.CreateContainerResponse(container_id=container_id)

    async def StartContainer(
        self, request: pb.StartContainerRequest, context: Context
    ) -> pb.StartContainerResponse:
        require_id(request.container_id, "container_id")
        await self._pods.start_container(request.container_id)
        return pb.StartContainerResponse()

    async def StopContainer(
        self, request: pb.StopContainerRequest, context: Context
    ) -> pb.StopContainerResponse:
        # api.proto: idempotent; an unknown or stopped container is not an error.
        require_id(request.container_id, "container_id")
        if request.timeout < 0:
            raise InvalidArgument("timeout must not be negative")
        await self._pods.stop_container(request.container_id, float(request.timeout))
        return pb.StopContainerResponse()

    async def RemoveContainer(
        self, request: pb.RemoveContainerRequest, context: Context
    ) -> pb.RemoveContainerResponse:
        # api.proto: idempotent; an unknown container is not an error.
        require_id(request.container_id, "container_id")
        await self._pods.remove_container(request.container_id)
        return pb.RemoveContainerResponse()

    async def ContainerStatus(
        self, request: pb.ContainerStatusRequest, context: Context
    ) -> pb.ContainerStatusResponse:
        record = self._pods.container_status(request.container_id)
        info = {}
        if request.verbose:
            info = convert.container_verbose_info(record, self._pods.container_spec(record.id))
        return pb.ContainerStatusResponse(status=convert.container_status_to_pb(record), info=info)

    def _containers(
        self, request: pb.ListContainersRequest | pb.StreamContainersRequest
    ) -> list[pb.Container]:
        records = self._pods.list_containers(convert.container_selector(request.filter))
        return self._listed_containers.all(records)

    async def ListContainers(
        self, request: pb.ListContainersRequest, context: Context
    ) -> pb.ListContainersResponse:
        return pb.ListContainersResponse(containers=self._containers(request))

    async def StreamContainers(
        self, request: pb.StreamContainersRequest, context: Context
    ) -> AsyncIterator[pb.StreamContainersResponse]:
        for batch in batches(self._containers(request)):
            yield pb.StreamContainersResponse(containers=batch)

    async def UpdateContainerResources(
        self, request: pb.UpdateContainerResourcesRequest, context: Context
    ) -> pb.UpdateContainerResourcesResponse:
        require_id(request.container_id, "container_id")
        require(request, "linux")
        resources = convert.resources_from_pb(request.linux, "linux")
        await self._pods.update_container_resources(request.container_id, resources)
        return pb.UpdateContainerResourcesResponse()

    async def ReopenContainerLog(
        self, request: pb.ReopenContainerLogRequest, context: Context
    ) -> pb.ReopenContainerLogResponse:
        require_id(request.container_id, "container_id")
        await self._pods.reopen_container_log(request.container_id)
        return pb.ReopenContainerLogResponse()

    async def ExecSync(self, request: pb.ExecSyncRequest, context: Context) -> pb.ExecSyncResponse:
        require_id(request.container_id, "container_id")
        if request.timeout < 0:
            raise InvalidArgument("timeout must not be negative")
        output = await self._pods.exec_sync(
            request.container_id, list(request.cmd), float(request.timeout)
        )
        return pb.ExecSyncResponse(
            stdout=output.stdout, stderr=output.stderr, exit_code=output.exit_code
        )
