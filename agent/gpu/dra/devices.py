"""The DRA driver's devices: what this node offers, as ResourceSlice device entries.

A GPU is device ``gpu-<minor>``; a GPU in MIG mode offers its MIG devices instead
(``gpu-<minor>-mig-<gi>-<ci>``), never itself, so one allocation cannot overlap
another; with ``[gpu.sharing] replicas = N`` each is offered N times
(``…-replica-<r>``, time-slicing, no isolation). Attributes and capacities carry the
names NVIDIA's DRA driver publishes, so a DeviceClass or claim selector written for
``gpu.nvidia.com`` works unchanged when the driver name is set to it: ``type``
(``gpu`` | ``mig``), ``uuid``, ``index``, ``minor``, ``productName``, ``brand``,
``architecture``, ``cudaComputeCapability``, ``driverVersion``, ``cudaDriverVersion``
(versions as semver), ``pcieBusID`` (and the standard ``resource.kubernetes.io/pciBusID``),
the standard ``resource.kubernetes.io/pcieRoot`` (the root complex, ``pci0000:00``, from
sysfs: where the GPU's bus id resolves there, never for a simulated GPU unless a sysfs
root is given), MIG devices ``parentUUID``, ``parentIndex``, ``parentMinor``, ``profile``; capacity
``memory`` (and ``multiprocessors`` for MIG). Ours on top: ``numaNode``, ``replica``.

An unhealthy GPU's devices carry a ``DeviceTaint`` the scheduler respects:
``gpu.model-agent.io/xid`` (value: the XID), ``…/ecc``, ``…/gpu-lost``, ``…/unhealthy``;
``NoExecute`` when the GPU needs a reset or left the bus, else ``NoSchedule``.
Imports only ``gpu`` modules.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from agent.gpu.backend import DriverInfo, GpuInfo
from agent.gpu.health import REASON_ECC, REASON_LOST, REASON_XID, DeviceHealth
from agent.gpu.inventory import Device, Inventory

__all__ = [
    "TAINT_DOMAIN",
    "DraDevice",
    "binary_quantity",
    "dra_devices",
    "pcie_root",
    "semver",
    "slice_device",
]

TAINT_DOMAIN = "gpu.model-agent.io"
STANDARD_PREFIX = "resource.kubernetes.io/"


@dataclass(frozen=True, slots=True)
class DraDevice:
    """One device of this node's pool."""

    name: str
    device: Device
    replica: int | None = None
    pcie_root: str = ""  # "pci0000:00"; "" where sysfs does not say

    @property
    def uuid(self) -> str:
        return self.device.uuid

    @property
    def gpu_uuid(self) -> str:
        return self.device.gpu.uuid


def _base_name(device: Device) -> str:
    minor = device.gpu.minor if device.gpu.minor is not None else device.gpu.index
    if device.mig is None:
        return f"gpu-{minor}"
    return f"gpu-{minor}-mig-{device.mig.gpu_instance_id}-{device.mig.compute_instance_id}"


def pcie_root(bus_id: str, sysfs: str = "/sys") -> str:
    """The PCIe root complex of a PCI device (``pci0000:00``), as Kubernetes' own helper
    reads it: ``<sysfs>/bus/pci/devices/<id>`` links to ``devices/pci<root>/…/<id>``;
    "" when it does not."""
    link = os.path.join(sysfs, "bus", "pci", "devices", bus_id)
    try:
        target = os.readlink(link)
    except OSError:
        return ""
    resolved = os.path.normpath(os.path.join(os.path.dirname(link), target))
    parts = os.path.relpath(resolved, os.path.normpath(sysfs)).split(os.sep)
    if len(parts) < 3 or parts[0] != "devices" or parts[-1] != bus_id:
        return ""
    return parts[1] if parts[1].startswith("pci") else ""


def dra_devices(
    inventory: Inventory, gpu_uuids: Collection[str], replicas: int, *, sysfs: str | None = None
) -> list[DraDevice]:
    """The pool's devices for the GPUs DRA offers (``gpu_uuids``).

    ``sysfs`` is where PCIe roots are read; by default the host's ``/sys`` for NVML's
    GPUs only (a simulated GPU's made-up bus id may name a real host device).
    """
    if sysfs is None:
        sysfs = "/sys" if inventory.status.backend == "nvml" else ""
    out: list[DraDevice] = []
    for gpu in inventory.usable():
        if gpu.uuid not in gpu_uuids:
            continue
        root = pcie_root(pci_bus_id(gpu.pci_bus_id), sysfs) if sysfs and gpu.pci_bus_id else ""
        if gpu.mig_mode == "enabled" and gpu.mig_devices:
            devices = [Device(gpu, mig) for mig in gpu.mig_devices]
        else:
            devices = [Device(gpu)]
        for device in devices:
            base = _base_name(device)
            if replicas <= 1:
                out.append(DraDevice(base, device, pcie_root=root))
            else:
                out.extend(
                    DraDevice(f"{base}-replica-{r}", device, r, root) for r in range(replicas)
                )
    return out


