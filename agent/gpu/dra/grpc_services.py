"""The DRA driver's gRPC services, as the kubelet calls them.

- ``Registration`` (pluginregistration v1) on ``plugins_registry/<driver>-reg.sock``:
  ``GetInfo`` answers type ``DRAPlugin``, the driver name, the service socket and the
  services in the order the kubelet should prefer them (``v1.DRAPlugin``,
  ``v1beta1.DRAPlugin``); ``NotifyRegistrationStatus`` is logged and tells the driver.
- ``DRAPlugin`` v1 and v1beta1 (identical messages) on ``plugins/<driver>/dra.sock``:
  ``NodePrepareResources`` / ``NodeUnprepareResources``; each claim's failure goes
  into its own ``error``, so one bad claim never fails the others.
- ``DRAResourceHealth`` v1alpha1 (what a 1.36 kubelet calls) and v1beta1 (1.37):
  ``NodeWatchResources`` streams every device's health at once, again on each change,
  and at least every third of ``HEALTH_TIMEOUT_SECONDS`` (the kubelet marks a device
  whose report is older than the timeout ``Unknown``).

Only this module converts between these protobuf types and the driver's dataclasses.
Imports ``gpu.dra.prepare`` and the generated kubelet APIs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import grpc

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
    api_pb2 as registration,
    api_pb2_grpc as registration_grpc,
)
from agent.gpu.dra.prepare import ClaimRef, PreparedDevice

__all__ = [
    "DRA_PLUGIN_TYPE",
    "HEALTH_TIMEOUT_SECONDS",
    "SUPPORTED_VERSIONS",
    "DeviceHealthReport",
    "DraBackend",
    "add_dra_services",
    "add_registration_service",
]

log = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]

DRA_PLUGIN_TYPE = "DRAPlugin"
SUPPORTED_VERSIONS = ("v1.DRAPlugin", "v1beta1.DRAPlugin")
HEALTH_TIMEOUT_SECONDS = 60


@dataclass(frozen=True, slots=True)
class DeviceHealthReport:
    pool: str
    device: str
    healthy: bool
    message: str


class DraBackend(Protocol):
    """What the services need from the driver."""

    async def prepare(
        self, claims: Sequence[ClaimRef]
    ) -> dict[str, list[PreparedDevice] | str]: ...

    async def unprepare(self, claims: Sequence[ClaimRef]) -> dict[str, str]: ...

    def health_reports(self) -> list[DeviceHealthReport]: ...

    async def wait_health_changed(self, version: int, timeout: float) -> int: ...

    def registration_status(self, registered: bool, error: str) -> None: ...


def _claims(request: Any) -> list[ClaimRef]:
    return [ClaimRef(c.namespace, c.name, c.uid) for c in request.claims]


def _dra_servicer(module: Any, base: type[Any], backend: DraBackend) -> Any:
    class Servicer(base):  # type: ignore[misc]
        async def NodePrepareResources(self, request: Any, context: Context) -> Any:
            results = await backend.prepare(_claims(request))
            response = module.NodePrepareResourcesResponse()
            for uid, result in results.items():
                answer = response.claims[uid]
                if isinstance(result, str):
                    answer.error = result
                    continue
                for device in result:
                    answer.devices.append(
                        module.Device(
                            request_names=list(device.requests),
                            pool_name=device.pool,
                            device_name=device.device,
                            cdi_device_ids=list(device.cdi_ids),
                        )
                    )
            return response

        async def NodeUnprepareResources(self, request: Any, context: Context) -> Any:
            results = await backend.unprepare(_claims(request))
            response = module.NodeUnprepareResourcesResponse()
            for uid, error in results.items():
                response.claims[uid].error = error
            return response

    return Servicer()


def _health_servicer(module: Any, base: type[Any], backend: DraBackend) -> Any:
    class Servicer(base):  # type: ignore[misc]
        async def NodeWatchResources(self, request: Any, context: Context) -> AsyncIterator[Any]:
            version = await backend.wait_health_changed(-1, 0)  # the current one, at once
            while True:
                response = module.NodeWatchResourcesResponse()
                for report in backend.health_reports():
                    response.devices.append(
                        module.DeviceHealth(
                            device=module.DeviceIdentifier(
                                pool_name=report.pool, device_name=report.device
                            ),
                            health=module.HEALTHY if report.healthy else module.UNHEALTHY,
                            last_updated_time=int(time.time()),
                            health_check_timeout_seconds=HEALTH_TIMEOUT_SECONDS,
                            message=report.message[:1024],
                        )
                    )
                yield response
                version = await backend.wait_health_changed(version, HEALTH_TIMEOUT_SECONDS / 3)

    return Servicer()


def add_dra_services(server: grpc.aio.Server, backend: DraBackend) -> None:
    """DRAPlugin v1 + v1beta1 and DRAResourceHealth v1alpha1 + v1beta1 on ``server``."""
    dra_v1_grpc.add_DRAPluginServicer_to_server(
        _dra_servicer(dra_v1, dra_v1_grpc.DRAPluginServicer, backend), server
    )
    dra_v1beta1_grpc.add_DRAPluginServicer_to_server(
        _dra_servicer(dra_v1beta1, dra_v1beta1_grpc.DRAPluginServicer, backend), server
    )
    health_v1alpha1_grpc.add_DRAResourceHealthServicer_to_server(
        _health_servicer(health_v1alpha1, health_v1alpha1_grpc.DRAResourceHealthServicer, backend),
        server,
    )
    health_v1beta1_grpc.add_DRAResourceHealthServicer_to_server(
        _health_servicer(health_v1beta1, health_v1beta1_grpc.DRAResourceHealthServicer, backend),
        server,
    )


class _Registration(registration_grpc.RegistrationServicer):
    def __init__(self, driver: str, endpoint: str, notify: Callable[[bool, str], None]) -> None:
        self._info = registration.PluginInfo(
            type=DRA_PLUGIN_TYPE,
            name=driver,
            endpoint=endpoint,
            supported_versions=list(SUPPORTED_VERSIONS),
        )
        self._notify = notify

    async def GetInfo(
        self, request: registration.InfoRequest, context: Context
    ) -> registration.PluginInfo:
        return self._info

    async def NotifyRegistrationStatus(
        self, request: registration.RegistrationStatus, context: Context
    ) -> registration.RegistrationStatusResponse:
        self._notify(request.plugin_registered, request.error)
        return registration.RegistrationStatusResponse()


def add_registration_service(
    server: grpc.aio.Server, driver: str, endpoint: str, notify: Callable[[bool, str], None]
) -> None:
    registration_grpc.add_RegistrationServicer_to_server(
        _Registration(driver, endpoint, notify), server
    )
