"""The kubelet stand-in's DRA client: how the kubelet calls one registered DRA plugin.

Owns ``NodePrepareResources`` / ``NodeUnprepareResources`` on the DRA service the kubelet
chose (v1 or v1beta1; the same fields, converted one to one) with the kubelet's checks of
the answer (``choose_service`` picks it again as a kubelet of another minor would: one
before 1.34 has no v1, so it calls v1beta1), and the reader of the plugin's
``NodeWatchResources`` health stream (dra-health v1alpha1, which a 1.36 kubelet calls,
or v1beta1, which 1.37 calls), re-opened every ``retry`` seconds after it fails or ends
(Unimplemented included, as 1.36 does), with the kubelet's 1024-character cut of
messages. Written from the upstream kubelet (``pkg/kubelet/cm/dra``) of Kubernetes 1.36.

Must not import agent/ other than the generated ``agent.api`` modules.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

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
from tests.support._changes import Changes

__all__ = [
    "DEFAULT_CALL_TIMEOUT",
    "DRA_CLIENTS",
    "HEALTH_SERVICES",
    "PRE_V1_KUBELET_SERVICES",
    "ClaimRef",
    "DRAPlugin",
    "DeviceHealthReport",
    "HealthWatch",
    "KubeletRejected",
    "PreparedClaim",
    "PreparedDevice",
]

DEFAULT_CALL_TIMEOUT = 45.0  # the kubelet's defaultClientCallTimeout
#: The DRA services this stand-in can call, by the name a plugin registers them under.
DRA_CLIENTS: dict[str, tuple[Any, Any]] = {
    "v1.DRAPlugin": (dra_v1_grpc, dra_v1),
    "v1beta1.DRAPlugin": (dra_v1beta1_grpc, dra_v1beta1),
}
#: The DRA services a kubelet before 1.34 speaks: v1 came with 1.34.
PRE_V1_KUBELET_SERVICES = ("v1beta1.DRAPlugin",)
HEALTH_SERVICES = {"v1alpha1": health_v1alpha1_grpc, "v1beta1": health_v1beta1_grpc}
HEALTH_NAMES = {0: "Unknown", 1: "Healthy", 2: "Unhealthy"}


class KubeletRejected(Exception):
    """The kubelet would treat this plugin answer as a failure; the message is the kubelet's."""


@dataclass(frozen=True)
class ClaimRef:
    """A ResourceClaim as the kubelet names it to a DRA plugin."""

    namespace: str
    name: str
    uid: str


@dataclass(frozen=True)
class PreparedDevice:
    request_names: tuple[str, ...]
    pool_name: str
    device_name: str
    cdi_device_ids: tuple[str, ...]


@dataclass(frozen=True)
class PreparedClaim:
    devices: tuple[PreparedDevice, ...]
    error: str


@dataclass(frozen=True)
class DeviceHealthReport:
    """One device's entry of a NodeWatchResources response, the same for both versions."""

    pool_name: str
    device_name: str
    health: str  # "Healthy", "Unhealthy" or "Unknown", as the kubelet puts it in pod status
    last_updated_time: int
    health_check_timeout_seconds: int
    message: str


def _claims(module: Any, claims: Iterable[ClaimRef]) -> list[Any]:
    return [module.Claim(namespace=c.namespace, name=c.name, uid=c.uid) for c in claims]


class HealthWatch:
    """The kubelet's reader of one plugin's ``NodeWatchResources`` stream, re-opened on failure."""

    def __init__(self, channel: grpc.aio.Channel, version: str, retry: float) -> None:
        self.version = version
        self.responses: list[list[DeviceHealthReport]] = []
        self.errors: list[grpc.StatusCode] = []  # each failed or ended stream
        self.streams_opened = 0
        self._stub = HEALTH_SERVICES[version].DRAResourceHealthStub(channel)
        self._messages: Any = health_v1alpha1 if version == "v1alpha1" else health_v1beta1
        self._retry = retry
        self._changes = Changes()
        self._task = asyncio.create_task(self._run(), name=f"health-{version}")

    async def _run(self) -> None:
        while True:
            self.streams_opened += 1
            try:
                call = self._stub.NodeWatchResources(self._messages.NodeWatchResourcesRequest())
                async for response in call:
                    self.responses.append([self._report(d) for d in response.devices])
                    self._changes.notify()
                self.errors.append(grpc.StatusCode.OK)
            except grpc.aio.AioRpcError as error:
                self.errors.append(error.code())
            self._changes.notify()
            await asyncio.sleep(self._retry)

    @staticmethod
    def _report(device: Any) -> DeviceHealthReport:
        return DeviceHealthReport(
            pool_name=device.device.pool_name,
            device_name=device.device.device_name,
            health=HEALTH_NAMES.get(device.health, "Unknown"),
            last_updated_time=device.last_updated_time,
            health_check_timeout_seconds=device.health_check_timeout_seconds,
            message=device.message[:1021] + "..." if len(device.message) > 1024 else device.message,
        )

    def latest(self) -> dict[tuple[str, str], DeviceHealthReport]:
        """Each device's newest report, keyed by (pool, device), as the kubelet's cache holds it."""
        cache: dict[tuple[str, str], DeviceHealthReport] = {}
        for response in self.responses:
            for report in response:
                cache[(report.pool_name, report.device_name)] = report
        return cache

    async def wait_for(
        self,
        predicate: Callable[[dict[tuple[str, str], DeviceHealthReport]], bool],
        timeout: float = 10.0,
    ) -> dict[tuple[str, str], DeviceHealthReport]:
        """The cache once ``predicate`` holds for it."""
        return await self._changes.wait_for(
            lambda: self.latest() if predicate(self.latest()) else None, timeout, "device health"
        )

    async def wait_error(self, timeout: float = 10.0) -> grpc.StatusCode:
        """The code of the first stream that failed or ended."""
        return (await self.wait_errors(1, timeout))[0]

    async def wait_errors(self, count: int, timeout: float = 10.0) -> list[grpc.StatusCode]:
        """The codes of the first ``count`` streams that failed or ended."""
        return await self._changes.wait_for(
            lambda: self.errors[:count] if len(self.errors) >= count else None,
            timeout,
            f"{count} health stream errors",
        )

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


