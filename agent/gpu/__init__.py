"""NVIDIA GPUs for containers: backends, inventory, CDI, the NVIDIA variables, the facade.

* ``backend`` — the ``GpuBackend`` interface and its value types; ``nvml`` (the
  only ``pynvml`` import, with ``nvml_read``/``nvml_events``), ``simulated``
  (+ ``simulated_file``) and ``NoGpuBackend``; ``factory`` picks one.
* ``inventory`` — a frozen snapshot of the node's GPUs with lookups.
* ``cdi/`` — spec model and parsing, the spec directories, applying edits to an
  OCI spec, driver file discovery, the node's own spec, the ldconfig hook.
* ``env`` — NVIDIA_VISIBLE_DEVICES / _DRIVER_CAPABILITIES / _REQUIRE_* and the
  secure-default policy; ``assignment`` — what a container holds.
* ``service.GpuService`` — the facade ``pods/`` and ``cri/`` call.
* ``health`` (+ ``health_monitor``) — which GPUs are healthy, for every kubelet path
  and the metrics; ``kubelet_split`` — which path offers each GPU; ``dra/`` — the DRA
  driver; ``deviceplugin/`` — the device plugin; ``sockets`` — their unix-socket
  servers; ``kubelet_plugins.KubeletPlugins`` — all of it, for ``app.py``.

Nothing here imports ``pods``, ``cri`` or protobuf types.
"""

# Exports are resolved lazily (PEP 562): ``agent.gpu.cdi.hook`` is a program runc starts
# for every GPU container, and importing it must not pull in the service's imports.
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.gpu.assignment import Assignment, GpuGrant
    from agent.gpu.backend import (
        STATE_OK,
        GpmSample,
        GpuBackend,
        GpuEvent,
        GpuEventStream,
        GpuInfo,
        GpuProcess,
        GpuSample,
        MigInfo,
        ProcessUtilization,
    )
    from agent.gpu.cdi.spec import ContainerEdits
    from agent.gpu.health import DeviceHealth, GpuHealth
    from agent.gpu.inventory import Device, Inventory
    from agent.gpu.kubelet_plugins import KubeletPlugins
    from agent.gpu.service import GpuService, env_from_list

_EXPORTS = {
    "STATE_OK": "agent.gpu.backend",
    "Assignment": "agent.gpu.assignment",
    "ContainerEdits": "agent.gpu.cdi.spec",
    "Device": "agent.gpu.inventory",
    "DeviceHealth": "agent.gpu.health",
    "GpmSample": "agent.gpu.backend",
    "GpuBackend": "agent.gpu.backend",
    "GpuEvent": "agent.gpu.backend",
    "GpuEventStream": "agent.gpu.backend",
    "GpuGrant": "agent.gpu.assignment",
    "GpuHealth": "agent.gpu.health",
    "GpuInfo": "agent.gpu.backend",
    "GpuProcess": "agent.gpu.backend",
    "GpuSample": "agent.gpu.backend",
    "GpuService": "agent.gpu.service",
    "Inventory": "agent.gpu.inventory",
    "KubeletPlugins": "agent.gpu.kubelet_plugins",
    "MigInfo": "agent.gpu.backend",
    "ProcessUtilization": "agent.gpu.backend",
    "env_from_list": "agent.gpu.service",
}
__all__ = [
    "STATE_OK",
    "Assignment",
    "ContainerEdits",
    "Device",
    "DeviceHealth",
    "GpmSample",
    "GpuBackend",
    "GpuEvent",
    "GpuEventStream",
    "GpuGrant",
    "GpuHealth",
    "GpuInfo",
    "GpuProcess",
    "GpuSample",
    "GpuService",
    "Inventory",
    "KubeletPlugins",
    "MigInfo",
    "ProcessUtilization",
    "env_from_list",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'agent.gpu' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_EXPORTS[name]), name)
