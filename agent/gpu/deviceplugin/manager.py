"""The device plugins of the node: one ``DevicePluginServer`` per extended resource.

Builds the resources (``resources``) for the GPUs the device plugin path offers, starts
a plugin for each, and follows changes: a health change makes every plugin's
``ListAndWatch`` send its list again; an inventory change (a GPU lost, MIG devices
re-created) updates the devices, starting or stopping plugins whose resource appeared
or went away. ``allocated`` is the env fallback's check at ``CreateContainer``
(``tokens``). Imports ``gpu`` modules, ``db``, ``config``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Collection, Mapping
from typing import Any

from agent.config import GpuSection
from agent.db import MetadataDB
from agent.gpu.deviceplugin.plugin import DevicePluginServer
from agent.gpu.deviceplugin.resources import PluginResource, plugin_resources
from agent.gpu.deviceplugin.tokens import AllocationTokens
from agent.gpu.health import GpuHealth
from agent.gpu.inventory import Inventory

__all__ = ["DevicePlugins"]

log = logging.getLogger(__name__)

FOLLOW_SECONDS = 5.0
PRUNE_SECONDS = 3600.0


class DevicePlugins:
    def __init__(
        self,
        config: GpuSection,
        *,
        health: GpuHealth,
        db: MetadataDB,
        inventory: Callable[[], Inventory],
        offered: Callable[[], Collection[str]],
    ) -> None:
        self._config = config
        self._health = health
        self._offered = offered
        self._inventory = inventory
        self.tokens = AllocationTokens(db)
        self.device_plugins_dir = os.path.join(config.kubelet.dir, "device-plugins")
        self.plugins: dict[str, DevicePluginServer] = {}
        self._signature = ""
        self._task: asyncio.Task[None] | None = None

    def _resources(self) -> list[PluginResource]:
        section = self._config.device_plugin
        return plugin_resources(
            self._inventory(),
            set(self._offered()),
            resource_name=section.resource_name,
            mig_strategy=section.mig_strategy,
            replicas=self._config.sharing.replicas,
        )

    def _peers(self, gpu_uuid: str) -> frozenset[str]:
        gpu = self._inventory().by_uuid(gpu_uuid)
        return frozenset(gpu.nvlink_peers) if gpu else frozenset()

    async def start(self) -> None:
        pruned = await asyncio.to_thread(self.tokens.prune)
        if pruned:
            log.info("device plugin: forgot %d old allocation tokens", pruned)
        await self._sync(force=True)
        self._task = asyncio.get_running_loop().create_task(self._follow(), name="device-plugins")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for plugin in self.plugins.values():
            await plugin.stop()
        self.plugins.clear()

    async def _sync(self, *, force: bool = False) -> None:
        inventory = self._inventory()
        signature = f"{inventory.signature()}/{sorted(self._offered())}"
        if not force and signature == self._signature:
            return
        self._signature = signature
        wanted = {r.name: r for r in self._resources()}
        for name in [n for n in self.plugins if n not in wanted]:
            await self.plugins.pop(name).stop()
        for name, resource in wanted.items():
            plugin = self.plugins.get(name)
            if plugin is not None:
                plugin.update(resource)
                continue
            plugin = DevicePluginServer(
                resource,
                device_plugins_dir=self.device_plugins_dir,
                health=self._health,
                tokens=self.tokens,
                cdi_kind=self._config.cdi_kind,
                env_fallback=self._config.device_plugin.env_fallback,
                nvlink_peers=self._peers,
            )
            self.plugins[name] = plugin
            await plugin.start()

    async def _follow(self) -> None:
        version = self._health.version
        next_prune = time.monotonic() + PRUNE_SECONDS
        while True:
            new = await self._health.wait_changed(version, timeout=FOLLOW_SECONDS)
            try:
                if new != version:
                    for plugin in self.plugins.values():
                        plugin.notify()
                version = new
                await self._sync()
                if time.monotonic() >= next_prune:
                    next_prune = time.monotonic() + PRUNE_SECONDS
                    await asyncio.to_thread(self.tokens.prune)
            except Exception:
                log.exception("device plugins: following GPU changes failed")

    def allocated(self, env: Mapping[str, str], labels: Mapping[str, str]) -> frozenset[str]:
        return self.tokens.devices_for(env, labels)

    def status_info(self) -> dict[str, Any]:
        return {
            name: {
                "socket": plugin.socket_path,
                "registrations": plugin.registrations,
                "devices": [d.id for d in plugin.resource.devices],
            }
            for name, plugin in self.plugins.items()
        }
