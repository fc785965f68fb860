"""``KubeletPlugins``: the GPU side of the kubelet, one object for ``app.py`` to run.

It owns the node's ``GpuHealth`` and the ``HealthMonitor`` thread feeding it (both run
whatever ``kubelet_api`` says, so the health metric and log lines exist on every GPU
node), and, for the GPUs ``kubelet_split`` gives each path, the DRA driver
(``dra.DraDriver``) and the device plugins (``deviceplugin.DevicePlugins``).

The GPUs offered are sticky: a GPU once offered stays in the DRA pool and the device
plugin's list with its last good facts when NVML loses it, so the kubelet and the
scheduler see it *unhealthy* (tainted, ``Unhealthy``) rather than gone, and it comes
back the moment it answers again. ``allocated`` is the check ``CreateContainer`` makes
for the device plugin's env fallback. ``start`` and ``stop`` are awaited by the
composition root after the GPU service started and before it closes. Imports ``gpu``
modules, ``db``, ``config``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

from agent.config import GpuSection
from agent.db import MetadataDB
from agent.gpu.backend import STATE_OK, GpuEvent, GpuInfo
from agent.gpu.deviceplugin.manager import DevicePlugins
from agent.gpu.dra.driver import DraDriver
from agent.gpu.dra.kube import ResourceApi
from agent.gpu.health import GpuHealth
from agent.gpu.health_monitor import HealthMonitor
from agent.gpu.inventory import Inventory
from agent.gpu.kubelet_split import DEVICE_PLUGIN, DRA, kubelet_paths
from agent.gpu.service import GpuService

__all__ = ["KubeletPlugins"]

log = logging.getLogger(__name__)


class KubeletPlugins:
    def __init__(
        self,
        config: GpuSection,
        *,
        gpu: GpuService,
        db: MetadataDB,
        state_dir: str,
        api: Callable[[], ResourceApi] | None = None,
    ) -> None:
        self._config = config
        self._gpu = gpu
        self._db = db
        self._api = api
        self.health = GpuHealth(
            config.health, state_file=os.path.join(state_dir, "gpu-health.json")
        )
        self._monitor = HealthMonitor(
            lambda: gpu.backend, self.health, interval=config.health.check_interval_seconds
        )
        self._monitoring = False
        self._known: dict[str, GpuInfo] = {}
        self._paths: dict[str, str] = {}
        self.dra: DraDriver | None = None
        self.device_plugins: DevicePlugins | None = None

    # -- what is offered ------------------------------------------------

    def offer_inventory(self) -> Inventory:
        """The inventory the kubelet paths offer: current GPUs plus lost ones, sticky."""
        inventory = self._gpu.inventory()
        for gpu in inventory.gpus:
            if gpu.uuid and gpu.state == STATE_OK and gpu.minor is not None:
                self._known[gpu.uuid] = gpu
        gpus = tuple(
            sorted(
                (dataclasses.replace(g, state=STATE_OK, error="") for g in self._known.values()),
                key=lambda g: g.index,
            )
        )
        return Inventory(inventory.status, inventory.driver, gpus)

    def _offered(self, path: str) -> set[str]:
        paths = kubelet_paths(self._config, self.offer_inventory())
        for uuid, where in paths.items():
            self._paths.setdefault(uuid, where)  # a GPU never changes path while we run
        return {uuid for uuid, where in self._paths.items() if where == path}

    # -- lifecycle ------------------------------------------------------

    async def start(self) -> None:
        inventory = self._gpu.inventory()
        if self._config.health.enabled and inventory.status.available:
            await asyncio.to_thread(self._monitor.start)
            self._monitoring = True
        self._offered(DRA)
        kinds = set(self._paths.values())
        if DRA in kinds:
            self.dra = DraDriver(
                self._config,
                gpu=self._gpu,
                health=self.health,
                db=self._db,
                inventory=self.offer_inventory,
                offered=lambda: self._offered(DRA),
                api=self._api,
            )
            await self.dra.start()
        if DEVICE_PLUGIN in kinds:
            self.device_plugins = DevicePlugins(
                self._config,
                health=self.health,
                db=self._db,
                inventory=self.offer_inventory,
                offered=lambda: self._offered(DEVICE_PLUGIN),
            )
            await self.device_plugins.start()
        if inventory.gpus and not kinds:
            log.info(
                "GPUs are not offered to the kubelet (gpu.kubelet_api = %s)",
                self._config.kubelet_api,
            )

    async def stop(self) -> None:
        if self.device_plugins is not None:
            await self.device_plugins.stop()
            self.device_plugins = None
        if self.dra is not None:
            await self.dra.stop()
            self.dra = None
        if self._monitoring:
            await asyncio.to_thread(self._monitor.stop)
            self._monitoring = False

    @property
    def watching_events(self) -> bool:
        """Whether the health monitor reads the driver's event stream (it runs)."""
        return self._monitoring

    def observe_events(self, callback: Callable[[list[GpuEvent]], None]) -> None:
        """Hand ``callback`` every batch of driver events the health monitor reads."""
        self._monitor.observers.append(callback)

    # -- for CreateContainer and Status ---------------------------------

    def allocated(self, env: Mapping[str, str], labels: Mapping[str, str]) -> frozenset[str]:
        """GPU/MIG UUIDs the device plugin allocated to a container, by its token."""
        if self.device_plugins is None:
            return frozenset()
        return self.device_plugins.allocated(env, labels)

    def status_info(self) -> dict[str, Any]:
        return {
            "kubeletApi": self._config.kubelet_api,
            "paths": dict(self._paths),
            "health": {
                uuid: dataclasses.asdict(h) for uuid, h in sorted(self.health.devices().items())
            },
            "dra": self.dra.status_info() if self.dra else None,
            "devicePlugins": self.device_plugins.status_info() if self.device_plugins else None,
        }
