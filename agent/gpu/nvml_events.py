"""NVML driver events (XID, ECC, GPU lost) for the health monitor, waited on in a thread.

One NVML event set covers every GPU. ``wait`` blocks in slices of at most half a
second so ``close`` from another thread takes effect promptly; the set is freed
by whichever of the two runs last, never while a wait is inside NVML. Takes the
NVML module object from ``gpu.nvml`` (the only ``pynvml`` import).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from agent.gpu.backend import GpuEvent
from agent.gpu.nvml_read import (
    EVENT_DBE,
    EVENT_SBE,
    EVENT_XID,
    GPU_IS_LOST,
    NO_INSTANCE,
    TIMEOUT,
    nvml_error_code,
    text,
)

__all__ = ["NvmlEvents"]

log = logging.getLogger(__name__)

#: At most this many queued events are returned by one wait.
_DRAIN_MAX = 64


class NvmlEvents:
    """An NVML event set over every GPU; waited on by one thread in short slices."""

    _SLICE_MS = 500

    def __init__(
        self,
        nvml: Any,
        gpu_count: int,
        mig_lookup: Callable[[], Mapping[tuple[str, int | None, int | None], str]],
    ) -> None:
        self._nvml = nvml
        self._mig_lookup = mig_lookup
        self._lock = threading.Lock()
        self._closed = False
        self._stop = threading.Event()
        self._waiting = False
        self._set: Any = None
        self.problems: list[str] = []
        if self._nvml is None:
            return
        try:
            self._set = self._nvml.nvmlEventSetCreate()
        except Exception as exc:
            if nvml_error_code(exc) is None:
                raise
            self.problems.append(f"event set: {exc}")
            return
        for index in range(gpu_count):
            try:
                handle = self._nvml.nvmlDeviceGetHandleByIndex(index)
                mask = EVENT_XID | EVENT_SBE | EVENT_DBE
                try:
                    mask &= int(self._nvml.nvmlDeviceGetSupportedEventTypes(handle))
                except Exception as exc:
                    if nvml_error_code(exc) is None:
                        raise
                if mask:
                    self._nvml.nvmlDeviceRegisterEvents(handle, mask, self._set)
            except Exception as exc:
                if nvml_error_code(exc) is None:
                    raise
                self.problems.append(f"GPU {index}: cannot register for events: {exc}")
        for problem in self.problems:
            log.warning("NVML events: %s", problem)

    def wait(self, timeout: float) -> list[GpuEvent]:
        deadline = time.monotonic() + max(0.0, timeout)
        with self._lock:
            usable = not self._closed and self._set is not None
            self._waiting = usable
        if not usable:
            self._stop.wait(timeout)  # nothing to wait on: do not let the caller spin
            return []
        try:
            while True:
                left_ms = int((deadline - time.monotonic()) * 1000)
                event = self._wait_one(max(0, min(left_ms, self._SLICE_MS)))
                if event is not None:
                    events = [event]
                    # Drain what is queued, but never loop on a failing wait.
                    while event.kind not in ("error", "gpu_lost") and len(events) < _DRAIN_MAX:
                        event = self._wait_one(0)
                        if event is None:
                            break
                        events.append(event)
                    return events
                if self._closed or left_ms <= self._SLICE_MS:
                    return []
        finally:
            with self._lock:
                self._waiting = False
                if self._closed:
                    self._free()

    def _wait_one(self, timeout_ms: int) -> GpuEvent | None:
        try:
            data = self._nvml.nvmlEventSetWait_v2(self._set, timeout_ms)
        except Exception as exc:
            code = nvml_error_code(exc)
            if code is None:
                raise
            if code == TIMEOUT:
                return None
            kind = "gpu_lost" if code == GPU_IS_LOST else "error"
            return GpuEvent(kind, timestamp=time.time(), message=f"event wait failed: {exc}")
        uuid = ""
        try:
            uuid = text(self._nvml.nvmlDeviceGetUUID(data.device))
        except Exception as exc:
            if nvml_error_code(exc) is None:
                raise
        gi = int(data.gpuInstanceId)
        ci = int(data.computeInstanceId)
        gi_id = None if gi == NO_INSTANCE else gi
        ci_id = None if ci == NO_INSTANCE else ci
        mig_uuid = self._mig_lookup().get((uuid, gi_id, ci_id), "")
        etype = int(data.eventType)
        if etype & EVENT_XID:
            kind, xid = "xid", int(data.eventData)
        elif etype & EVENT_DBE:
            kind, xid = "ecc_double", 0
        elif etype & EVENT_SBE:
            kind, xid = "ecc_single", 0
        else:
            kind, xid = "error", 0
        return GpuEvent(
            kind, uuid, xid, mig_uuid, gi_id, ci_id, time.time(), f"event type {etype:#x}"
        )

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._stop.set()
            if not self._waiting:
                self._free()

    def _free(self) -> None:
        if self._set is not None:
            try:
                self._nvml.nvmlEventSetFree(self._set)
            except Exception as exc:
                if nvml_error_code(exc) is None:
                    raise
            self._set = None
