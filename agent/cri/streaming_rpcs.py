"""Exec, Attach and PortForward of ``RuntimeService``: validate, park under a one-time
token on the streaming server, answer its URL (the kubelet or crictl then dials it)."""

from __future__ import annotations

from typing import Any

import grpc

from agent.api.cri.runtime.v1 import api_pb2 as pb
from agent.cri.validate import require_id
from agent.errors import FailedPrecondition, InvalidArgument
from agent.pods import PodService
from agent.streaming import AttachRequest, ExecRequest, PortForwardRequest, StreamingServer

__all__ = ["StreamingRpcs"]

Context = grpc.aio.ServicerContext[Any, Any]


class StreamingRpcs:
    """Mixed into ``RuntimeService``."""

    _pods: PodService
    _streaming: StreamingServer

    def _check_streams(self, request: pb.ExecRequest | pb.AttachRequest) -> str:
        require_id(request.container_id, "container_id")
        if request.tty and request.stderr:
            raise InvalidArgument("tty and stderr cannot both be true")
        if not (request.stdin or request.stdout or request.stderr):
            raise InvalidArgument("one of stdin, stdout, or stderr must be set")
        record = self._pods.container_status(request.container_id)
        if not record.state.is_running():
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
        require_id(request.pod_sandbox_id, "pod_sandbox_id")
        for port in request.port:
            if not 0 < port <= 0xFFFF:
                raise InvalidArgument(f"port {port} is not a valid TCP port")
        sandbox_id = self._pods.sandbox_status(request.pod_sandbox_id).id
        self._pods.network_namespace(sandbox_id)  # ready, or FAILED_PRECONDITION
        url = self._streaming.url_for(PortForwardRequest(sandbox_id, tuple(request.port)))
        return pb.PortForwardResponse(url=url)
