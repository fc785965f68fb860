"""The kubelet stand-in's device manager: the kubelet side of the device plugin API v1beta1.

Owns ``device-plugins/kubelet.sock``: the ``Registration`` server device plugins call, the
connection to each registered plugin (``GetDevicePluginOptions``, the ``ListAndWatch``
stream with every update recorded) and the calls the kubelet makes when it admits a pod
(``GetPreferredAllocation``, ``Allocate``, ``PreStartContainer``).

Written from the upstream kubelet of Kubernetes 1.36 (``pkg/kubelet/cm/devicemanager``):

- ``Register`` accepts version ``v1beta1`` only and an extended resource name (a
  domain-prefixed name outside ``kubernetes.io/``, valid once prefixed with ``requests.``);
  before it answers, the kubelet dials ``device-plugins/<endpoint>`` (10 s) and calls
  ``GetDevicePluginOptions``, so a plugin must serve before it registers; errors come back
  as gRPC ``UNKNOWN`` with the kubelet's message;
- a new registration of a resource replaces the old connection;
- a kubelet (re)start deletes every socket in ``device-plugins/`` but its checkpoint file,
  then listens on ``kubelet.sock`` again: plugins see their own socket vanish and
  ``kubelet.sock`` come back, and must serve anew and re-register. ``restart()`` does that.

Must not import agent/ other than the generated ``agent.api`` modules.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from agent.api.kubelet.deviceplugin.v1beta1 import (
    api_pb2 as deviceplugin,
    api_pb2_grpc as deviceplugin_grpc,
)
from tests.support._changes import Changes

__all__ = [
    "CHECKPOINT_FILE",
    "SUPPORTED_VERSIONS",
    "DeviceManager",
    "DevicePlugin",
    "DevicePluginRejected",
    "Registration",
    "is_extended_resource_name",
]

SUPPORTED_VERSIONS = ("v1beta1",)
KUBELET_SOCKET = "kubelet.sock"
#: The device manager's checkpoint; the one file a kubelet start keeps in device-plugins/.
CHECKPOINT_FILE = "kubelet_internal_checkpoint"
DIAL_TIMEOUT = 10.0
CALL_TIMEOUT = 30.0
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_QUALIFIED_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")


def _is_qualified_name(value: str) -> bool:
    """apimachinery's IsQualifiedName: ``[prefix/]name``, prefix a DNS subdomain."""
    parts = value.split("/")
    if len(parts) > 2:
        return False
    name = parts[-1]
    if len(parts) == 2:
        prefix = parts[0]
        if not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix):
            return False
    return 0 < len(name) <= 63 and bool(_QUALIFIED_NAME.match(name))


def is_extended_resource_name(name: str) -> bool:
    """The kubelet's v1helper.IsExtendedResourceName."""
    native = "/" not in name or "kubernetes.io/" in name
    if native or name.startswith("requests."):
        return False
    return _is_qualified_name("requests." + name)


class DevicePluginRejected(Exception):
    """The kubelet would treat this plugin answer as a failure; the message is the kubelet's."""


@dataclass(frozen=True)
class Registration:
    """One ``Register`` call the kubelet received, and what it answered ("" = accepted)."""

    request: deviceplugin.RegisterRequest
    error: str


