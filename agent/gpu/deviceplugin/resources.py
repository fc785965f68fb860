"""The device plugin's resources: which extended resources exist and their device ids.

Whole GPUs are ``[gpu.device_plugin] resource_name`` (``nvidia.com/gpu``). MIG devices
follow ``mig_strategy`` as in NVIDIA's plugin: ``none`` offers no MIG device (a GPU in
MIG mode is then not offered at all: a container given the whole GPU could run
nothing on it); ``single`` offers MIG devices under ``resource_name``; ``mixed`` one
resource per profile, ``<domain>/mig-<profile>`` (``nvidia.com/mig-1g.18gb``). Device
ids are GPU or MIG UUIDs, what DCGM-exporter and the pod-resources API expect; with
``[gpu.sharing] replicas = N`` each device is offered N times as ``<UUID>::<r>``
(NVIDIA's time-slicing ids). Imports only ``gpu.inventory``.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass

from agent.gpu.inventory import Device, Inventory

__all__ = ["REPLICA_SEPARATOR", "PluginDevice", "PluginResource", "plugin_resources", "socket_name"]

log = logging.getLogger(__name__)

REPLICA_SEPARATOR = "::"


@dataclass(frozen=True, slots=True)
class PluginDevice:
    id: str
    device: Device
    replica: int | None = None

    @property
    def uuid(self) -> str:
        return self.device.uuid

    @property
    def numa_node(self) -> int | None:
        numa = self.device.gpu.numa_node
        return numa if numa is not None and numa >= 0 else None


@dataclass(frozen=True, slots=True)
class PluginResource:
    name: str
    devices: tuple[PluginDevice, ...]

    def by_id(self) -> dict[str, PluginDevice]:
        return {d.id: d for d in self.devices}


def socket_name(resource: str) -> str:
    """The plugin's socket file in ``device-plugins/``."""
    return "model-agent-" + resource.replace("/", "-") + ".sock"


def _replicated(devices: list[Device], replicas: int) -> tuple[PluginDevice, ...]:
    if replicas <= 1:
        return tuple(PluginDevice(d.uuid, d) for d in devices)
    return tuple(
        PluginDevice(f"{d.uuid}{REPLICA_SEPARATOR}{r}", d, r)
        for d in devices
        for r in range(replicas)
    )


def plugin_resources(
    inventory: Inventory,
    gpu_uuids: Collection[str],
    *,
    resource_name: str,
    mig_strategy: str,
    replicas: int,
) -> list[PluginResource]:
    """The resources for the GPUs the device plugin offers (``gpu_uuids``), by name."""
    whole: list[Device] = []
    migs: dict[str, list[Device]] = {}
    for gpu in inventory.usable():
        if gpu.uuid not in gpu_uuids:
            continue
        if gpu.mig_mode == "enabled" and gpu.mig_devices:
            if mig_strategy == "none":
                log.info(
                    "device plugin: GPU %d is in MIG mode; not offered (mig_strategy = none)",
                    gpu.index,
                )
                continue
            for mig in gpu.mig_devices:
                migs.setdefault(mig.profile, []).append(Device(gpu, mig))
        else:
            whole.append(Device(gpu))
    domain = resource_name.partition("/")[0]
    grouped: dict[str, list[Device]] = {resource_name: whole}
    if mig_strategy == "single":
        if len(migs) > 1:
            log.warning(
                "device plugin: mig_strategy single with several MIG profiles (%s): they are "
                "all offered as %s",
                ", ".join(sorted(migs)),
                resource_name,
            )
        grouped[resource_name] = whole + [d for profile in sorted(migs) for d in migs[profile]]
    elif mig_strategy == "mixed":
        for profile in sorted(migs):
            grouped[f"{domain}/mig-{profile}"] = migs[profile]
    return [
        PluginResource(name, _replicated(devices, replicas))
        for name, devices in grouped.items()
        if devices or name == resource_name
    ]
