"""The DRA driver inside the agent: kubelet plugin, ResourceSlices, health, claims.

``DraDriver.start`` rewrites lost claim specs from the checkpoint, publishes the pool
(``slices``), and serves the kubelet plugin: the service socket
``<kubelet dir>/plugins/<driver>/dra.sock`` (``grpc_services``) and the registration
socket ``<kubelet dir>/plugins_registry/<driver>-reg.sock``. Every second it checks
that both files are still its own and re-creates whichever vanished, so the kubelet's
watcher sees the socket again and re-registers the driver (a kubelet restart finds the
sockets where they were and registers them by itself). Nothing is created while the
kubelet dir does not exist. Health and inventory changes are followed: the slices get
the new taints, the health stream a new report. ``stop`` removes the sockets (so a
kubelet deletes this node's slices once its grace period passes, which is what happens
on uninstall) and, with ``delete_slices_on_stop``, deletes the slices itself.
Imports ``gpu`` modules, ``db``, ``config``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable, Collection, Sequence
from typing import Any

from agent._util.locks import KeyedLock
from agent.config import GpuSection
from agent.db import MetadataDB
from agent.errors import AgentError
from agent.gpu.dra.devices import DraDevice, dra_devices, slice_device
from agent.gpu.dra.grpc_services import (
    DeviceHealthReport,
    add_dra_services,
    add_registration_service,
)
from agent.gpu.dra.kube import ResourceApi, connect
from agent.gpu.dra.prepare import ClaimPreparer, ClaimRef, PreparedDevice
from agent.gpu.dra.slices import SlicePublisher
from agent.gpu.health import GpuHealth
from agent.gpu.inventory import Inventory
from agent.gpu.service import GpuService
from agent.gpu.sockets import UnixGrpcServer

__all__ = ["DraDriver", "node_name"]

log = logging.getLogger(__name__)

SOCKET_CHECK_SECONDS = 1.0
STOP_DELETE_TIMEOUT = 10.0


def node_name(configured: str) -> str:
    """The node's Kubernetes name: configured, else the hostname as the kubelet takes it."""
    return configured or socket.gethostname().lower()


