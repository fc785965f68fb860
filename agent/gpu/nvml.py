"""The NVML backend: ``GpuBackend`` on the NVIDIA driver, through ``pynvml``.

This is the only module that imports ``pynvml`` (package ``nvidia-ml-py``);
``nvml_read`` and ``nvml_events`` work on the module object it hands them. It
owns NVML's lifecycle and the little state NVML needs between calls (GPM
sample buffers, the MIG instance map):

* no ``pynvml``, no ``libnvidia-ml.so.1``, no driver loaded, or zero GPUs is a
  status with a reason (``open`` never raises for them);
* every GPU is read on its own and every field in its own guard, so one GPU or
  field that fails — or a GPU that fell off the bus (state ``lost``) — never
  hides the others;
* the driver library may live under a driver root (``/usr/local/nvidia/lib64``):
  it is loaded by path before NVML initialises.

All calls block; callers run them in a thread. NVML is thread-safe; the GPM
buffers are guarded by a lock. Tests pass a fake module as ``nvml_module``.
"""

from __future__ import annotations

import ctypes
import dataclasses
import importlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from agent.gpu.backend import (
    BackendStatus,
    DriverInfo,
    GpmSample,
    GpuEventStream,
    GpuInfo,
    GpuProcess,
    GpuSample,
    ProcessUtilization,
)
from agent.gpu.nvml_events import NvmlEvents
from agent.gpu.nvml_read import (
    DRIVER_NOT_LOADED,
    GPM_METRICS,
    LIBRARY_NOT_FOUND,
    MIB,
    Lost,
    count_gpus,
    nvml_error_code,
    read_driver,
    read_gpu,
    read_process_utilization,
    read_processes,
    read_samples,
    text,
)

__all__ = ["NvmlBackend"]

log = logging.getLogger(__name__)


