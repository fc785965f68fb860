"""The simulated GPU file: its format, parsed and checked into plain values.

``load_simulation`` reads TOML (or JSON when the name ends in ``.json``) and
returns a ``Simulation``; any bad key, type or reference raises ``ConfigError``
naming it by its path (``simulation.gpus[1].mig[0].uuid``). The README's "GPUs"
section documents the format. Imports only ``gpu.backend`` and ``errors``.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from agent.errors import ConfigError
from agent.gpu.backend import STATE_OK, DriverInfo, GpuEvent, GpuInfo, MigInfo

__all__ = [
    "GPU_SERIES",
    "MIB",
    "Series",
    "SimEvent",
    "SimGpu",
    "SimMig",
    "SimProcess",
    "Simulation",
    "Table",
    "load_simulation",
    "parse_process",
    "parse_simulation",
    "pick",
]

MIB = 1024 * 1024

GPU_SERIES = (
    "gpu_util",
    "mem_copy_util",
    "enc_util",
    "dec_util",
    "memory_used_mib",
    "memory_reserved_mib",
    "power_watts",
    "gpu_temp_c",
    "memory_temp_c",
    "sm_clock_mhz",
    "mem_clock_mhz",
    "pcie_replay_count",
    "remapped_rows_correctable",
    "remapped_rows_uncorrectable",
    "ecc_corrected_volatile",
    "ecc_uncorrected_volatile",
    "ecc_corrected_aggregate",
    "ecc_uncorrected_aggregate",
)
_MIG_SERIES = ("memory_used_mib", "memory_reserved_mib")
_GPM_KEYS = (
    "graphics_engine_active",
    "sm_active",
    "sm_occupancy",
    "tensor_active",
    "dram_active",
    "pcie_tx_bytes_per_second",
    "pcie_rx_bytes_per_second",
    "nvlink_tx_bytes_per_second",
    "nvlink_rx_bytes_per_second",
)
_PROCESS_SERIES = ("used_memory_mib", "sm_util", "mem_util", "enc_util", "dec_util")
_EVENT_KINDS = ("xid", "ecc_single", "ecc_double", "gpu_lost", "error")

Series = tuple[float, ...]


@dataclass(frozen=True, slots=True)
class SimMig:
    info: MigInfo
    series: dict[str, Series]


@dataclass(frozen=True, slots=True)
class SimGpu:
    info: GpuInfo
    series: dict[str, Series]
    gpm: dict[str, Series]
    migs: tuple[SimMig, ...]
    energy_joules: float = 0.0


@dataclass(frozen=True, slots=True)
class SimProcess:
    gpu_uuid: str
    pid: int
    mig_uuid: str
    gpu_instance_id: int | None
    compute_instance_id: int | None
    kind: str
    series: dict[str, Series]


@dataclass(frozen=True, slots=True)
class SimEvent:
    key: tuple[Any, ...]
    event: GpuEvent
    at_seconds: float


@dataclass(frozen=True, slots=True)
class Simulation:
    """A parsed simulation file."""

    driver: DriverInfo
    gpus: tuple[SimGpu, ...]
    processes: tuple[SimProcess, ...]
    events: tuple[SimEvent, ...]
    advance_seconds: float = 0.0
    source: str = ""


# ---------------------------------------------------------------------------
# Parsing


class Table:
    """A table of the file that reports unknown keys and wrong types by their path."""

    def __init__(self, data: Any, where: str) -> None:
        if not isinstance(data, dict):
            raise ValueError(f"{where}: expected a table")
        self.data = data
        self.where = where
        self.used: set[str] = set()

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
        self.used.add(key)
        if key not in self.data:
            return default
        value = self.data[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, bool) and kind in (int, float):
            raise ValueError(f"{self.where}.{key}: expected a number, got a boolean")
        if not isinstance(value, kind):
            raise ValueError(f"{self.where}.{key}: expected {_kind_name(kind)}, got {value!r}")
        return value

    def require(self, key: str, kind: type | tuple[type, ...]) -> Any:
        if key not in self.data:
            raise ValueError(f"{self.where}: '{key}' is required")
        return self.get(key, kind)

    def series(self, key: str) -> Series | None:
        self.used.add(key)
        if key not in self.data:
            return None
        value = self.data[key]
        values = value if isinstance(value, list) else [value]
        if not values or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in values
        ):
            raise ValueError(
                f"{self.where}.{key}: expected a number or a non-empty list of numbers"
            )
        return tuple(float(v) for v in values)

    def table(self, key: str) -> Table:
        self.used.add(key)
        return Table(self.data.get(key, {}), f"{self.where}.{key}")

    def tables(self, key: str) -> list[Table]:
        self.used.add(key)
        items = self.data.get(key, [])
        if not isinstance(items, list):
            raise ValueError(f"{self.where}.{key}: expected an array of tables")
        return [Table(item, f"{self.where}.{key}[{i}]") for i, item in enumerate(items)]

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise ValueError(f"{self.where}: unknown key '{unknown[0]}'")


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(
        {int: "an integer", float: "a number", str: "a string"}.get(k, k.__name__) for k in kinds
    )


def _series_table(table: Table, keys: tuple[str, ...]) -> dict[str, Series]:
    result = {}
    for key in keys:
        values = table.series(key)
        if values is not None:
            result[key] = values
    table.done()
    return result


def _cuda_version(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):  # NVML's 12040 form
        return f"{value // 1000}.{value % 1000 // 10}"
    return str(value)


def _parse_mig(table: Table, position: int, parent: str) -> SimMig:
    info = MigInfo(
        index=table.get("index", int, position),
        uuid=table.require("uuid", str),
        gpu_instance_id=table.require("gpu_instance_id", int),
        compute_instance_id=table.require("compute_instance_id", int),
        profile=table.require("profile", str),
        memory_total=int(table.get("memory_total_mib", (int, float), 0) * MIB),
        multiprocessor_count=table.get("multiprocessor_count", int, 0),
        gi_cap_minor=table.get("gi_cap_minor", int),
        ci_cap_minor=table.get("ci_cap_minor", int),
    )
    if not info.uuid.startswith("MIG-"):
        raise ValueError(f"{table.where}.uuid: a MIG UUID starts with 'MIG-' (GPU {parent})")
    series = _series_table(table.table("samples"), _MIG_SERIES)
    table.done()
    return SimMig(info, series)


def _parse_gpu(table: Table, position: int) -> SimGpu:
    index = table.get("index", int, position)
    uuid = table.require("uuid", str)
    if not uuid.startswith("GPU-"):
        raise ValueError(f"{table.where}.uuid: a GPU UUID starts with 'GPU-'")
    migs = tuple(_parse_mig(t, i, uuid) for i, t in enumerate(table.tables("mig")))
    mig_mode = table.get("mig_mode", str, "enabled" if migs else "disabled")
    if mig_mode not in ("enabled", "disabled", "unsupported"):
        raise ValueError(
            f"{table.where}.mig_mode: '{mig_mode}' is not enabled/disabled/unsupported"
        )
    if migs and mig_mode != "enabled":
        raise ValueError(f"{table.where}: MIG devices listed but mig_mode is {mig_mode}")
    state = table.get("state", str, STATE_OK)
    if state not in ("ok", "lost", "error"):
        raise ValueError(f"{table.where}.state: '{state}' is not ok/lost/error")
    info = GpuInfo(
        index=index,
        uuid=uuid,
        name=table.get("name", str, "NVIDIA Simulated GPU"),
        brand=table.get("brand", str, "Nvidia"),
        memory_total=int(table.get("memory_total_mib", (int, float), 81559) * MIB),
        minor=table.get("minor", int, index),
        pci_bus_id=table.get("pci_bus_id", str, f"00000000:{0x18 + index:02X}:00.0"),
        numa_node=table.get("numa_node", int),
        architecture=table.get("architecture", str, "Hopper"),
        cuda_compute_capability=table.get("cuda_compute_capability", str, "9.0"),
        mig_mode=mig_mode,
        mig_pending=table.get("mig_pending", str, ""),
        mig_devices=tuple(m.info for m in migs),
        nvlink_peers=tuple(str(p) for p in table.get("nvlink_peers", list, [])),
        gpm_supported=table.get("gpm_supported", bool, False),
        state=state,
        error=table.get("error", str, ""),
    )
    energy = table.get("energy_joules", float, 0.0)
    series = _series_table(table.table("samples"), GPU_SERIES)
    gpm = _series_table(table.table("gpm"), _GPM_KEYS)
    table.done()
    return SimGpu(info, series, gpm, migs, energy)


def _link_peers(gpu: SimGpu, gpus: tuple[SimGpu, ...]) -> SimGpu:
    """``nvlink_peers`` as written (indices or UUIDs) → the peers' UUIDs."""
    peers = []
    for ref in gpu.info.nvlink_peers:
        key: str | int = int(ref) if ref.isdigit() else ref
        peers.append(
            _find_gpu(gpus, key, f"simulation.gpus[{gpu.info.index}].nvlink_peers").info.uuid
        )
    return replace(gpu, info=replace(gpu.info, nvlink_peers=tuple(peers)))


