"""The kubelet stand-in: a temporary kubelet root with the kubelet's side of the plugin APIs.

No kubelet runs in these tests, so this plays its part towards the agent's kubelet-facing
plugins, over real gRPC on unix sockets, written from the upstream protos and kubelet
(Kubernetes 1.36):

- ``<root>/plugins_registry/``: the plugin watcher and DRA plugin manager
  (tests/support/kubelet_plugins.py: the registration handshake) and the DRA client
  (tests/support/kubelet_dra.py: v1/v1beta1 calls, the health stream);
- ``<root>/device-plugins/kubelet.sock``: the device manager
  (tests/support/kubelet_devices.py);
- ``<root>/plugins/``: where DRA drivers put their service sockets
  (``plugins/<driver>/dra.sock`` by convention).

``root`` must be short (unix socket paths end at 107 bytes): use the ``short_dir``
fixture, never the host's /var/lib/kubelet. Use it as ``async with Kubelet(root) as
kubelet``. Must not import agent/ other than the generated ``agent.api`` modules.
"""

from __future__ import annotations

import os
from types import TracebackType
from typing import Self

from tests.support.kubelet_devices import (
    CHECKPOINT_FILE,
    DeviceManager,
    DevicePlugin,
    DevicePluginRejected,
    Registration,
    is_extended_resource_name,
)
from tests.support.kubelet_dra import (
    ClaimRef,
    DeviceHealthReport,
    DRAPlugin,
    HealthWatch,
    KubeletRejected,
    PreparedClaim,
    PreparedDevice,
)
from tests.support.kubelet_plugins import (
    DRA_PLUGIN_TYPE,
    DRA_SERVICES,
    WIPE_DELAY,
    Handshake,
    PluginWatcher,
    SliceWiper,
)

__all__ = [
    "CHECKPOINT_FILE",
    "DRA_PLUGIN_TYPE",
    "DRA_SERVICES",
    "ClaimRef",
    "DRAPlugin",
    "DeviceHealthReport",
    "DeviceManager",
    "DevicePlugin",
    "DevicePluginRejected",
    "Handshake",
    "HealthWatch",
    "Kubelet",
    "KubeletRejected",
    "PluginWatcher",
    "PreparedClaim",
    "PreparedDevice",
    "Registration",
    "is_extended_resource_name",
]


class Kubelet:
    """Both kubelet halves on one root directory; ``restart()`` restarts both."""

    def __init__(
        self,
        root: str,
        *,
        health_version: str | None = None,
        health_retry: float = 5.0,
        call_timeout: float = 45.0,
        poll_interval: float = 0.02,
        slice_wiper: SliceWiper | None = None,
        wipe_delay: float = WIPE_DELAY,
    ) -> None:
        if os.path.realpath(root).startswith("/var/lib/kubelet"):
            raise ValueError("the stand-in must not touch the host's /var/lib/kubelet")
        self.root = root
        self.plugins_registry = os.path.join(root, "plugins_registry")
        self.plugins_dir = os.path.join(root, "plugins")
        self.device_plugins_dir = os.path.join(root, "device-plugins")
        self.watcher = PluginWatcher(
            self.plugins_registry,
            poll_interval=poll_interval,
            call_timeout=call_timeout,
            health_version=health_version,
            health_retry=health_retry,
            slice_wiper=slice_wiper,
            wipe_delay=wipe_delay,
        )
        self.devices = DeviceManager(self.device_plugins_dir)

    @property
    def kubelet_socket(self) -> str:
        return self.devices.socket_path

    def registration_socket(self, driver: str) -> str:
        """Where a DRA driver's registration socket goes: ``plugins_registry/<driver>-reg.sock``."""
        return os.path.join(self.plugins_registry, f"{driver}-reg.sock")

    def dra_socket(self, driver: str) -> str:
        """Where a DRA driver's service socket goes: ``plugins/<driver>/dra.sock``."""
        return os.path.join(self.plugins_dir, driver, "dra.sock")

    async def start(self) -> Self:
        os.makedirs(self.plugins_dir, mode=0o750, exist_ok=True)
        await self.watcher.start()
        await self.devices.start()
        return self

    async def stop(self) -> None:
        await self.devices.stop()
        await self.watcher.stop()

    async def restart(self) -> None:
        """A kubelet restart: every plugin registers again (DRA plugins without a new socket)."""
        await self.stop()
        await self.start()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
