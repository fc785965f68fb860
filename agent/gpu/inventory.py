"""The node's GPUs at one moment: a frozen snapshot with the lookups the agent needs.

``Inventory.read(backend)`` asks the backend once and freezes the answer. A
snapshot never changes; the service swaps in a new one when a refresh finds a
different ``signature`` (the facts the node's CDI spec is built from: UUIDs,
minors, MIG devices and their capability minors, the driver version), which is
what regenerates the spec.

Lookups accept every way a user names a device: index (``"1"``), UUID
(``"GPU-…"``), MIG UUID (``"MIG-…"``), ``"<gpu>:<mig>"``, and the legacy MIG form
``"MIG-GPU-<uuid>/<gi>/<ci>"``. Imports only ``gpu.backend``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from agent.gpu.backend import (
    STATE_OK,
    BackendStatus,
    DriverInfo,
    GpuBackend,
    GpuInfo,
    MigInfo,
)

__all__ = ["Device", "Inventory"]


@dataclass(frozen=True, slots=True)
class Device:
    """A GPU or one MIG device of it: what a container can be given."""

    gpu: GpuInfo
    mig: MigInfo | None = None

    @property
    def uuid(self) -> str:
        return self.mig.uuid if self.mig else self.gpu.uuid

    @property
    def index(self) -> str:
        """``"1"`` for a GPU, ``"1:0"`` for a MIG device."""
        return f"{self.gpu.index}:{self.mig.index}" if self.mig else str(self.gpu.index)

    @property
    def is_mig(self) -> bool:
        return self.mig is not None


@dataclass(frozen=True, slots=True)
class Inventory:
    status: BackendStatus
    driver: DriverInfo = field(default_factory=DriverInfo)
    gpus: tuple[GpuInfo, ...] = ()

    @classmethod
    def read(cls, backend: GpuBackend) -> Inventory:
        """One snapshot from ``backend`` (blocking: call it in a thread)."""
        status = backend.status()
        if not status.available:
            return cls(status)
        gpus = tuple(sorted(backend.gpus(), key=lambda g: g.index))
        return cls(status, backend.driver(), gpus)

    # -- lookups --------------------------------------------------------

    def usable(self) -> tuple[GpuInfo, ...]:
        """GPUs that answer and have a device node (those a container can be given)."""
        return tuple(g for g in self.gpus if g.state == STATE_OK and g.minor is not None)

    def by_index(self, index: int) -> GpuInfo | None:
        return next((g for g in self.gpus if g.index == index), None)

    def by_uuid(self, uuid: str) -> GpuInfo | None:
        return next((g for g in self.gpus if g.uuid and g.uuid == uuid), None)

    def by_minor(self, minor: int) -> GpuInfo | None:
        return next((g for g in self.gpus if g.minor == minor), None)

    def mig_by_uuid(self, uuid: str) -> Device | None:
        for gpu in self.gpus:
            for mig in gpu.mig_devices:
                if mig.uuid == uuid:
                    return Device(gpu, mig)
        return None

    def mig_by_pair(self, gpu_index: int, mig_index: int) -> Device | None:
        gpu = self.by_index(gpu_index)
        if gpu is None:
            return None
        mig = next((m for m in gpu.mig_devices if m.index == mig_index), None)
        return Device(gpu, mig) if mig else None

    def mig_by_cap_minor(self, minor: int) -> Device | None:
        """The MIG device whose compute-instance capability node has this minor."""
        for gpu in self.gpus:
            for mig in gpu.mig_devices:
                if mig.ci_cap_minor == minor:
                    return Device(gpu, mig)
        return None

    def find(self, ident: str) -> Device | None:
        """Any spelling of a device id (see the module docstring); None when not on this node."""
        ident = ident.strip()
        if ident.isdigit():
            gpu = self.by_index(int(ident))
            return Device(gpu) if gpu else None
        gpu_part, sep, mig_part = ident.partition(":")
        if sep and gpu_part.isdigit() and mig_part.isdigit():
            return self.mig_by_pair(int(gpu_part), int(mig_part))
        if ident.startswith("MIG-GPU-"):
            parent, _, rest = ident[len("MIG-") :].partition("/")
            gi, _, ci = rest.partition("/")
            gpu = self.by_uuid(parent)
            if gpu is None or not gi.isdigit() or not ci.isdigit():
                return None
            for mig in gpu.mig_devices:
                if (mig.gpu_instance_id, mig.compute_instance_id) == (int(gi), int(ci)):
                    return Device(gpu, mig)
            return None
        if ident.startswith("MIG-"):
            return self.mig_by_uuid(ident)
        gpu = self.by_uuid(ident)
        return Device(gpu) if gpu else None

    def devices(self) -> tuple[Device, ...]:
        """Every usable GPU and every MIG device of a usable GPU."""
        out: list[Device] = []
        for gpu in self.usable():
            out.append(Device(gpu))
            out.extend(Device(gpu, mig) for mig in gpu.mig_devices)
        return tuple(out)

    # -- change detection -----------------------------------------------

    def signature(self) -> str:
        """A digest of what the node's CDI spec depends on; it changes when the spec must."""
        facts = {
            "driver": self.driver.driver_version,
            "gpus": [
                {
                    "index": g.index,
                    "uuid": g.uuid,
                    "minor": g.minor,
                    "state": g.state,
                    "mig": [
                        [m.index, m.uuid, m.gi_cap_minor, m.ci_cap_minor] for m in g.mig_devices
                    ],
                }
                for g in self.gpus
            ],
        }
        return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:16]
