"""Choose and open the GPU backend the config asks for.

``nvml`` (the default) opens NVML; no library, no driver or no GPU falls back
to ``NoGpuBackend`` with one log line saying why, so a CPU node runs normally.
``simulated`` is only ever used when configured, logs loudly, and a bad file
stops the agent (``ConfigError``). ``none`` disables GPUs. The NVML library is
looked for under the configured driver root first.
"""

from __future__ import annotations

import logging

from agent.config import GpuSection
from agent.gpu.backend import GpuBackend, NoGpuBackend
from agent.gpu.cdi.driver import DriverLayout, find_library

__all__ = ["driver_layout", "open_backend"]

log = logging.getLogger(__name__)


def driver_layout(section: GpuSection) -> DriverLayout:
    return DriverLayout(
        driver_root=section.driver_root,
        container_driver_root=section.container_driver_root,
        ld_cache=section.ld_cache,
        library_dirs=tuple(section.library_dirs),
    )


def open_backend(section: GpuSection) -> GpuBackend:
    """The opened backend (blocking: NVML initialisation can take a second)."""
    if section.backend == "none":
        log.info("GPUs disabled (gpu.backend = none)")
        return NoGpuBackend()
    if section.backend == "simulated":
        from agent.gpu.simulated import SimulatedBackend

        simulated = SimulatedBackend(section.simulated_file)
        simulated.open()  # raises ConfigError for a bad file
        return simulated
    from agent.gpu.nvml import NvmlBackend

    library = find_library(driver_layout(section), "libnvidia-ml")
    backend = NvmlBackend(library_path=library, proc_root=section.proc_root)
    status = backend.open()
    if status.available:
        log.info("GPUs: %d found through NVML (%s)", status.gpu_count, status.reason)
        return backend
    backend.close()
    log.info("GPUs: none (%s)", status.reason)
    return NoGpuBackend(f"nvml: {status.reason}")