class DraDriver:
    def __init__(
        self,
        config: GpuSection,
        *,
        gpu: GpuService,
        health: GpuHealth,
        db: MetadataDB,
        inventory: Callable[[], Inventory],
        offered: Callable[[], Collection[str]],
        api: Callable[[], ResourceApi] | None = None,
    ) -> None:
        self._config = config
        self._gpu = gpu
        self._health = health
        self.driver = config.dra.driver_name
        self.node = node_name(config.dra.node_name)
        self.pool = self.node
        self._offered = offered
        self._inventory = inventory
        self._client: ResourceApi | None = None
        self._api = api or self._connect
        kubelet = config.kubelet.dir
        self.kubelet_dir = kubelet
        self.socket_path = os.path.join(kubelet, "plugins", self.driver, "dra.sock")
        self.registration_path = os.path.join(
            kubelet, "plugins_registry", f"{self.driver}-reg.sock"
        )
        self._service = UnixGrpcServer(self.socket_path, lambda s: add_dra_services(s, self))
        self._registration = UnixGrpcServer(
            self.registration_path,
            lambda s: add_registration_service(
                s, self.driver, self.socket_path, self.registration_status
            ),
        )
        self.publisher = SlicePublisher(
            self._api, driver=self.driver, node=self.node, retry_max=config.dra.retry_max_seconds
        )
        self._preparer = ClaimPreparer(
            db=db,
            api=self._api,
            driver=self.driver,
            pool=self.pool,
            spec_dir=config.node_spec_dir,
            devices=self.devices,
            node_spec=gpu.node_spec,
        )
        self._locks = KeyedLock()
        self._devices: dict[str, DraDevice] = {}
        self._signature = ""
        self._tasks: list[asyncio.Task[None]] = []
        self.registered = False
        self.registration_error = ""

    def _connect(self) -> ResourceApi:
        if self._client is None:
            self._client = connect(self._config.dra.kubeconfig)
        return self._client

    # -- lifecycle ------------------------------------------------------

    async def start(self) -> None:
        self._refresh_devices(force=True)
        await asyncio.to_thread(self._preparer.restore)
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self.publisher.run(), name="dra-slices"),
            loop.create_task(self._watch_sockets(), name="dra-sockets"),
            loop.create_task(self._follow(), name="dra-health"),
        ]
        try:
            await self._check_sockets()
        except Exception:  # retried every second by _watch_sockets; the CRI must not wait
            log.exception("DRA: serving the kubelet plugin sockets failed")
        log.info(
            "DRA driver %s: node %s, %d devices, plugin %s",
            self.driver,
            self.node,
            len(self._devices),
            self.socket_path if self._service.serving else f"waiting for {self.kubelet_dir}",
        )

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self._registration.stop()
        await self._service.stop()
        if self._config.dra.delete_slices_on_stop:
            try:
                await asyncio.wait_for(
                    asyncio.to_thread(self.publisher.delete), STOP_DELETE_TIMEOUT
                )
            except (AgentError, TimeoutError) as exc:
                log.warning("DRA: could not delete the ResourceSlices of %s: %s", self.node, exc)
        if self._client is not None:
            self._client.close()
            self._client = None

    async def _watch_sockets(self) -> None:
        while True:
            await asyncio.sleep(SOCKET_CHECK_SECONDS)
            try:
                await self._check_sockets()
            except Exception:
                log.exception("DRA: serving the kubelet plugin sockets failed")

    async def _check_sockets(self) -> None:
        """(Re)create whichever socket is missing, once the kubelet dir exists."""
        if not self._kubelet_present():
            return
        if not self._service.intact():
            if self._service.serving:
                log.info("DRA: %s disappeared; serving it again", self.socket_path)
            await self._service.restart()
        if not self._registration.intact():
            if self._registration.serving:
                log.info("DRA: %s disappeared; registering again", self.registration_path)
                self.registered = False
            await self._registration.restart()

    def _kubelet_present(self) -> bool:
        return os.path.isdir(self.kubelet_dir)

    async def _follow(self) -> None:
        """Follow health and inventory changes into the slices (the stream follows by itself)."""
        version = self._health.version
        while True:
            version = await self._health.wait_changed(version, timeout=5.0)
            self._refresh_devices()

    # -- devices --------------------------------------------------------

    def devices(self) -> dict[str, DraDevice]:
        return dict(self._devices)

    def _refresh_devices(self, *, force: bool = False) -> None:
        inventory = self._inventory()
        offered = set(self._offered())
        signature = f"{inventory.signature()}/{sorted(offered)}"
        if force or signature != self._signature:
            devices = dra_devices(inventory, offered, self._config.sharing.replicas)
            self._devices = {d.name: d for d in devices}
            self._signature = signature
        driver = inventory.driver
        self.publisher.set_devices(
            [slice_device(d, driver, self._health.of(d.gpu_uuid)) for d in self._devices.values()]
        )

    def health_reports(self) -> list[DeviceHealthReport]:
        out = []
        for device in self._devices.values():
            health = self._health.of(device.gpu_uuid)
            healthy = health is None or health.healthy
            out.append(
                DeviceHealthReport(
                    pool=self.pool,
                    device=device.name,
                    healthy=healthy,
                    message="" if healthy or health is None else health.message,
                )
            )
        return out

    async def wait_health_changed(self, version: int, timeout: float) -> int:
        return await self._health.wait_changed(version, timeout)

    # -- the kubelet's calls --------------------------------------------

    def registration_status(self, registered: bool, error: str) -> None:
        self.registered = registered
        self.registration_error = error
        if registered:
            log.info("DRA driver %s: registered with the kubelet", self.driver)
            self.publisher.resync()
        else:
            log.error("DRA driver %s: the kubelet refused the registration: %s", self.driver, error)

    async def prepare(self, claims: Sequence[ClaimRef]) -> dict[str, list[PreparedDevice] | str]:
        async def one(claim: ClaimRef) -> list[PreparedDevice] | str:
            async with self._locks.hold(claim.uid):
                try:
                    return await asyncio.to_thread(self._preparer.prepare, claim)
                except AgentError as exc:
                    log.warning("DRA: prepare %s failed: %s", claim, exc)
                    return str(exc)
                except Exception as exc:
                    log.exception("DRA: prepare %s failed", claim)
                    return f"internal error: {exc}"

        answers = await asyncio.gather(*(one(c) for c in claims))
        return {c.uid: a for c, a in zip(claims, answers, strict=True)}

    async def unprepare(self, claims: Sequence[ClaimRef]) -> dict[str, str]:
        async def one(claim: ClaimRef) -> str:
            async with self._locks.hold(claim.uid):
                try:
                    await asyncio.to_thread(self._preparer.unprepare, claim)
                except Exception as exc:
                    log.exception("DRA: unprepare %s failed", claim)
                    return f"unprepare failed: {exc}"
                return ""

        answers = await asyncio.gather(*(one(c) for c in claims))
        return {c.uid: a for c, a in zip(claims, answers, strict=True)}

    # -- Status ---------------------------------------------------------

    def status_info(self) -> dict[str, Any]:
        return {
            "driver": self.driver,
            "node": self.node,
            "socket": self.socket_path if self._service.serving else "",
            "registrationSocket": self.registration_path if self._registration.serving else "",
            "registered": self.registered,
            "registrationError": self.registration_error,
            "devices": sorted(self._devices),
            "poolGeneration": self.publisher.generation,
            "sliceError": self.publisher.last_error,
            "preparedClaims": sorted(self._preparer.checkpoint()),
        }