def _find_gpu(gpus: tuple[SimGpu, ...], ref: Any, where: str) -> SimGpu:
    for gpu in gpus:
        if ref == gpu.info.uuid or (isinstance(ref, int) and ref == gpu.info.index):
            return gpu
    raise ValueError(f"{where}.gpu: {ref!r} is not a GPU of this file")


def _find_mig(gpu: SimGpu, ref: str, where: str) -> MigInfo:
    for mig in gpu.info.mig_devices:
        if ref in (mig.uuid, f"{gpu.info.index}:{mig.index}"):
            return mig
    raise ValueError(f"{where}.mig: '{ref}' is not a MIG device of GPU {gpu.info.uuid}")


def parse_process(table: Table, gpus: tuple[SimGpu, ...]) -> SimProcess:
    gpu = _find_gpu(gpus, table.require("gpu", (str, int)), table.where)
    pid = table.require("pid", int)
    mig_ref = table.get("mig", str, "")
    mig = _find_mig(gpu, mig_ref, table.where) if mig_ref else None
    kind = table.get("kind", str, "compute")
    if kind not in ("compute", "graphics"):
        raise ValueError(f"{table.where}.kind: '{kind}' is not compute or graphics")
    series = {}
    for key in _PROCESS_SERIES:
        values = table.series(key)
        if values is not None:
            series[key] = values
    table.done()
    return SimProcess(
        gpu_uuid=gpu.info.uuid,
        pid=pid,
        mig_uuid=mig.uuid if mig else "",
        gpu_instance_id=mig.gpu_instance_id if mig else None,
        compute_instance_id=mig.compute_instance_id if mig else None,
        kind=kind,
        series=series,
    )


