"""The thread that feeds ``GpuHealth``: driver events as they come, NVML readings on a tick.

One daemon thread subscribes to the backend's XID / ECC / GPU-lost events
(``GpuBackend.open_events``) and, every ``check_interval_seconds``, reads the GPUs
(``GpuBackend.gpus``) so health can see who answers, resets and recoveries. NVML calls
block, so none of this runs on the event loop; any failure is logged and the loop goes
on (a GPU problem must never stop the agent). Imports only ``gpu`` modules.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from agent.gpu.backend import GpuBackend, GpuEvent, GpuEventStream
from agent.gpu.health import GpuHealth

__all__ = ["HealthMonitor"]

log = logging.getLogger(__name__)


class HealthMonitor:
    def __init__(
        self, backend: Callable[[], GpuBackend], health: GpuHealth, *, interval: float
    ) -> None:
        self._backend = backend
        self._health = health
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._stream: GpuEventStream | None = None
        #: Also handed every batch of driver events (the metrics count XIDs from them).
        self.observers: list[Callable[[list[GpuEvent]], None]] = []

    def start(self) -> None:
        """Observe once now (so health knows every GPU), then keep watching in a thread."""
        backend = self._backend()
        self._observe(backend)
        try:
            self._stream = backend.open_events()
        except Exception:
            log.exception("GPU health: cannot subscribe to driver events; polling NVML only")
        self._thread = threading.Thread(target=self._run, name="gpu-health", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._stream is not None:
            self._stream.close()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _run(self) -> None:
        next_check = time.monotonic() + self._interval
        while not self._stop.is_set():
            wait = max(0.0, next_check - time.monotonic())
            events = self._wait(wait)
            for event in events:
                self._record(event)
            if events:
                self._tell(events)
            if time.monotonic() >= next_check:
                self._observe(self._backend())
                next_check = time.monotonic() + self._interval

    def _wait(self, timeout: float) -> list[GpuEvent]:
        if self._stream is None:
            self._stop.wait(timeout)
            return []
        try:
            return self._stream.wait(timeout)
        except Exception as exc:
            log.exception("GPU health: waiting for driver events failed")
            self._stop.wait(min(timeout, 1.0))
            return [GpuEvent("error", message=f"waiting for GPU events failed: {exc}")]

    def _record(self, event: GpuEvent) -> None:
        try:
            self._health.record(event)
        except Exception:
            log.exception("GPU health: recording %s failed", event)

    def _tell(self, events: list[GpuEvent]) -> None:
        for observer in list(self.observers):
            try:
                observer(events)
            except Exception:
                log.exception("GPU health: an event observer failed")

    def _observe(self, backend: GpuBackend) -> None:
        try:
            if backend.status().available:
                # the samples too: a counter a reset clears shows a reset NVML answered through
                self._health.observe(backend.gpus(), backend.samples())
        except Exception:
            log.exception("GPU health: reading the GPUs failed")
