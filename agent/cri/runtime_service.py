"""``runtime.v1.RuntimeService``: each RPC is a short recipe over ``PodService``.

The RPCs come in families, one module each: ``sandbox_rpcs``, ``container_rpcs``,
``streaming_rpcs`` (Exec/Attach/PortForward), ``stats_rpcs`` (stats, metrics,
events); the runtime's own (Version, Status, RuntimeConfig) are here. RPCs no
family defines fall through to the generated base class, which the
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
from agent.cri import convert
from agent.cri.container_rpcs import ContainerRpcs
from agent.cri.converted import Converted
from agent.cri.sandbox_rpcs import SandboxRpcs
from agent.cri.stats_rpcs import StatsRpcs
from agent.cri.streaming_rpcs import StreamingRpcs
from agent.health import Condition, NodeHealth
from agent.pods import PodService
from agent.streaming import StreamingServer

__all__ = ["CRI_API_VERSION", "RUNTIME_NAME", "RuntimeService"]

#: The kubelet refuses any runtime that does not answer exactly this (kuberuntime_manager.go).
CRI_API_VERSION = "0.1.0"
RUNTIME_NAME = "model-agent"

Context = grpc.aio.ServicerContext[Any, Any]


class RuntimeService(
    SandboxRpcs, ContainerRpcs, StreamingRpcs, StatsRpcs, pb_grpc.RuntimeServiceServicer
):
    """The whole RuntimeService: the runtime's own RPCs here, the families mixed in."""

    def __init__(
        self,
        *,
        config: Config,
        health: NodeHealth,
        ready: asyncio.Event,
        version: str,
        pulls: Callable[[], list[dict[str, object]]],
        pods: PodService,
        gpus: Callable[[], dict[str, object]] = dict,
        streaming: StreamingServer,
    ) -> None:
        self._streaming = streaming
        self._config = config
        self._health = health
        self._ready = ready
        self._version = version
        self._pulls = pulls
        self._gpus = gpus
        self._pods = pods
        self._listed_containers = Converted(convert.container_to_pb, lambda r: r.id)
        self._listed_sandboxes = Converted(convert.sandbox_to_pb, lambda r: r.id)

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
        features = pb.RuntimeHandlerFeatures(
            recursive_read_only_mounts=self._pods.supports_recursive_read_only,
            user_namespaces=self._pods.supports_user_namespaces,
        )
        handlers = [pb.RuntimeHandler(name=name, features=features) for name in names]
        info: dict[str, str] = {}
        if request.verbose:
            info = {
                "config": json.dumps(dataclasses.asdict(self._config), sort_keys=True),
                "versions": json.dumps(report.versions, sort_keys=True),
                "cniConfig": report.network_config,
                "pulls": json.dumps(self._pulls()),
                "gpu": json.dumps(self._gpus(), sort_keys=True),
            }
        return pb.StatusResponse(
            status=pb.RuntimeStatus(conditions=conditions),
            info=info,
            runtime_handlers=handlers,
            features=pb.RuntimeFeatures(supplemental_groups_policy=True),
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
            await self._pods.update_pod_cidr(cidr)
        return pb.UpdateRuntimeConfigResponse()