def semver(version: str) -> str | None:
    """``"9.0"`` → ``"9.0.0"``, ``"535.104.05"`` → ``"535.104.5"``; None if not numeric."""
    parts = version.strip().split(".")
    if not parts or len(parts) > 3 or not all(p.isdigit() for p in parts):
        return None
    numbers = [str(int(p)) for p in parts] + ["0"] * (3 - len(parts))
    return ".".join(numbers)


def binary_quantity(value: int) -> str:
    """A byte count in the API server's canonical BinarySI form (``81559Mi``)."""
    for power, suffix in ((6, "Ei"), (5, "Pi"), (4, "Ti"), (3, "Gi"), (2, "Mi"), (1, "Ki")):
        base = 1024**power
        if value and value % base == 0:
            return f"{value // base}{suffix}"
    return str(value)


def pci_bus_id(nvml_id: str) -> str:
    """NVML's ``00000000:18:00.0`` → ``0000:18:00.0`` (lower case), as Linux names it."""
    value = nvml_id.strip().lower()
    domain, sep, rest = value.partition(":")
    if sep and len(domain) == 8 and domain.startswith("0000"):
        return f"{domain[4:]}:{rest}"
    return value


def _gpu_facts(gpu: GpuInfo, driver: DriverInfo) -> dict[str, dict[str, Any]]:
    facts: dict[str, dict[str, Any]] = {
        "productName": {"string": gpu.name},
        "brand": {"string": gpu.brand},
        "architecture": {"string": gpu.architecture},
    }
    for key, value in (
        ("cudaComputeCapability", gpu.cuda_compute_capability),
        ("driverVersion", driver.driver_version),
        ("cudaDriverVersion", driver.cuda_driver_version),
    ):
        version = semver(value)
        if version is not None:
            facts[key] = {"version": version}
    if gpu.pci_bus_id:
        facts["pcieBusID"] = {"string": pci_bus_id(gpu.pci_bus_id)}
    if gpu.numa_node is not None and gpu.numa_node >= 0:
        facts["numaNode"] = {"int": gpu.numa_node}
    return {k: v for k, v in facts.items() if v.get("string", True) != ""}


def _taint(health: DeviceHealth) -> dict[str, Any]:
    if health.reason == REASON_XID:
        key, value = "xid", str(health.xid)
    elif health.reason == REASON_ECC:
        key, value = "ecc", "uncorrectable"
    elif health.reason == REASON_LOST:
        key, value = "gpu-lost", ""
    else:
        key, value = "unhealthy", health.reason
    hard = health.needs_reset or health.reason == REASON_LOST
    added = datetime.datetime.fromtimestamp(int(health.since), datetime.UTC)
    return {
        "key": f"{TAINT_DOMAIN}/{key}",
        "value": value,
        "effect": "NoExecute" if hard else "NoSchedule",
        "timeAdded": added.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def slice_device(
    device: DraDevice, driver: DriverInfo, health: DeviceHealth | None
) -> dict[str, Any]:
    """The ResourceSlice ``spec.devices[]`` entry of one device (JSON form)."""
    gpu, mig = device.device.gpu, device.device.mig
    attributes: dict[str, dict[str, Any]] = {"uuid": {"string": device.uuid}}
    attributes |= _gpu_facts(gpu, driver)
    capacity: dict[str, dict[str, Any]] = {}
    if mig is None:
        attributes["type"] = {"string": "gpu"}
        attributes["index"] = {"int": gpu.index}
        if gpu.minor is not None:
            attributes["minor"] = {"int": gpu.minor}
        if gpu.pci_bus_id:
            attributes[f"{STANDARD_PREFIX}pciBusID"] = {"string": pci_bus_id(gpu.pci_bus_id)}
        if gpu.memory_total:
            capacity["memory"] = {"value": binary_quantity(gpu.memory_total)}
    else:
        attributes["type"] = {"string": "mig"}
        attributes["parentUUID"] = {"string": gpu.uuid}
        attributes["parentIndex"] = {"int": gpu.index}
        if gpu.minor is not None:
            attributes["parentMinor"] = {"int": gpu.minor}
        attributes["profile"] = {"string": mig.profile}
        if mig.memory_total:
            capacity["memory"] = {"value": binary_quantity(mig.memory_total)}
        if mig.multiprocessor_count:
            capacity["multiprocessors"] = {"value": str(mig.multiprocessor_count)}
    if device.pcie_root:
        attributes[f"{STANDARD_PREFIX}pcieRoot"] = {"string": device.pcie_root}
    if device.replica is not None:
        attributes["replica"] = {"int": device.replica}
    entry: dict[str, Any] = {"name": device.name, "attributes": dict(sorted(attributes.items()))}
    if capacity:
        entry["capacity"] = capacity
    if health is not None and not health.healthy:
        entry["taints"] = [_taint(health)]
    return entry
