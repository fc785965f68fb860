"""The kubelet stand-in behaves as the kubelet does on the paths the agent's plugins use.

Real gRPC over unix sockets against tiny plugins written here (test-only: the agent's
DRA driver and device plugin come later): the registration handshake and its refusals,
the service version the kubelet picks, re-registration when a plugin recreates its
socket and when the kubelet restarts, DRA prepare/unprepare on v1 and v1beta1, the
health stream, and the device-plugin side (Register, ListAndWatch, Allocate, ...).
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from agent.api.kubelet.deviceplugin.v1beta1 import api_pb2 as dp, api_pb2_grpc as dp_grpc
from agent.api.kubelet.dra.v1 import api_pb2 as dra_v1, api_pb2_grpc as dra_v1_grpc
from agent.api.kubelet.dra.v1beta1 import api_pb2 as dra_v1beta1, api_pb2_grpc as dra_v1beta1_grpc
from agent.api.kubelet.dra_health.v1alpha1 import (
    api_pb2 as health_v1alpha1,
    api_pb2_grpc as health_v1alpha1_grpc,
)
from agent.api.kubelet.dra_health.v1beta1 import (
    api_pb2 as health_v1beta1,
    api_pb2_grpc as health_v1beta1_grpc,
)
from agent.api.kubelet.pluginregistration.v1 import (
    api_pb2 as reg,
    api_pb2_grpc as reg_grpc,
)
from tests.support import kubelet_devices
from tests.support._changes import Changes
from tests.support.kubelet import (
    CHECKPOINT_FILE,
    ClaimRef,
    Kubelet,
    KubeletRejected,
    is_extended_resource_name,
)

pytestmark = pytest.mark.integration

DRIVER = "gpu.test.example.com"
CLAIM = ClaimRef(namespace="default", name="gpu-claim", uid="0d3b7f8e-uid-1")


async def serve(path: str, *adders: tuple[Any, Any]) -> grpc.aio.Server:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    server = grpc.aio.server()
    for add, servicer in adders:
        add(servicer, server)
    server.add_insecure_port(f"unix:{path}")
    await server.start()
    return server


async def shut(server: grpc.aio.Server, path: str) -> None:
    await server.stop(None)
    if os.path.exists(path):
        os.unlink(path)


class TinyDRAPlugin:
    """A test-only DRA kubelet plugin: registration socket + DRA v1/v1beta1 + health."""

    def __init__(self, kubelet: Kubelet, **info: Any) -> None:
        self.reg_path = kubelet.registration_socket(DRIVER)
        self.dra_path = info.pop("dra_path", kubelet.dra_socket(DRIVER))
        self.info = {
            "type": "DRAPlugin",
            "name": DRIVER,
            "endpoint": self.dra_path,
            "supported_versions": ["v1.DRAPlugin", "v1beta1.DRAPlugin"],
        } | info
        self.notifications: list[reg.RegistrationStatus] = []
        self.get_infos = 0
        self.calls: list[tuple[str, str, Any]] = []  # (package, method, request)
        self.devices: dict[str, list[tuple[str, str, str]]] = {}  # uid → (pool, device, cdi)
        self.health: asyncio.Queue[list[tuple[str, str, int, str]]] = asyncio.Queue()
        self.with_health = True
        self.omit: set[str] = set()  # claim UIDs to leave out of answers
        self.extra = ""  # a claim UID to add to answers
        self._servers: dict[str, grpc.aio.Server] = {}
        self.changes = Changes()

    def servicers(self) -> list[tuple[Any, Any]]:
        plugin = self

        class Registration(reg_grpc.RegistrationServicer):
            async def GetInfo(self, request, context):
                plugin.get_infos += 1
                return reg.PluginInfo(**plugin.info)

            async def NotifyRegistrationStatus(self, request, context):
                plugin.notifications.append(request)
                plugin.changes.notify()
                return reg.RegistrationStatusResponse()

        def dra(module: Any) -> Any:
            class DRA:  # DRAPlugin of the package in ``module`` (v1 and v1beta1 alike)
                async def NodePrepareResources(self, request, context):
                    plugin.calls.append((module.DESCRIPTOR.package, "prepare", request))
                    response = module.NodePrepareResourcesResponse()
                    for claim in request.claims:
                        result = response.claims[claim.uid]
                        if claim.uid not in plugin.devices:
                            result.error = f"claim {claim.namespace}/{claim.name} unknown"
                        for pool, device, cdi in plugin.devices.get(claim.uid, []):
                            result.devices.add(
                                request_names=["gpu"],
                                pool_name=pool,
                                device_name=device,
                                cdi_device_ids=[cdi],
                            )
                    return plugin.edit(response)

                async def NodeUnprepareResources(self, request, context):
                    plugin.calls.append((module.DESCRIPTOR.package, "unprepare", request))
                    response = module.NodeUnprepareResourcesResponse()
                    for claim in request.claims:
                        response.claims[claim.uid].error = ""
                    return plugin.edit(response)

            return DRA()

        def health(module: Any) -> Any:
            class Health:  # DRAResourceHealth of the package in ``module``
                async def NodeWatchResources(self, request, context):
                    if not plugin.with_health:
                        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "no health here")
                    while True:
                        devices = await plugin.health.get()
                        yield module.NodeWatchResourcesResponse(
                            devices=[
                                module.DeviceHealth(
                                    device=module.DeviceIdentifier(pool_name=p, device_name=d),
                                    health=h,
                                    last_updated_time=1700000000,
                                    health_check_timeout_seconds=30,
                                    message=m,
                                )
                                for p, d, h, m in devices
                            ]
                        )

            return Health()

        return [
            (reg_grpc.add_RegistrationServicer_to_server, Registration()),
            (
                dra_v1_grpc.add_DRAPluginServicer_to_server,
                dra(dra_v1),
            ),
            (
                dra_v1beta1_grpc.add_DRAPluginServicer_to_server,
                dra(dra_v1beta1),
            ),
            (
                health_v1alpha1_grpc.add_DRAResourceHealthServicer_to_server,
                health(health_v1alpha1),
            ),
            (
                health_v1beta1_grpc.add_DRAResourceHealthServicer_to_server,
                health(health_v1beta1),
            ),
        ]

    def edit(self, response: Any) -> Any:
        for uid in self.omit:
            del response.claims[uid]
        if self.extra:
            response.claims[self.extra].error = ""
        return response

    async def start(self) -> None:
        """Serve the DRA socket first, then the registration socket (as real drivers do)."""
        if self.dra_path != self.reg_path and self.dra_path:
            self._servers[self.dra_path] = await serve(self.dra_path, *self.servicers())
        await self.start_registration()

    async def start_registration(self) -> None:
        self._servers[self.reg_path] = await serve(self.reg_path, *self.servicers())

    async def stop_registration(self) -> None:
        await shut(self._servers.pop(self.reg_path), self.reg_path)

    async def stop(self) -> None:
        for path, server in list(self._servers.items()):
            await shut(server, path)
        self._servers.clear()

    async def wait_notified(self, count: int = 1, timeout: float = 10.0) -> reg.RegistrationStatus:
        return await self.changes.wait_for(
            lambda: self.notifications[count - 1] if len(self.notifications) >= count else None,
            timeout,
            f"notification {count}",
        )


@pytest.fixture
async def kubelet(short_dir: str) -> AsyncIterator[Kubelet]:
    async with Kubelet(f"{short_dir}/kubelet") as kubelet:
        yield kubelet


@pytest.fixture
async def plugins() -> AsyncIterator[list[TinyDRAPlugin]]:
    started: list[TinyDRAPlugin] = []
    yield started
    for plugin in started:
        await plugin.stop()


async def start_plugin(
    kubelet: Kubelet, plugins: list[TinyDRAPlugin], **info: Any
) -> TinyDRAPlugin:
    plugin = TinyDRAPlugin(kubelet, **info)
    plugins.append(plugin)
    await plugin.start()
    return plugin


async def test_registration_handshake_registers_a_dra_plugin_on_v1(kubelet, plugins):
    plugin = await start_plugin(kubelet, plugins)
    registered = await kubelet.watcher.wait_registered(DRIVER)
    status = await plugin.wait_notified()
    assert status.plugin_registered is True and status.error == ""
    assert registered.service == "v1.DRAPlugin"
    assert registered.endpoint == plugin.dra_path
    assert registered.registration_socket == kubelet.registration_socket(DRIVER)
    await asyncio.sleep(0.2)  # ten scans: a socket left alone is not registered again
    [handshake] = kubelet.watcher.handshakes
    assert handshake.registered and handshake.notified
    assert handshake.info is not None and handshake.info.name == DRIVER

    plugin.devices[CLAIM.uid] = [("node-a", "gpu-0", "k8s.gpu.example.com/claim=uid-1-gpu-0")]
    results = await kubelet.watcher.plugin(DRIVER).prepare([CLAIM])
    [device] = results[CLAIM.uid].devices
    assert (device.pool_name, device.device_name) == ("node-a", "gpu-0")
    assert device.cdi_device_ids == ("k8s.gpu.example.com/claim=uid-1-gpu-0",)
    assert await registered.unprepare([CLAIM]) == {CLAIM.uid: ""}
    package, method, request = plugin.calls[0]
    assert (package, method) == ("k8s.io.kubelet.pkg.apis.dra.v1", "prepare")
    assert [(c.namespace, c.name, c.uid) for c in request.claims] == [
        (CLAIM.namespace, CLAIM.name, CLAIM.uid)
    ]
    assert [c[:2] for c in plugin.calls] == [
        ("k8s.io.kubelet.pkg.apis.dra.v1", "prepare"),
        ("k8s.io.kubelet.pkg.apis.dra.v1", "unprepare"),
    ]


async def test_the_first_supported_service_the_plugin_lists_is_used(kubelet, plugins):
    plugin = await start_plugin(
        kubelet, plugins, supported_versions=["v1beta1.DRAPlugin", "v1.DRAPlugin"]
    )
    registered = await kubelet.watcher.wait_registered(DRIVER)
    assert registered.service == "v1beta1.DRAPlugin"
    plugin.devices[CLAIM.uid] = [("node-a", "gpu-1", "v/c=1")]
    await registered.prepare([CLAIM])
    assert plugin.calls[0][0] == "k8s.io.kubelet.pkg.apis.dra.v1beta1"


@pytest.mark.parametrize(
    ("info", "error"),
    [
        ({"supported_versions": []}, "empty list of supported gRPC services"),
        ({"supported_versions": ["v1alpha4.Node"]}, "none of services supported by the plugin"),
        ({"type": "CSIPlugin"}, "no handler registered for plugin type: CSIPlugin"),
    ],
)
async def test_invalid_plugins_are_told_why_and_retried(kubelet, plugins, info, error):
    plugin = await start_plugin(kubelet, plugins, **info)
    status = await plugin.wait_notified()
    assert status.plugin_registered is False
    assert error in status.error and status.error.startswith("RegisterPlugin error -- ")
    assert kubelet.watcher.plugins(DRIVER) == []
    with pytest.raises(KubeletRejected, match="is not registered"):
        kubelet.watcher.plugin(DRIVER)
    # The kubelet retries with backoff (0.5 s, then 1 s, ...) until the socket goes away.
    second = await plugin.wait_notified(count=2, timeout=5)
    assert second.plugin_registered is False


async def test_an_empty_endpoint_means_the_registration_socket(kubelet, plugins):
    plugin = await start_plugin(kubelet, plugins, endpoint="", dra_path="")
    registered = await kubelet.watcher.wait_registered(DRIVER)
    assert registered.endpoint == plugin.reg_path
    plugin.devices[CLAIM.uid] = []
    assert (await registered.prepare([CLAIM]))[CLAIM.uid].devices == ()


async def test_a_recreated_socket_re_registers_and_a_removed_one_unregisters(kubelet, plugins):
    plugin = await start_plugin(kubelet, plugins)
    first = await kubelet.watcher.wait_registered(DRIVER)
    await plugin.stop_registration()
    await kubelet.watcher.wait_deregistered(first)
    assert kubelet.watcher.plugins(DRIVER) == []
    await plugin.start_registration()
    second = await kubelet.watcher.wait_registered(DRIVER, after=first)
    assert second.generation > first.generation
    assert [s.plugin_registered for s in plugin.notifications] == [True, True]
    assert kubelet.watcher.plugin(DRIVER) is second


async def test_a_socket_replaced_between_two_polls_still_re_registers(short_dir, plugins):
    async with Kubelet(f"{short_dir}/kubelet", poll_interval=0.5) as kubelet:
        plugin = await start_plugin(kubelet, plugins)
        first = await kubelet.watcher.wait_registered(DRIVER)
        await plugin.stop_registration()
        await plugin.start_registration()  # well inside one poll interval
        second = await kubelet.watcher.wait_registered(DRIVER, after=first)
        assert first in kubelet.watcher.deregistered
        assert kubelet.watcher.plugins(DRIVER) == [second]
        await plugin.stop()


async def test_a_kubelet_restart_registers_running_plugins_again(kubelet, plugins):
    plugin = await start_plugin(kubelet, plugins)
    first = await kubelet.watcher.wait_registered(DRIVER)
    await kubelet.restart()
    second = await kubelet.watcher.wait_registered(DRIVER)
    assert second is not first
    assert (await plugin.wait_notified(count=2)).plugin_registered
    assert plugin.get_infos == 2  # the same socket, asked again


async def test_hidden_files_and_non_sockets_are_ignored(kubelet):
    os.makedirs(kubelet.plugins_registry, exist_ok=True)
    with open(os.path.join(kubelet.plugins_registry, "plain.sock"), "w"):
        pass
    hidden = socket.socket(socket.AF_UNIX)
    hidden.bind(os.path.join(kubelet.plugins_registry, ".hidden.sock"))
    try:
        await asyncio.sleep(0.3)
        assert kubelet.watcher.handshakes == []
    finally:
        hidden.close()


async def test_prepare_fails_where_the_kubelet_would(kubelet, plugins):
    await start_plugin(kubelet, plugins)
    registered = await kubelet.watcher.wait_registered(DRIVER)
    unknown = ClaimRef("default", "other", "uid-unknown")
    with pytest.raises(KubeletRejected, match="failed for claim default/other"):
        await registered.prepare([unknown])
    results = await registered.prepare([unknown], check=False)
    assert results[unknown.uid].error == "claim default/other unknown"


async def test_claims_left_out_of_the_answer_or_unknown_are_an_error(kubelet, plugins):
    plugin = await start_plugin(kubelet, plugins)
    registered = await kubelet.watcher.wait_registered(DRIVER)
    other = ClaimRef("default", "other", "uid-2")
    plugin.devices[CLAIM.uid] = [("p", "d", "v/c=d")]
    plugin.devices[other.uid] = []
    plugin.omit.add(other.uid)
    with pytest.raises(KubeletRejected, match="NodePrepareResources left out 1 claims"):
        await registered.prepare([CLAIM, other])
    plugin.omit.clear()
    plugin.extra = "uid-nobody-asked-for"
    with pytest.raises(KubeletRejected, match="unknown claim UID uid-nobody-asked-for"):
        await registered.prepare([CLAIM, other])
    with pytest.raises(KubeletRejected, match="NodeUnprepareResources returned result for unknown"):
        await registered.unprepare([CLAIM])


@pytest.mark.parametrize("version", ["v1alpha1", "v1beta1"])
async def test_health_stream_is_read_as_the_kubelet_does(short_dir, plugins, version):
    async with Kubelet(f"{short_dir}/kubelet", health_version=version) as kubelet:
        plugin = await start_plugin(kubelet, plugins)
        registered = await kubelet.watcher.wait_registered(DRIVER)
        assert registered.health is not None and registered.health.version == version
        await plugin.health.put([("node-a", "gpu-0", 1, ""), ("node-a", "gpu-1", 1, "")])
        await plugin.health.put([("node-a", "gpu-1", 2, "XID 79: fell off the bus")])
        cache = await registered.health.wait_for(
            lambda c: (
                c.get(("node-a", "gpu-1")) is not None
                and c[("node-a", "gpu-1")].health == "Unhealthy"
            )
        )
        assert cache[("node-a", "gpu-0")].health == "Healthy"
        assert cache[("node-a", "gpu-1")].message == "XID 79: fell off the bus"
        assert cache[("node-a", "gpu-1")].health_check_timeout_seconds == 30
        await plugin.stop()


async def test_health_stream_is_retried_after_unimplemented(short_dir, plugins):
    async with Kubelet(f"{short_dir}/kubelet", health_version="v1beta1", health_retry=0.05) as k:
        plugin = TinyDRAPlugin(k)
        plugin.with_health = False
        plugins.append(plugin)
        await plugin.start()
        registered = await k.watcher.wait_registered(DRIVER)
        assert registered.health is not None
        assert await registered.health.wait_error() == grpc.StatusCode.UNIMPLEMENTED
        await registered.health.wait_errors(3)  # opened again and again, 0.05 s apart
        assert set(registered.health.errors) == {grpc.StatusCode.UNIMPLEMENTED}
        await plugin.stop()


# --- the device-plugin side --------------------------------------------------------------


class TinyDevicePlugin:
    """A test-only device plugin: serves DevicePlugin on device-plugins/<name>.sock."""

    def __init__(self, kubelet: Kubelet, resource: str = "example.com/gpu") -> None:
        self.kubelet = kubelet
        self.resource = resource
        self.socket_name = "tiny-gpu.sock"
        self.path = os.path.join(kubelet.device_plugins_dir, self.socket_name)
        self.updates: asyncio.Queue[list[tuple[str, str]]] = asyncio.Queue()
        self.pre_started: list[list[str]] = []
        self.options_calls = 0
        self.server: grpc.aio.Server | None = None

    def servicer(self) -> Any:
        plugin = self

        class DevicePlugin(dp_grpc.DevicePluginServicer):
            async def GetDevicePluginOptions(self, request, context):
                plugin.options_calls += 1
                return dp.DevicePluginOptions(
                    pre_start_required=True, get_preferred_allocation_available=True
                )

            async def ListAndWatch(self, request, context):
                while True:
                    devices = await plugin.updates.get()
                    yield dp.ListAndWatchResponse(
                        devices=[
                            dp.Device(
                                ID=i,
                                health=h,
                                topology=dp.TopologyInfo(nodes=[dp.NUMANode(ID=0)]),
                            )
                            for i, h in devices
                        ]
                    )

            async def GetPreferredAllocation(self, request, context):
                return dp.PreferredAllocationResponse(
                    container_responses=[
                        dp.ContainerPreferredAllocationResponse(
                            deviceIDs=list(r.must_include_deviceIDs)
                            + [
                                d
                                for d in r.available_deviceIDs
                                if d not in r.must_include_deviceIDs
                            ][: r.allocation_size - len(r.must_include_deviceIDs)]
                        )
                        for r in request.container_requests
                    ]
                )

            async def Allocate(self, request, context):
                return dp.AllocateResponse(
                    container_responses=[
                        dp.ContainerAllocateResponse(
                            cdi_devices=[
                                dp.CDIDevice(name=f"example.com/gpu={i}") for i in r.devices_ids
                            ]
                        )
                        for r in request.container_requests
                    ]
                )

            async def PreStartContainer(self, request, context):
                plugin.pre_started.append(list(request.devices_ids))
                return dp.PreStartContainerResponse()

        return DevicePlugin()

    async def serve(self) -> None:
        self.server = await serve(
            self.path, (dp_grpc.add_DevicePluginServicer_to_server, self.servicer())
        )

    async def register(self, **overrides: Any) -> None:
        fields: dict[str, Any] = {
            "version": "v1beta1",
            "endpoint": self.socket_name,
            "resource_name": self.resource,
            "options": dp.DevicePluginOptions(
                pre_start_required=True, get_preferred_allocation_available=True
            ),
        } | overrides
        async with grpc.aio.insecure_channel(f"unix:{self.kubelet.kubelet_socket}") as channel:
            await dp_grpc.RegistrationStub(channel).Register(
                dp.RegisterRequest(**fields), timeout=15
            )

    async def stop(self) -> None:
        if self.server is not None:
            await shut(self.server, self.path)
            self.server = None


@pytest.fixture
async def device_plugin(kubelet: Kubelet) -> AsyncIterator[TinyDevicePlugin]:
    plugin = TinyDevicePlugin(kubelet)
    await plugin.serve()
    yield plugin
    await plugin.stop()


async def test_device_plugin_registers_and_streams_devices(kubelet, device_plugin):
    await device_plugin.updates.put([("GPU-a", "Healthy"), ("GPU-b", "Healthy")])
    await device_plugin.register()
    connection = kubelet.devices.plugin("example.com/gpu")
    assert device_plugin.options_calls == 1  # the kubelet asked before Register returned
    assert connection.options.get_preferred_allocation_available
    await connection.wait_update()
    assert connection.devices() == {"GPU-a": "Healthy", "GPU-b": "Healthy"}
    await device_plugin.updates.put([("GPU-a", "Healthy"), ("GPU-b", "Unhealthy")])
    update = await connection.wait_update(after=1)
    assert [(d.ID, d.health) for d in update.devices] == [
        ("GPU-a", "Healthy"),
        ("GPU-b", "Unhealthy"),
    ]
    assert update.devices[0].topology.nodes[0].ID == 0

    assert await connection.get_preferred_allocation(["GPU-a", "GPU-b"], ["GPU-b"], 2) == [
        "GPU-b",
        "GPU-a",
    ]
    response = await connection.allocate([["GPU-a"], ["GPU-b"]])
    assert [[c.name for c in r.cdi_devices] for r in response.container_responses] == [
        ["example.com/gpu=GPU-a"],
        ["example.com/gpu=GPU-b"],
    ]
    await connection.pre_start_container(["GPU-a"])
    assert device_plugin.pre_started == [["GPU-a"]]
    assert kubelet.devices.registrations[-1].error == ""


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        ({"version": "v1alpha"}, "requested API version 'v1alpha' is not supported by kubelet"),
        ({"resource_name": "gpu"}, "the ResourceName 'gpu' is invalid"),
        ({"resource_name": "kubernetes.io/gpu"}, "the ResourceName 'kubernetes.io/gpu' is invalid"),
    ],
)
async def test_bad_registrations_are_refused_like_the_kubelet(
    kubelet, device_plugin, overrides, error
):
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await device_plugin.register(**overrides)
    assert info.value.code() == grpc.StatusCode.UNKNOWN
    assert error in str(info.value.details())
    assert kubelet.devices.registrations[-1].error == info.value.details()


async def test_registering_before_serving_fails(kubelet, monkeypatch):
    monkeypatch.setattr(kubelet_devices, "DIAL_TIMEOUT", 0.3)
    plugin = TinyDevicePlugin(kubelet)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await plugin.register()
    assert "failed to dial device plugin" in str(info.value.details())


async def test_a_kubelet_restart_cleans_sockets_and_plugins_re_register(kubelet, device_plugin):
    checkpoint = os.path.join(kubelet.device_plugins_dir, CHECKPOINT_FILE)
    with open(checkpoint, "w") as f:
        f.write("{}")
    await device_plugin.updates.put([("GPU-a", "Healthy")])
    await device_plugin.register()
    first = kubelet.devices.plugin("example.com/gpu")
    await first.wait_update()

    await kubelet.devices.restart()
    assert not os.path.exists(device_plugin.path)  # the kubelet deleted the plugin's socket
    assert os.path.exists(checkpoint)
    assert os.path.exists(kubelet.kubelet_socket) and kubelet.devices.starts == 2
    with pytest.raises(kubelet_devices.DevicePluginRejected):
        kubelet.devices.plugin("example.com/gpu")

    await device_plugin.stop()  # what a plugin does when it sees kubelet.sock recreated
    await device_plugin.serve()
    await device_plugin.updates.put([("GPU-a", "Healthy")])
    await device_plugin.register()
    second = await kubelet.devices.wait_plugin("example.com/gpu", after=first)
    assert (await second.wait_update()).devices[0].ID == "GPU-a"


async def test_a_second_registration_replaces_the_first(kubelet, device_plugin):
    await device_plugin.register()
    first = kubelet.devices.plugin("example.com/gpu")
    await device_plugin.register()
    second = kubelet.devices.plugin("example.com/gpu")
    assert second is not first
    assert await first.wait_stream_end() is not None


@pytest.mark.parametrize(
    ("name", "extended"),
    [
        ("nvidia.com/gpu", True),
        ("nvidia.com/mig-1g.10gb", True),
        ("gpu", False),
        ("kubernetes.io/gpu", False),
        ("requests.nvidia.com/gpu", False),
        ("Nvidia.com/gpu", False),
        ("nvidia.com/", False),
        ("nvidia.com/a/b", False),
        ("nvidia.com/" + "g" * 64, False),
    ],
)
def test_extended_resource_names(name, extended):
    assert is_extended_resource_name(name) is extended