@dataclass(eq=False)
class DevicePlugin:
    """The kubelet's connection to one registered device plugin."""

    resource_name: str
    endpoint: str  # absolute socket path
    request: deviceplugin.RegisterRequest
    options: deviceplugin.DevicePluginOptions
    channel: grpc.aio.Channel = field(repr=False)
    updates: list[deviceplugin.ListAndWatchResponse] = field(default_factory=list)
    stream_error: grpc.StatusCode | None = None  # set when ListAndWatch ended
    _changes: Changes = field(default_factory=Changes, repr=False)
    _task: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def stub(self) -> deviceplugin_grpc.DevicePluginAsyncStub:
        return deviceplugin_grpc.DevicePluginStub(self.channel)

    def start_list_and_watch(self) -> None:
        self._task = asyncio.create_task(
            self._list_and_watch(), name=f"ListAndWatch {self.resource_name}"
        )

    async def _list_and_watch(self) -> None:
        try:
            async for response in self.stub.ListAndWatch(deviceplugin.Empty()):
                self.updates.append(response)
                self._changes.notify()
            self.stream_error = grpc.StatusCode.OK
        except grpc.aio.AioRpcError as error:
            self.stream_error = error.code()
        except asyncio.CancelledError:
            self.stream_error = grpc.StatusCode.CANCELLED  # the kubelet dropped this plugin
            raise
        finally:
            self._changes.notify()

    def devices(self) -> dict[str, str]:
        """Device ID → health from the latest update (the kubelet keeps only the latest)."""
        if not self.updates:
            return {}
        return {d.ID: d.health for d in self.updates[-1].devices}

    async def wait_update(
        self,
        predicate: Callable[[deviceplugin.ListAndWatchResponse], bool] = lambda _: True,
        *,
        after: int = 0,
        timeout: float = 10.0,
    ) -> deviceplugin.ListAndWatchResponse:
        """The first update past index ``after`` that satisfies ``predicate``."""

        def found() -> deviceplugin.ListAndWatchResponse | None:
            return next((u for u in self.updates[after:] if predicate(u)), None)

        return await self._changes.wait_for(
            found, timeout, f"a ListAndWatch update of {self.resource_name}"
        )

    async def wait_stream_end(self, timeout: float = 10.0) -> grpc.StatusCode:
        return await self._changes.wait_for(
            lambda: self.stream_error, timeout, "ListAndWatch to end"
        )

    async def get_preferred_allocation(
        self, available: Sequence[str], must_include: Sequence[str], size: int
    ) -> list[str]:
        """One container's preferred devices; the kubelet asks only when the plugin offers it."""
        if not self.options.get_preferred_allocation_available:
            raise DevicePluginRejected(
                f"{self.resource_name} does not offer GetPreferredAllocation"
            )
        request = deviceplugin.PreferredAllocationRequest(
            container_requests=[
                deviceplugin.ContainerPreferredAllocationRequest(
                    available_deviceIDs=list(available),
                    must_include_deviceIDs=list(must_include),
                    allocation_size=size,
                )
            ]
        )
        response = await self.stub.GetPreferredAllocation(request, timeout=CALL_TIMEOUT)
        if len(response.container_responses) != 1:
            raise DevicePluginRejected(
                "GetPreferredAllocation must answer one response per container"
            )
        return list(response.container_responses[0].deviceIDs)

    async def allocate(self, containers: Sequence[Sequence[str]]) -> deviceplugin.AllocateResponse:
        """``Allocate`` for one pod's containers, each a list of device IDs."""
        request = deviceplugin.AllocateRequest(
            container_requests=[
                deviceplugin.ContainerAllocateRequest(devices_ids=list(ids)) for ids in containers
            ]
        )
        response = await self.stub.Allocate(request, timeout=CALL_TIMEOUT)
        if not response.container_responses:
            raise DevicePluginRejected("no containers return in allocation response")
        return response

    async def pre_start_container(self, device_ids: Sequence[str]) -> None:
        """The hook the kubelet calls before starting a container, when the plugin asks for it."""
        if not self.options.pre_start_required:
            raise DevicePluginRejected(f"{self.resource_name} did not ask for PreStartContainer")
        await self.stub.PreStartContainer(
            deviceplugin.PreStartContainerRequest(devices_ids=list(device_ids)),
            timeout=CALL_TIMEOUT,
        )

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.channel.close()


