"""The real NVIDIA driver on a GPU machine: where it lives, and its nvidia-smi.

``driver_root()``: ``MODEL_AGENT_GPU_DRIVER_ROOT`` if set, else
``/usr/local/nvidia`` when it holds the NVML library (the lent GPU machines),
else ``/``. ``nvidia_smi(*args)`` runs that driver's ``nvidia-smi`` with its
libraries on ``LD_LIBRARY_PATH``. Independent of ``agent/``.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess

import pytest

__all__ = ["driver_root", "nvidia_smi"]


def driver_root() -> str:
    configured = os.environ.get("MODEL_AGENT_GPU_DRIVER_ROOT")
    if configured:
        return configured
    if glob.glob("/usr/local/nvidia/lib*/libnvidia-ml.so*"):
        return "/usr/local/nvidia"
    return "/"


def nvidia_smi(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the host's nvidia-smi (from the driver root), with its libraries findable."""
    root = driver_root()
    path = os.path.join(root, "bin", "nvidia-smi")
    if not os.access(path, os.X_OK):
        path = shutil.which("nvidia-smi") or ""
    if not path:
        pytest.skip(f"no nvidia-smi under {root}/bin or in PATH")
    libs = [d for d in (os.path.join(root, "lib64"), os.path.join(root, "lib")) if os.path.isdir(d)]
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = ":".join([*libs, env.get("LD_LIBRARY_PATH", "")]).strip(":")
    return subprocess.run([path, *args], capture_output=True, text=True, timeout=60, env=env)
