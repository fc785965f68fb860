"""One device plugin (v1beta1) for one extended resource, served inside the agent.

The plugin serves ``DevicePlugin`` on its own socket in ``<kubelet dir>/device-plugins/``
and only then registers with the kubelet's ``kubelet.sock`` (the kubelet dials back
before it answers). It watches both files every second: when ``kubelet.sock`` is
created again (a kubelet restart, which also deletes every plugin socket) or its own
socket vanished, it serves a fresh socket and registers again; while there is no
``kubelet.sock`` it waits, creating nothing.

- ``ListAndWatch``: every device with its health (``Healthy``/``Unhealthy``, from
  ``GpuHealth``) and NUMA node, again on each change;
- ``GetPreferredAllocation``: ``preferred`` (NUMA/NVLink packing, replicas spread);
- ``Allocate``: per container, the CDI names of the node spec (``<cdi_kind>=<UUID>``)
  and, with ``env_fallback``, ``NVIDIA_VISIBLE_DEVICES`` plus ``MODEL_AGENT_GPU_ALLOCATION``,
  a token recorded in the database that names these devices: the only thing that makes
  the agent honour the variable for them (``tokens``). Unknown ids are refused.

Imports ``gpu`` modules and the generated device-plugin API.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from agent.api.kubelet.deviceplugin.v1beta1 import api_pb2 as pb, api_pb2_grpc as pb_grpc
from agent.gpu.deviceplugin.preferred import Placement, preferred_allocation
from agent.gpu.deviceplugin.resources import PluginResource, socket_name
from agent.gpu.deviceplugin.tokens import ALLOCATION_ENV, AllocationTokens
from agent.gpu.env import VISIBLE_DEVICES
from agent.gpu.health import GpuHealth
from agent.gpu.sockets import UnixGrpcServer

__all__ = ["KUBELET_SOCKET", "DevicePluginServer"]

log = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]

KUBELET_SOCKET = "kubelet.sock"
VERSION = "v1beta1"
CHECK_SECONDS = 1.0
REGISTER_TIMEOUT = 15.0


class _Servicer(pb_grpc.DevicePluginServicer):
    def __init__(self, plugin: DevicePluginServer) -> None:
        self._plugin = plugin

    async def GetDevicePluginOptions(
        self, request: pb.Empty, context: Context
    ) -> pb.DevicePluginOptions:
        return pb.DevicePluginOptions(
            pre_start_required=False, get_preferred_allocation_available=True
        )

    async def ListAndWatch(
        self, request: pb.Empty, context: Context
    ) -> AsyncIterator[pb.ListAndWatchResponse]:
        plugin = self._plugin
        version = -1
        while True:
            version = plugin.version
            yield plugin.list_response()
            await plugin.wait_changed(version)

    async def GetPreferredAllocation(
        self, request: pb.PreferredAllocationRequest, context: Context
    ) -> pb.PreferredAllocationResponse:
        response = pb.PreferredAllocationResponse()
        for item in request.container_requests:
            ids = self._plugin.preferred(
                list(item.available_deviceIDs),
                list(item.must_include_deviceIDs),
                item.allocation_size,
            )
            response.container_responses.append(
                pb.ContainerPreferredAllocationResponse(deviceIDs=ids)
            )
        return response

    async def Allocate(self, request: pb.AllocateRequest, context: Context) -> pb.AllocateResponse:
        response = pb.AllocateResponse()
        for item in request.container_requests:
            try:
                answer = await self._plugin.allocate(list(item.devices_ids))
            except LookupError as exc:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            response.container_responses.append(answer)
        return response

    async def PreStartContainer(
        self, request: pb.PreStartContainerRequest, context: Context
    ) -> pb.PreStartContainerResponse:
        return pb.PreStartContainerResponse()


class DevicePluginServer:
    def __init__(
        self,
        resource: PluginResource,
        *,
        device_plugins_dir: str,
        health: GpuHealth,
        tokens: AllocationTokens,
        cdi_kind: str,
        env_fallback: bool,
        nvlink_peers: Callable[[str], frozenset[str]],
    ) -> None:
        self.resource = resource
        self.name = resource.name
        self._dir = device_plugins_dir
        self.kubelet_socket = os.path.join(device_plugins_dir, KUBELET_SOCKET)
        self.socket_path = os.path.join(device_plugins_dir, socket_name(resource.name))
        self._health = health
        self._tokens = tokens
        self._cdi_kind = cdi_kind
        self._env_fallback = env_fallback
        self._nvlink_peers = nvlink_peers
        self._server = UnixGrpcServer(
            self.socket_path,
            lambda s: pb_grpc.add_DevicePluginServicer_to_server(_Servicer(self), s),
        )
        self._registered_with: tuple[int, int] | None = None
        self._changed = asyncio.Event()
        self.version = 0
        self.registrations = 0
        self.last_error = ""
        self._task: asyncio.Task[None] | None = None

    # -- lifecycle ------------------------------------------------------

    async def start(self) -> None:
        """Serve and register now if the kubelet is there; keep trying every second."""
        await self._check_logged()
        self._task = asyncio.get_running_loop().create_task(
            self._watch(), name=f"device-plugin {self.name}"
        )

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._server.stop()
        self._registered_with = None

    def update(self, resource: PluginResource) -> None:
        """New devices (or new health): ListAndWatch streams send the list again."""
        self.resource = resource
        self.notify()

    def notify(self) -> None:
        self.version += 1
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_changed(self, version: int) -> None:
        while self.version == version:
            await self._changed.wait()

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(CHECK_SECONDS)
            await self._check_logged()

    async def _check_logged(self) -> None:
        """``_check``; a failure (a stale kubelet.sock, say) is logged once per new error."""
        try:
            await self._check()
        except Exception as exc:
            message = f"{type(exc).__name__}: {exc}"
            if message != self.last_error:
                log.warning(
                    "device plugin %s: serving or registering failed: %s", self.name, message
                )
            self.last_error = message
        else:
            self.last_error = ""

    def _kubelet_identity(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.kubelet_socket)
        except OSError:
            return None
        return (st.st_dev, st.st_ino)

    async def _check(self) -> None:
        kubelet = self._kubelet_identity()
        if kubelet is None:
            if self._registered_with is not None:
                log.info(
                    "device plugin %s: %s is gone; waiting for the kubelet",
                    self.name,
                    self.kubelet_socket,
                )
                self._registered_with = None
                await self._server.stop()
            return
        if kubelet == self._registered_with and self._server.intact():
            return
        if self._registered_with is not None:
            log.info(
                "device plugin %s: the kubelet restarted (or our socket vanished); registering",
                self.name,
            )
        await self._server.restart()
        self._registered_with = None
        await self._register()
        self._registered_with = kubelet

    async def _register(self) -> None:
        options = pb.DevicePluginOptions(
            pre_start_required=False, get_preferred_allocation_available=True
        )
        request = pb.RegisterRequest(
            version=VERSION,
            endpoint=os.path.basename(self.socket_path),
            resource_name=self.name,
            options=options,
        )
        async with grpc.aio.insecure_channel(f"unix://{self.kubelet_socket}") as channel:
            await pb_grpc.RegistrationStub(channel).Register(request, timeout=REGISTER_TIMEOUT)
        self.registrations += 1
        log.info(
            "device plugin %s: registered with the kubelet (%d devices, socket %s)",
            self.name,
            len(self.resource.devices),
            self.socket_path,
        )

    # -- the calls ------------------------------------------------------

    def list_response(self) -> pb.ListAndWatchResponse:
        devices = []
        for device in self.resource.devices:
            healthy = self._health.is_healthy(device.device.gpu.uuid)
            topology = None
            if device.numa_node is not None:
                topology = pb.TopologyInfo(nodes=[pb.NUMANode(ID=device.numa_node)])
            devices.append(
                pb.Device(
                    ID=device.id, health="Healthy" if healthy else "Unhealthy", topology=topology
                )
            )
        return pb.ListAndWatchResponse(devices=devices)

    def preferred(self, available: list[str], must_include: list[str], size: int) -> list[str]:
        placements = {
            d.id: Placement(
                gpu_uuid=d.device.gpu.uuid,
                index=d.device.gpu.index,
                numa_node=d.numa_node,
                nvlink_peers=self._nvlink_peers(d.device.gpu.uuid),
            )
            for d in self.resource.devices
        }
        replicas = any(d.replica is not None for d in self.resource.devices)
        return preferred_allocation(available, must_include, size, placements, replicas=replicas)

    async def allocate(self, ids: list[str]) -> pb.ContainerAllocateResponse:
        by_id = self.resource.by_id()
        unknown = [i for i in ids if i not in by_id]
        if unknown:
            raise LookupError(f"{self.name}: unknown device ids {', '.join(unknown)}")
        uuids = list(dict.fromkeys(by_id[i].uuid for i in ids))
        response = pb.ContainerAllocateResponse(
            cdi_devices=[pb.CDIDevice(name=f"{self._cdi_kind}={uuid}") for uuid in uuids]
        )
        if self._env_fallback:
            token = await asyncio.to_thread(self._tokens.issue, self.name, ids, uuids)
            response.envs[VISIBLE_DEVICES] = ",".join(uuids)
            response.envs[ALLOCATION_ENV] = token
        log.info("device plugin %s: allocated %s", self.name, ", ".join(ids))
        return response
