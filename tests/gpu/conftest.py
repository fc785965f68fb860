"""Real-NVML fixtures: skip with the reason when this machine has no usable NVIDIA GPU.

The driver may live under a driver root (``/usr/local/nvidia`` on the lent GPU
machines): ``MODEL_AGENT_GPU_DRIVER_ROOT`` names it, else ``/usr/local/nvidia``
is used when it holds the NVML library, else ``/``. ``tests/gpu/run.sh`` sets the
variables for the machine it runs on.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from agent.config import GpuSection
from agent.gpu.backend import GpuBackend
from agent.gpu.factory import open_backend
from tests.support.nvidia_host import driver_root


@pytest.fixture(scope="session")
def gpu_section() -> GpuSection:
    return GpuSection(backend="nvml", driver_root=driver_root(), write_node_spec=False)


@pytest.fixture(scope="session")
def nvml(gpu_section: GpuSection) -> Iterator[GpuBackend]:
    backend = open_backend(gpu_section)
    status = backend.status()
    if backend.name != "nvml" or not status.available:
        pytest.skip(f"no NVIDIA GPU through NVML here: {status.reason}")
    yield backend
    backend.close()
