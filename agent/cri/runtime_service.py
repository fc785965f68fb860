"""``runtime.v1.RuntimeService``: each RPC is a short recipe over domain objects.

RPCs not overridden here fall through to the generated base class, which the
interceptor answers with ``UNIMPLEMENTED`` and a message naming the RPC.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Callable
from typing import Any

import grpc

from agent.api.cri.runtime.v1 import api_pb2 as pb, api_pb2_grpc as pb_grpc
from agent.config import Config
from agent.health import Condition, NodeHealth

__all__ = ["CRI_API_VERSION", "RUNTIME_NAME", "RuntimeService"]

#: The kubelet refuses any runtime that does not answer exactly this (kuberuntime_manager.go).
CRI_API_VERSION = "0.1.0"
RUNTIME_NAME = "model-agent"

Context = grpc.aio.ServicerContext[Any, Any]


class RuntimeService(pb_grpc.RuntimeServiceServicer):
    def __init__(
        self,
        *,
        config: Config,
        health: NodeHealth,
        ready: asyncio.Event,
        version: str,
        pulls: Callable[[], list[dict[str, object]]],
    ) -> None:
        self._config = config
        self._health = health
        self._ready = ready
        self._version = version
        self._pulls = pulls

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
