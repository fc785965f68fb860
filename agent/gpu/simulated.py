"""The simulated GPU backend: ``GpuBackend`` answered from a TOML or JSON file.

This is the one simulated outside part of the agent (see the README, "GPUs").
It is selected only by ``[gpu] backend = "simulated"`` and says so loudly in the
log and in ``Status``. The file describes the driver, N GPUs with every
inventory field and their MIG devices, sample series, running processes and
events to inject; the README documents the format.

The file is re-read whenever it changes (stat on each call: inode, size, mtime),
so a test can rewrite it atomically to move processes or inject an XID while
the agent runs; a file that no longer parses keeps the previous state and logs
why. In-process callers may also use ``set_processes`` and ``inject_event``.

Series: a sample field is a number or a list of numbers; the n-th call of
``samples()`` (or, with ``advance_seconds``, the n-th interval since the
backend opened) reads element ``n mod len``. Energy integrates power over time.
The file format lives in ``simulated_file``. Imports only ``gpu`` modules and ``errors``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from agent.errors import ConfigError
from agent.gpu.backend import (
    STATE_LOST,
    STATE_OK,
    BackendStatus,
    DriverInfo,
    GpmSample,
    GpuEvent,
    GpuEventStream,
    GpuInfo,
    GpuProcess,
    GpuSample,
    ProcessUtilization,
)
from agent.gpu.simulated_file import (
    MIB,
    SimGpu,
    SimMig,
    SimProcess,
    Simulation,
    Table,
    load_simulation,
    parse_process,
    pick,
)

__all__ = ["SimulatedBackend"]

log = logging.getLogger(__name__)


def _opt_int(value: float | None) -> int | None:
    return None if value is None else int(value)


#: GpuSample fields that carry a reading (the rest identify the device).
_READINGS = tuple(
    name
    for name in GpuSample.__dataclass_fields__
    if name
    not in (
        "uuid",
        "index",
        "parent_uuid",
        "gpu_instance_id",
        "profile",
        "timestamp",
        "state",
        "unsupported",
        "errors",
    )
)


def _absent(sample: GpuSample) -> tuple[str, ...]:
    """The readings the simulation gives no value for: what NVML would call unsupported."""
    return tuple(name for name in _READINGS if getattr(sample, name) is None)


class SimEvents:
    def __init__(self, backend: SimulatedBackend) -> None:
        self._backend = backend
        self._closed = threading.Event()

    def wait(self, timeout: float) -> list[GpuEvent]:
        deadline = time.monotonic() + max(0.0, timeout)
        while not self._closed.is_set():
            events = self._backend._due_events()
            if events:
                return events
            left = deadline - time.monotonic()
            if left <= 0:
                return []
            self._closed.wait(min(left, 0.05))
        return []

    def close(self) -> None:
        self._closed.set()


class SimulatedBackend:
    """``GpuBackend`` over a simulation file (see the module docstring)."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._lock = threading.RLock()
        self._sim: Simulation | None = None
        self._stamp: tuple[int, int, int] | None = None
        self._opened_at = 0.0
        self._steps: Counter[str] = Counter()
        self._energy: dict[str, tuple[float, float]] = {}  # uuid -> (joules, last time)
        self._override_processes: tuple[SimProcess, ...] | None = None
        self._delivered: Counter[tuple[Any, ...]] = Counter()
        self._injected: list[GpuEvent] = []
        self._lost: set[str] = set()
        self._gpm_primed = False
        self._gpm_last = 0.0

    @property
    def name(self) -> str:
        return "simulated"

    @property
    def path(self) -> str:
        return self._path

    def open(self) -> BackendStatus:
        """Load the file; a bad file raises ``ConfigError`` (it was chosen explicitly)."""
        with self._lock:
            if self._sim is None:
                self._sim = load_simulation(self._path)
                self._stamp = self._file_stamp()
                self._opened_at = time.monotonic()
                self._lost = {g.info.uuid for g in self._sim.gpus if g.info.state == STATE_LOST}
                log.warning(
                    "GPU backend is SIMULATED from %s (%d GPUs): for tests and demos only, "
                    "no real GPU is used",
                    self._path,
                    len(self._sim.gpus),
                )
            return self.status()

    def close(self) -> None:
        pass

    def _file_stamp(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self._path)
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def _current(self) -> Simulation:
        """The simulation, re-read first when the file changed on disk."""
        with self._lock:
            if self._sim is None:
                self.open()
            assert self._sim is not None
            stamp = self._file_stamp()
            if stamp is not None and stamp != self._stamp:
                self._stamp = stamp
                try:
                    new = load_simulation(self._path)
                except ConfigError as exc:
                    log.error("simulated GPUs: keeping the previous state: %s", exc)
                else:
                    self._note_lost(new)
                    self._sim = new
                    log.info("simulated GPUs: re-read %s", self._path)
            return self._sim

    def _note_lost(self, new: Simulation) -> None:
        """A GPU that turned ``lost`` in the new file raises a ``gpu_lost`` event once."""
        now_lost = {g.info.uuid for g in new.gpus if g.info.state == STATE_LOST}
        for uuid in sorted(now_lost - self._lost):
            self._injected.append(
                GpuEvent("gpu_lost", uuid, timestamp=time.time(), message="GPU fell off the bus")
            )
        self._lost = now_lost

    def status(self) -> BackendStatus:
        with self._lock:
            sim = self._sim
            if sim is None:
                return BackendStatus("simulated", False, f"not opened ({self._path})")
            return BackendStatus(
                "simulated", True, f"SIMULATED GPUs from {self._path}", len(sim.gpus)
            )

    def driver(self) -> DriverInfo:
        return self._current().driver

    def gpus(self) -> list[GpuInfo]:
        return [g.info for g in self._current().gpus]

    def _step(self, what: str) -> int:
        sim = self._current()
        if sim.advance_seconds > 0:
            return int((time.monotonic() - self._opened_at) / sim.advance_seconds)
        step = self._steps[what]
        self._steps[what] += 1
        return step

    def samples(self) -> list[GpuSample]:
        with self._lock:
            sim = self._current()
            step = self._step("samples")
            now = time.time()
            out = []
            for gpu in sim.gpus:
                out.append(self._gpu_sample(gpu, step, now))
                if gpu.info.state != STATE_OK:
                    continue
                out.extend(self._mig_sample(gpu, mig, step, now) for mig in gpu.migs)
            return out

    def _gpu_sample(self, gpu: SimGpu, step: int, now: float) -> GpuSample:
        info = gpu.info
        if info.state != STATE_OK:
            return GpuSample(
                info.uuid,
                str(info.index),
                timestamp=now,
                state=info.state,
                errors={"device": info.error or f"GPU is {info.state}"},
            )
        s = gpu.series
        used_mib = pick(s.get("memory_used_mib"), step) or 0.0
        reserved_mib = pick(s.get("memory_reserved_mib"), step) or 0.0
        used = int(used_mib * MIB)
        reserved = int(reserved_mib * MIB)
        power = pick(s.get("power_watts"), step)
        joules, last = self._energy.get(info.uuid, (gpu.energy_joules, now))
        if power is not None:
            joules += power * max(0.0, now - last)
        self._energy[info.uuid] = (joules, now)
        migged = info.mig_mode == "enabled"

        def value(key: str) -> float | None:
            return None if migged and key.endswith("_util") else pick(s.get(key), step)

        sample = GpuSample(
            uuid=info.uuid,
            index=str(info.index),
            timestamp=now,
            gpu_util=value("gpu_util"),
            mem_copy_util=value("mem_copy_util"),
            enc_util=value("enc_util"),
            dec_util=value("dec_util"),
            memory_total=info.memory_total,
            memory_used=used,
            memory_reserved=reserved,
            memory_free=max(0, info.memory_total - used - reserved),
            power_watts=power,
            energy_joules=joules if power is not None else None,
            gpu_temp_c=value("gpu_temp_c"),
            memory_temp_c=value("memory_temp_c"),
            sm_clock_mhz=value("sm_clock_mhz"),
            mem_clock_mhz=value("mem_clock_mhz"),
            pcie_replay_count=_opt_int(value("pcie_replay_count")),
            remapped_rows_correctable=_opt_int(value("remapped_rows_correctable")),
            remapped_rows_uncorrectable=_opt_int(value("remapped_rows_uncorrectable")),
            ecc_corrected_volatile=_opt_int(value("ecc_corrected_volatile")),
            ecc_uncorrected_volatile=_opt_int(value("ecc_uncorrected_volatile")),
            ecc_corrected_aggregate=_opt_int(value("ecc_corrected_aggregate")),
            ecc_uncorrected_aggregate=_opt_int(value("ecc_uncorrected_aggregate")),
        )
        return replace(sample, unsupported=_absent(sample))

    def _mig_sample(self, gpu: SimGpu, mig: SimMig, step: int, now: float) -> GpuSample:
        used = int((pick(mig.series.get("memory_used_mib"), step) or 0.0) * MIB)
        reserved = int((pick(mig.series.get("memory_reserved_mib"), step) or 0.0) * MIB)
        info = mig.info
        return GpuSample(
            uuid=info.uuid,
            index=f"{gpu.info.index}:{info.index}",
            parent_uuid=gpu.info.uuid,
            gpu_instance_id=info.gpu_instance_id,
            profile=info.profile,
            timestamp=now,
            memory_total=info.memory_total,
            memory_used=used,
            memory_reserved=reserved,
            memory_free=max(0, info.memory_total - used - reserved),
            unsupported=("gpu_util", "mem_copy_util", "enc_util", "dec_util", "power_watts"),
        )

    # -- processes ------------------------------------------------------

    def set_processes(self, processes: list[Mapping[str, Any]] | None) -> None:
        """Replace the file's process table (same keys as ``[[processes]]``); None restores it."""
        with self._lock:
            if processes is None:
                self._override_processes = None
                return
            sim = self._current()
            self._override_processes = tuple(
                parse_process(Table(dict(p), f"processes[{i}]"), sim.gpus)
                for i, p in enumerate(processes)
            )

    def _process_table(self) -> tuple[SimProcess, ...]:
        sim = self._current()
        table = self._override_processes if self._override_processes is not None else sim.processes
        live = {g.info.uuid for g in sim.gpus if g.info.state == STATE_OK}
        return tuple(p for p in table if p.gpu_uuid in live)

    def processes(self) -> list[GpuProcess]:
        with self._lock:
            procs = self._process_table()
            step = self._step("processes")
            out = []
            for p in procs:
                used = pick(p.series.get("used_memory_mib"), step)
                out.append(
                    GpuProcess(
                        gpu_uuid=p.gpu_uuid,
                        pid=p.pid,
                        used_memory=None if used is None else int(used * MIB),
                        mig_uuid=p.mig_uuid,
                        gpu_instance_id=p.gpu_instance_id,
                        compute_instance_id=p.compute_instance_id,
                        kind=p.kind,
                    )
                )
            return out

    def process_utilization(self, since_us: int) -> list[ProcessUtilization]:
        with self._lock:
            procs = self._process_table()
            step = self._step("process_utilization")
            now_us = int(time.time() * 1_000_000)
            if now_us <= since_us:
                return []
            out = []
            for p in procs:
                if p.mig_uuid:  # NVML has no per-process utilisation on MIG devices
                    continue
                out.append(
                    ProcessUtilization(
                        gpu_uuid=p.gpu_uuid,
                        pid=p.pid,
                        timestamp_us=now_us,
                        sm_util=pick(p.series.get("sm_util"), step) or 0.0,
                        mem_util=pick(p.series.get("mem_util"), step) or 0.0,
                        enc_util=pick(p.series.get("enc_util"), step) or 0.0,
                        dec_util=pick(p.series.get("dec_util"), step) or 0.0,
                    )
                )
            return out

    def gpm_samples(self) -> list[GpmSample]:
        with self._lock:
            sim = self._current()
            if not self._gpm_primed:
                self._gpm_primed = True
                self._gpm_last = time.monotonic()
                return []
            now = time.monotonic()
            interval, self._gpm_last = now - self._gpm_last, now
            step = self._step("gpm")
            out = []
            for gpu in sim.gpus:
                if not gpu.info.gpm_supported or gpu.info.state != STATE_OK:
                    continue
                metrics = {k: v for k, s in gpu.gpm.items() if (v := pick(s, step)) is not None}
                out.append(GpmSample(gpu.info.uuid, str(gpu.info.index), interval, metrics))
            return out

    # -- events ---------------------------------------------------------

    def inject_event(self, event: GpuEvent) -> None:
        """Deliver ``event`` to the open event streams' next ``wait``."""
        with self._lock:
            self._injected.append(replace(event, timestamp=event.timestamp or time.time()))

    def open_events(self) -> GpuEventStream:
        self._current()
        return SimEvents(self)

    def _due_events(self) -> list[GpuEvent]:
        """Events of the file whose time has come and were not delivered yet, then injected ones."""
        with self._lock:
            sim = self._current()
            elapsed = time.monotonic() - self._opened_at
            wanted: Counter[tuple[Any, ...]] = Counter()
            out = []
            for item in sim.events:
                wanted[item.key] += 1
                if item.at_seconds <= elapsed and self._delivered[item.key] < wanted[item.key]:
                    self._delivered[item.key] += 1
                    out.append(replace(item.event, timestamp=time.time()))
            out.extend(self._injected)
            self._injected.clear()
            return out
