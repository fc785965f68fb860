"""A container's GPU assignment: which GPUs and MIG devices it holds, and how it asked.

``GpuService.resolve`` returns one with the edits; ``pods/`` stores it with the
container record (``to_dict``/``from_dict`` give the JSON form), and metrics,
``ctl gpus``, the device plugin and the DRA driver read it back. ``via`` is how
a device was requested: ``cdi`` (``ContainerConfig.CDI_devices``),
``annotation`` (``cdi.k8s.io/*``), ``env`` (``NVIDIA_VISIBLE_DEVICES`` in the CRI
request) or ``device`` (a CRI ``Device`` entry for ``/dev/nvidia*``).
Imports only ``_util.serde``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agent._util.serde import from_dict, to_dict

__all__ = ["VIA", "Assignment", "GpuGrant"]

VIA = ("cdi", "annotation", "env", "device")


@dataclass(frozen=True, slots=True)
class GpuGrant:
    uuid: str  # the GPU's UUID, or the MIG device's
    gpu_uuid: str  # the physical GPU
    index: str  # "1" or "1:0"
    via: str  # one of VIA
    request: str  # the CDI name, the variable's token, or the device path that asked
    mig: bool = False
    profile: str = ""  # MIG profile, e.g. "1g.18gb"


@dataclass(frozen=True, slots=True)
class Assignment:
    grants: tuple[GpuGrant, ...] = ()
    #: every CDI name injected, of any vendor (a NIC's too), in order
    cdi_devices: tuple[str, ...] = ()
    #: NVIDIA_DRIVER_CAPABILITIES applied to the node spec's files; () = not filtered
    driver_capabilities: tuple[str, ...] = ()
    driver_only: bool = False  # NVIDIA_VISIBLE_DEVICES=none: driver files, no GPU
    #: what was asked for but not granted, and why (the secure default)
    denied: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.grants and not self.cdi_devices and not self.driver_only

    @property
    def gpu_uuids(self) -> tuple[str, ...]:
        """Whole GPUs held."""
        return tuple(g.uuid for g in self.grants if not g.mig)

    @property
    def mig_uuids(self) -> tuple[str, ...]:
        return tuple(g.uuid for g in self.grants if g.mig)

    @property
    def physical_gpus(self) -> tuple[str, ...]:
        """Every physical GPU touched, whole or through a MIG device, once each."""
        return tuple(dict.fromkeys(g.gpu_uuid for g in self.grants))

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = to_dict(self)
        return data

    @classmethod
    def from_dict(cls, data: Any) -> Assignment:
        return from_dict(cls, data)
