"""Which kubelet path offers each GPU: the DRA driver or the device plugin, never both.

``[gpu] kubelet_api`` decides for the whole node (``device-plugin``, the default;
``dra``; ``none``), or ``split`` with ``[gpu.kubelet] dra_gpus`` naming the GPUs (index
or UUID) that DRA offers while the device plugin offers the rest. Because each GPU is
in exactly one of the two sets, the kubelet can never hand one GPU to two pods through
two paths. A MIG device goes with its GPU. Imports only ``gpu.inventory`` and ``config``.
"""

from __future__ import annotations

import logging

from agent.config import GpuSection
from agent.gpu.inventory import Inventory

__all__ = ["DEVICE_PLUGIN", "DRA", "kubelet_paths"]

log = logging.getLogger(__name__)

DRA = "dra"
DEVICE_PLUGIN = "device-plugin"


def kubelet_paths(config: GpuSection, inventory: Inventory) -> dict[str, str]:
    """GPU UUID → ``DRA`` or ``DEVICE_PLUGIN``, for every GPU a container can be given."""
    gpus = inventory.usable()
    if config.kubelet_api == "none":
        return {}
    if config.kubelet_api in (DRA, DEVICE_PLUGIN):
        return {g.uuid: config.kubelet_api for g in gpus}
    named = set()
    for ident in config.kubelet.dra_gpus:
        device = inventory.find(ident)
        if device is None or device.is_mig:
            log.warning("gpu.kubelet.dra_gpus: %s is not a GPU of this node; ignored", ident)
            continue
        named.add(device.gpu.uuid)
    return {g.uuid: DRA if g.uuid in named else DEVICE_PLUGIN for g in gpus}