@dataclass(eq=False)
class DRAPlugin:
    """One registered instance of a DRA driver's kubelet plugin."""

    driver_name: str
    endpoint: str
    service: str  # the chosen one of DRA_SERVICES
    supported_versions: tuple[str, ...]
    registration_socket: str
    generation: int  # rises with every registration the watcher makes
    call_timeout: float
    channel: grpc.aio.Channel = field(repr=False)
    health: HealthWatch | None = None

    def connected(self) -> bool:
        return self.channel.get_state(try_to_connect=True) == grpc.ChannelConnectivity.READY

    def choose_service(self, kubelet_services: Sequence[str]) -> str:
        """Pick the service again as a kubelet speaking only ``kubelet_services`` would: the
        first of the plugin's supported versions it knows. Later calls go to that one."""
        unknown = [s for s in kubelet_services if s not in DRA_CLIENTS]
        if unknown:
            raise ValueError(f"the stand-in cannot call {unknown!r}")
        for service in self.supported_versions:
            if service in kubelet_services:
                self.service = service
                return service
        raise KubeletRejected(
            f"none of services supported by the plugin ({list(self.supported_versions)!r}) "
            f"are supported by the kubelet ({list(kubelet_services)!r})"
        )

    def _stub_and_module(self) -> tuple[Any, Any]:
        grpc_module, module = DRA_CLIENTS[self.service]
        return grpc_module.DRAPluginStub(self.channel), module

    async def prepare(
        self, claims: Sequence[ClaimRef], *, check: bool = True
    ) -> dict[str, PreparedClaim]:
        """``NodePrepareResources``; with ``check``, fail where the kubelet would."""
        stub, module = self._stub_and_module()
        request = module.NodePrepareResourcesRequest(claims=_claims(module, claims))
        response = await stub.NodePrepareResources(request, timeout=self.call_timeout)
        results = {
            uid: PreparedClaim(
                devices=tuple(
                    PreparedDevice(
                        request_names=tuple(d.request_names),
                        pool_name=d.pool_name,
                        device_name=d.device_name,
                        cdi_device_ids=tuple(d.cdi_device_ids),
                    )
                    for d in result.devices
                ),
                error=result.error,
            )
            for uid, result in response.claims.items()
        }
        if check:
            self._check("NodePrepareResources", claims, {u: r.error for u, r in results.items()})
        return results

    async def unprepare(self, claims: Sequence[ClaimRef], *, check: bool = True) -> dict[str, str]:
        """``NodeUnprepareResources``: each claim UID's error ("" when it worked)."""
        stub, module = self._stub_and_module()
        request = module.NodeUnprepareResourcesRequest(claims=_claims(module, claims))
        response = await stub.NodeUnprepareResources(request, timeout=self.call_timeout)
        errors = {uid: result.error for uid, result in response.claims.items()}
        if check:
            self._check("NodeUnprepareResources", claims, errors)
        return errors

    @staticmethod
    def _check(method: str, claims: Sequence[ClaimRef], errors: dict[str, str]) -> None:
        by_uid = {c.uid: c for c in claims}
        for uid, error in errors.items():
            claim = by_uid.get(uid)
            if claim is None:
                raise KubeletRejected(f"{method} returned result for unknown claim UID {uid}")
            if error:
                raise KubeletRejected(
                    f"{method} failed for claim {claim.namespace}/{claim.name}: {error}"
                )
        missing = len(by_uid) - len(errors)
        if missing:
            raise KubeletRejected(f"{method} left out {missing} claims")

    def watch_health(self, version: str = "v1alpha1", retry: float = 5.0) -> HealthWatch:
        """Open (or return the open) health stream, re-opened ``retry`` s after each failure."""
        if self.health is None:
            self.health = HealthWatch(self.channel, version, retry)
        return self.health

    async def close(self) -> None:
        if self.health is not None:
            await self.health.close()
        await self.channel.close()