class _RegistrationServicer(deviceplugin_grpc.RegistrationServicer):
    def __init__(self, manager: DeviceManager) -> None:
        self._manager = manager

    async def Register(
        self, request: deviceplugin.RegisterRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> deviceplugin.Empty:
        error = await self._manager._register(request)
        self._manager.registrations.append(Registration(request, error))
        self._manager._changes.notify()
        if error:
            await context.abort(grpc.StatusCode.UNKNOWN, error)
        return deviceplugin.Empty()


class DeviceManager:
    """Serves ``Registration`` on ``<device_plugins_dir>/kubelet.sock``."""

    def __init__(self, device_plugins_dir: str) -> None:
        self.device_plugins_dir = device_plugins_dir
        self.socket_path = os.path.join(device_plugins_dir, KUBELET_SOCKET)
        self.registrations: list[Registration] = []
        self.starts = 0
        self._plugins: dict[str, DevicePlugin] = {}
        self._server: grpc.aio.Server | None = None
        self._changes = Changes()

    async def start(self) -> None:
        """Clean the directory as the kubelet does, then listen on ``kubelet.sock``."""
        os.makedirs(self.device_plugins_dir, mode=0o750, exist_ok=True)
        for name in os.listdir(self.device_plugins_dir):
            path = os.path.join(self.device_plugins_dir, name)
            if name == CHECKPOINT_FILE:
                continue
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISSOCK(os.stat(path).st_mode):
                    os.unlink(path)
        server = grpc.aio.server()
        deviceplugin_grpc.add_RegistrationServicer_to_server(_RegistrationServicer(self), server)
        server.add_insecure_port(f"unix:{self.socket_path}")
        await server.start()
        self._server = server
        self.starts += 1

    async def stop(self) -> None:
        """Disconnect every plugin and stop listening; ``kubelet.sock`` goes away."""
        for plugin in list(self._plugins.values()):
            await plugin.close()
        self._plugins.clear()
        if self._server is not None:
            await self._server.stop(grace=None)
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)

    async def restart(self) -> None:
        """What a kubelet restart looks like to device plugins."""
        await self.stop()
        await self.start()

    def plugin(self, resource_name: str) -> DevicePlugin:
        try:
            return self._plugins[resource_name]
        except KeyError:
            raise DevicePluginRejected(f"{resource_name} is not registered") from None

    async def wait_plugin(
        self, resource_name: str, *, after: DevicePlugin | None = None, timeout: float = 10.0
    ) -> DevicePlugin:
        """The connection for ``resource_name`` once there is one other than ``after``."""

        def current() -> DevicePlugin | None:
            plugin = self._plugins.get(resource_name)
            return plugin if plugin is not None and plugin is not after else None

        return await self._changes.wait_for(current, timeout, f"{resource_name} to register")

    async def _register(self, request: deviceplugin.RegisterRequest) -> str:
        if request.version not in SUPPORTED_VERSIONS:
            return (
                f"requested API version {request.version!r} is not supported by kubelet. "
                f"Supported versions are {list(SUPPORTED_VERSIONS)!r}"
            )
        if not is_extended_resource_name(request.resource_name):
            return f"the ResourceName {request.resource_name!r} is invalid"
        endpoint = os.path.join(self.device_plugins_dir, request.endpoint)
        channel = grpc.aio.insecure_channel(f"unix:{endpoint}")
        try:
            await asyncio.wait_for(channel.channel_ready(), DIAL_TIMEOUT)
            stub = deviceplugin_grpc.DevicePluginStub(channel)
            options = await stub.GetDevicePluginOptions(deviceplugin.Empty(), timeout=CALL_TIMEOUT)
        except (TimeoutError, grpc.aio.AioRpcError) as error:
            await channel.close()
            return f"failed to dial device plugin: {error!r}"
        old = self._plugins.pop(request.resource_name, None)
        if old is not None:
            await old.close()
        plugin = DevicePlugin(request.resource_name, endpoint, request, options, channel)
        self._plugins[request.resource_name] = plugin
        plugin.start_list_and_watch()
        return ""