def _parse_event(table: Table, gpus: tuple[SimGpu, ...]) -> SimEvent:
    kind = table.get("kind", str, "xid")
    if kind not in _EVENT_KINDS:
        raise ValueError(f"{table.where}.kind: '{kind}' is not one of {', '.join(_EVENT_KINDS)}")
    ref = table.get("gpu", (str, int))
    gpu = _find_gpu(gpus, ref, table.where) if ref is not None else None
    if gpu is None and kind != "error":
        raise ValueError(f"{table.where}: 'gpu' is required for a {kind} event")
    xid = table.get("xid", int, 0)
    if kind == "xid" and xid <= 0:
        raise ValueError(f"{table.where}.xid: an xid event needs a positive xid")
    mig_ref = table.get("mig", str, "")
    mig = _find_mig(gpu, mig_ref, table.where) if gpu is not None and mig_ref else None
    at = table.get("at_seconds", float, 0.0)
    event_id = table.get("id", str, "")
    message = table.get("message", str, "")
    table.done()
    event = GpuEvent(
        kind=kind,
        uuid=gpu.info.uuid if gpu else "",
        xid=xid,
        mig_uuid=mig.uuid if mig else "",
        gpu_instance_id=mig.gpu_instance_id if mig else None,
        compute_instance_id=mig.compute_instance_id if mig else None,
        message=message,
    )
    key = (event_id,) if event_id else (kind, event.uuid, xid, event.mig_uuid, at)
    return SimEvent(key, event, at)


def parse_simulation(data: Mapping[str, Any], source: str = "") -> Simulation:
    """Validate a loaded file; ``ValueError`` names the first bad key by its path."""
    top = Table(dict(data), "simulation")
    driver = DriverInfo(
        driver_version=top.get("driver_version", str, "550.54.15"),
        cuda_driver_version=_cuda_version(top.get("cuda_driver_version", (str, int), "12.4")),
        nvml_version=top.get("nvml_version", str, ""),
    )
    advance = top.get("advance_seconds", float, 0.0)
    if advance < 0:
        raise ValueError("simulation.advance_seconds: must not be negative")
    gpus = tuple(_parse_gpu(t, i) for i, t in enumerate(top.tables("gpus")))
    seen: set[str] = set()
    for gpu in gpus:
        ids = [gpu.info.uuid, f"index {gpu.info.index}", *(m.uuid for m in gpu.info.mig_devices)]
        for ident in ids:
            if ident in seen:
                raise ValueError(f"simulation.gpus: {ident} appears twice")
            seen.add(ident)
    gpus = tuple(_link_peers(gpu, gpus) for gpu in gpus)
    processes = tuple(parse_process(t, gpus) for t in top.tables("processes"))
    events = tuple(_parse_event(t, gpus) for t in top.tables("events"))
    top.done()
    return Simulation(driver, gpus, processes, events, advance, source)


def load_simulation(path: str) -> Simulation:
    """Read and validate a simulation file (TOML, or JSON when it ends in .json)."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise ConfigError(f"gpu.simulated_file {path}: {exc.strerror}") from None
    try:
        data = json.loads(raw) if path.endswith(".json") else tomllib.loads(raw.decode())
        if not isinstance(data, dict):
            raise ValueError("expected a table at the top level")
        return parse_simulation(data, path)
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError and TOMLDecodeError too
        raise ConfigError(f"gpu.simulated_file {path}: {exc}") from None


def pick(series: Series | None, step: int) -> float | None:
    """The value of a series at ``step`` (it wraps around); None for an absent series."""
    if series is None:
        return None
    return series[step % len(series)]