class NvmlBackend:
    """``GpuBackend`` over NVML (see the module docstring)."""

    def __init__(
        self,
        *,
        library_path: str | None = None,
        proc_root: str = "/proc",
        nvml_module: Any = None,
    ) -> None:
        self._library_path = library_path
        self._proc_root = proc_root
        self._module = nvml_module
        self._nvml: Any = None
        self._lock = threading.Lock()
        self._status = BackendStatus("nvml", False, "not opened")
        self._driver = DriverInfo()
        self._gpm_prev: dict[str, Any] = {}
        self._gpm_time: dict[str, float] = {}
        self._mig_by_instance: dict[tuple[str, int | None, int | None], str] = {}
        self._mig_labels: dict[str, tuple[str, str, int]] = {}  # MIG uuid -> (GPU, "i:j", gi)

    @property
    def name(self) -> str:
        return "nvml"

    # -- lifecycle ------------------------------------------------------

    def open(self) -> BackendStatus:
        with self._lock:
            if self._nvml is not None:
                return self._status
            try:
                module = self._module or importlib.import_module("pynvml")
            except ImportError as exc:
                self._status = BackendStatus("nvml", False, f"nvidia-ml-py is not installed: {exc}")
                return self._status
            self._preload(module)
            try:
                module.nvmlInit()
            except Exception as exc:
                code = nvml_error_code(exc)
                if code is None and not isinstance(exc, OSError):
                    raise
                self._status = BackendStatus("nvml", False, self._init_reason(code, exc))
                return self._status
            self._nvml = module
            self._driver = read_driver(module)
            count = count_gpus(module)
            reason = (
                f"NVML {self._driver.nvml_version or '?'}, driver {self._driver.driver_version}, "
                f"CUDA {self._driver.cuda_driver_version}"
            )
            self._status = BackendStatus(
                "nvml", count > 0, reason if count else "NVML works but reports no GPU", count
            )
            return self._status

    def _preload(self, module: Any) -> None:
        """Load libnvidia-ml by path when it lives outside the linker's search path."""
        path = self._library_path
        if not path or getattr(module, "nvmlLib", None) is not None:
            return
        try:
            lib = ctypes.CDLL(path)
        except OSError as exc:
            log.warning("cannot load %s: %s; NVML will use the default search path", path, exc)
            return
        lock = getattr(module, "libLoadLock", None)
        if lock is not None:
            with lock:
                if module.nvmlLib is None:
                    module.nvmlLib = lib
        else:
            module.nvmlLib = lib

    def _init_reason(self, code: int | None, exc: BaseException) -> str:
        if code == LIBRARY_NOT_FOUND or isinstance(exc, OSError):
            where = f" (looked for {self._library_path})" if self._library_path else ""
            return f"no NVML library: libnvidia-ml.so.1 not found{where}"
        if code == DRIVER_NOT_LOADED:
            return "the NVIDIA kernel driver is not loaded"
        return f"NVML failed to initialise: {exc}"

    def close(self) -> None:
        with self._lock:
            if self._nvml is None:
                return
            for sample in self._gpm_prev.values():
                self._quiet(self._nvml.nvmlGpmSampleFree, sample)
            self._gpm_prev.clear()
            self._quiet(self._nvml.nvmlShutdown)
            self._nvml = None
            self._status = BackendStatus("nvml", False, "closed")

    @staticmethod
    def _quiet(fn: Callable[..., Any], *args: Any) -> None:
        try:
            fn(*args)
        except Exception as exc:
            if nvml_error_code(exc) is None:
                raise

    def status(self) -> BackendStatus:
        return self._status

    def driver(self) -> DriverInfo:
        return self._driver

    def _count(self) -> int:
        return 0 if self._nvml is None else count_gpus(self._nvml)

    # -- reading --------------------------------------------------------

    def gpus(self) -> list[GpuInfo]:
        nvml = self._nvml
        if nvml is None:
            return []
        out = [read_gpu(nvml, index, self._proc_root) for index in range(self._count())]
        by_bus = {g.pci_bus_id.lower(): g.uuid for g in out if g.pci_bus_id}
        out = [
            dataclasses.replace(
                g, nvlink_peers=tuple(by_bus[b] for b in g.nvlink_peers if b in by_bus)
            )
            for g in out
        ]
        self._mig_by_instance = {
            (g.uuid, m.gpu_instance_id, m.compute_instance_id): m.uuid
            for g in out
            for m in g.mig_devices
        }
        self._mig_labels = {
            m.uuid: (g.uuid, f"{g.index}:{m.index}", m.gpu_instance_id)
            for g in out
            for m in g.mig_devices
        }
        return out

    def samples(self) -> list[GpuSample]:
        nvml = self._nvml
        if nvml is None:
            return []
        return [s for index in range(self._count()) for s in read_samples(nvml, index)]

    def processes(self) -> list[GpuProcess]:
        nvml = self._nvml
        if nvml is None:
            return []
        if not self._mig_by_instance:
            self.gpus()  # so processes on MIG devices name their MIG UUID
        return [
            p
            for index in range(self._count())
            for p in read_processes(nvml, index, self._mig_by_instance)
        ]

    def process_utilization(self, since_us: int) -> list[ProcessUtilization]:
        nvml = self._nvml
        if nvml is None:
            return []
        return [
            s
            for index in range(self._count())
            for s in read_process_utilization(nvml, index, since_us)
        ]

    # -- GPM ------------------------------------------------------------

    def gpm_samples(self) -> list[GpmSample]:
        if self._nvml is None:
            return []
        out: list[GpmSample] = []
        with self._lock:
            for index in range(self._count()):
                try:
                    out.extend(self._gpm_device(index))
                except Lost:
                    continue
                except Exception as exc:
                    if nvml_error_code(exc) is None:
                        raise
                    log.debug("NVML GPM of GPU %d: %s", index, exc)
        return out

    def _gpm_device(self, index: int) -> list[GpmSample]:
        nvml = self._nvml
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        support = nvml.nvmlGpmQueryDeviceSupport(handle)
        if not getattr(support, "isSupportedDevice", 0):
            return []
        uuid = text(nvml.nvmlDeviceGetUUID(handle))
        # A GPU samples as a whole; in MIG mode GPM samples per GPU instance, and every
        # MIG device (compute instance) of that instance reports the instance's values.
        targets: dict[int | None, list[tuple[str, str]]] = {None: [(uuid, str(index))]}
        try:
            migged = int(nvml.nvmlDeviceGetMigMode(handle)[0]) == 1
        except Exception as exc:
            if nvml_error_code(exc) is None:
                raise
            migged = False
        if migged:
            targets = {}
            for mig_uuid, (gpu, label, instance) in self._mig_labels.items():
                if gpu == uuid:
                    targets.setdefault(instance, []).append((mig_uuid, label))
        out: list[GpmSample] = []
        for gi, devices in targets.items():
            key = f"{uuid}/gi{gi}"
            sample = nvml.nvmlGpmSampleAlloc()
            try:
                if gi is None:
                    nvml.nvmlGpmSampleGet(handle, sample)
                else:
                    nvml.nvmlGpmMigSampleGet(handle, gi, sample)
            except Exception:
                self._quiet(nvml.nvmlGpmSampleFree, sample)
                raise
            now = time.monotonic()
            previous = self._gpm_prev.get(key)
            self._gpm_prev[key] = sample
            last = self._gpm_time.get(key, now)
            self._gpm_time[key] = now
            if previous is None:
                continue
            try:
                metrics = self._gpm_metrics(previous, sample)
            finally:
                self._quiet(nvml.nvmlGpmSampleFree, previous)
            out.extend(
                GpmSample(device, label, now - last, dict(metrics), gi) for device, label in devices
            )
        return out

    def _gpm_metrics(self, first: Any, second: Any) -> dict[str, float]:
        nvml = self._nvml
        request = nvml.c_nvmlGpmMetricsGet_t()
        request.version = getattr(nvml, "NVML_GPM_METRICS_GET_VERSION", 1)
        request.numMetrics = len(GPM_METRICS)
        request.sample1 = first
        request.sample2 = second
        for i, metric_id in enumerate(GPM_METRICS):
            request.metrics[i].metricId = metric_id
        nvml.nvmlGpmMetricsGet(request)
        metrics = {}
        for i, metric_id in enumerate(GPM_METRICS):
            result = request.metrics[i]
            if int(result.nvmlReturn) != 0:
                continue
            name = GPM_METRICS[metric_id]
            value = float(result.value)
            metrics[name] = value * MIB if name.endswith("_bytes_per_second") else value
        return metrics

    # -- events ---------------------------------------------------------

    def open_events(self) -> GpuEventStream:
        if self._nvml is not None and not self._mig_by_instance:
            self.gpus()  # so events on MIG devices name their MIG UUID
        return NvmlEvents(self._nvml, self._count(), lambda: self._mig_by_instance)
