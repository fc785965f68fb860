"""NVIDIA driver facts the kernel publishes under /proc: device majors and MIG capabilities.

The NVIDIA frontend major (195) is fixed by the driver; ``nvidia-uvm`` and
``nvidia-caps`` get dynamic majors listed in ``/proc/devices``. A MIG device is
entered through two capability device nodes, ``/dev/nvidia-caps/nvidia-cap<N>``,
whose minors the driver writes into
``/proc/driver/nvidia/capabilities/gpu<minor>/mig/gi<G>[/ci<C>]/access``.
Every path is under a configurable proc root so tests can supply their own.
Imports nothing from the agent.
"""

from __future__ import annotations

import os

__all__ = [
    "NVIDIA_MAJOR",
    "mig_cap_paths",
    "proc_devices",
    "read_cap_minor",
]

#: The NVIDIA frontend's character major: /dev/nvidia<N>, nvidiactl (255), nvidia-modeset (254).
NVIDIA_MAJOR = 195


def proc_devices(proc_root: str = "/proc") -> dict[str, int]:
    """Character device majors by driver name (``nvidia-uvm`` → 510, say)."""
    majors: dict[str, int] = {}
    try:
        with open(os.path.join(proc_root, "devices")) as f:
            lines = f.read().splitlines()
    except OSError:
        return majors
    in_char = False
    for line in lines:
        if line.startswith("Character devices"):
            in_char = True
            continue
        if line.startswith("Block devices"):
            in_char = False
            continue
        parts = line.split()
        if in_char and len(parts) == 2 and parts[0].isdigit():
            majors.setdefault(parts[1], int(parts[0]))
    return majors


def mig_cap_paths(proc_root: str, parent_minor: int, gi: int, ci: int) -> tuple[str, str]:
    """The ``access`` files of a MIG device's GPU-instance and compute-instance capabilities."""
    base = os.path.join(
        proc_root, "driver", "nvidia", "capabilities", f"gpu{parent_minor}", "mig", f"gi{gi}"
    )
    return os.path.join(base, "access"), os.path.join(base, f"ci{ci}", "access")


def read_cap_minor(path: str) -> int | None:
    """The ``DeviceFileMinor`` of a capability ``access`` file, None when unreadable."""
    try:
        with open(path) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "DeviceFileMinor":
                    return int(value.strip())
    except (OSError, ValueError):
        return None
    return None
