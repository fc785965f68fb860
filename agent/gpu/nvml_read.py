"""Reading NVML: inventory, samples and processes of one GPU, every failure contained.

Functions here take the NVML module object (``pynvml``, or a test's fake) from
``gpu.nvml``, which is the only module that imports it. Every field is read in
its own guard (``_Fields``): ``NVML_ERROR_NOT_SUPPORTED`` lands in
``unsupported``, other NVML errors in ``errors``, and ``NVML_ERROR_GPU_IS_LOST``
ends the GPU's reading with state ``lost``. A Python error that is not an NVML
error (a bug) propagates.

Size: every NVML read is here, each in its guard, so what an NVML call can fail
with is handled one way in one place; inventory, samples, MIG devices and
processes share those guards and the error codes.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping
from typing import Any

from agent.gpu.backend import (
    STATE_ERROR,
    STATE_LOST,
    STATE_OK,
    DriverInfo,
    GpuInfo,
    GpuProcess,
    GpuSample,
    MigInfo,
    ProcessUtilization,
)
from agent.gpu.procfs import mig_cap_paths, read_cap_minor

__all__ = [
    "DRIVER_NOT_LOADED",
    "EVENT_DBE",
    "EVENT_SBE",
    "EVENT_XID",
    "GPM_METRICS",
    "GPU_IS_LOST",
    "LIBRARY_NOT_FOUND",
    "MIB",
    "NO_INSTANCE",
    "TIMEOUT",
    "Lost",
    "count_gpus",
    "mig_profile_from_name",
    "nvml_error_code",
    "read_driver",
    "read_gpu",
    "read_process_utilization",
    "read_processes",
    "read_samples",
    "text",
]

log = logging.getLogger(__name__)

# NVML return codes (nvml.h); kept here so a fake module needs only the functions.
_NOT_SUPPORTED = 3
_NOT_FOUND = 6
TIMEOUT = 10
LIBRARY_NOT_FOUND = 12
_FUNCTION_NOT_FOUND = 13
GPU_IS_LOST = 15
INVALID_ARGUMENT = 2
#: NVML_NVLINK_MAX_LINKS (Blackwell has 18)
NVLINK_MAX_LINKS = 18
DRIVER_NOT_LOADED = 9

_ARCHITECTURES = {
    2: "Kepler",
    3: "Maxwell",
    4: "Pascal",
    5: "Volta",
    6: "Turing",
    7: "Ampere",
    8: "Ada Lovelace",
    9: "Hopper",
    10: "Blackwell",
}
#: go-nvlib's GetBrandAsString names, which NVIDIA's DRA driver publishes.
_BRANDS = {
    0: "Unknown",
    1: "Quadro",
    2: "Tesla",
    3: "NVS",
    4: "Grid",
    5: "GeForce",
    6: "Titan",
    7: "NvidiaVApps",
    8: "NvidiaVPC",
    9: "NvidiaVCS",
    10: "NvidiaVWS",
    11: "NvidiaCloudGaming",
    12: "QuadroRTX",
    13: "NvidiaRTX",
    14: "Nvidia",
    15: "GeForceRTX",
    16: "TitanRTX",
}
# nvmlEventType* bits, nvmlTemperatureSensors, nvmlClockType, ECC enums, field ids.
EVENT_SBE, EVENT_DBE, EVENT_XID = 0x1, 0x2, 0x8
_TEMP_GPU, _CLOCK_SM, _CLOCK_MEM = 0, 1, 2
_ECC_CORRECTED, _ECC_UNCORRECTED, _ECC_VOLATILE, _ECC_AGGREGATE = 0, 1, 0, 1
_FI_MEMORY_TEMP = 82
_MEMORY_V2 = 0x02000028
NO_INSTANCE = 0xFFFFFFFF
#: GPM metric ids (nvml.h nvmlGpmMetricId_t) → our names; rates come in MiB/s.
GPM_METRICS = {
    1: "graphics_engine_active",
    2: "sm_active",
    3: "sm_occupancy",
    5: "tensor_active",
    10: "dram_active",
    20: "pcie_tx_bytes_per_second",
    21: "pcie_rx_bytes_per_second",
    61: "nvlink_tx_bytes_per_second",
    60: "nvlink_rx_bytes_per_second",
}
MIB = 1024 * 1024


class Lost(Exception):
    """The GPU fell off the bus while being read."""


def nvml_error_code(exc: BaseException) -> int | None:
    """NVML's return code of an NVML error; None for any other exception (a bug)."""
    value = getattr(exc, "value", None)
    if isinstance(value, int):
        return value
    if type(exc).__name__ == "NVMLLibraryMismatchError":  # pynvml: a versioned call is missing
        return _FUNCTION_NOT_FOUND
    return None


def text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode(errors="replace").rstrip("\x00")
    return str(value)


def mig_profile_from_name(name: str) -> str:
    """``"NVIDIA H100 80GB HBM3 MIG 1g.10gb"`` → ``"1g.10gb"`` (NVML names MIG devices so)."""
    marker = " MIG "
    return name.rsplit(marker, 1)[1].strip() if marker in name else ""


def _mig_profile_from_attributes(attrs: Any, parent_memory: int) -> str:
    """go-nvlib's rule: slices and memory rounded to eighths of the GPU, in whole GB."""
    gi = int(attrs.gpuInstanceSliceCount)
    ci = int(attrs.computeInstanceSliceCount)
    mem_bytes = int(attrs.memorySizeMB) * MIB
    if parent_memory <= 0:
        return ""
    fraction = -(-mem_bytes * 8 // parent_memory) / 8  # ceil to 1/8
    total_gb = -(-parent_memory // (1024**3))
    gb = round(fraction * total_gb)
    return f"{gi}g.{gb}gb" if ci == gi else f"{ci}c.{gi}g.{gb}gb"


def _numa_from_sysfs(bus_id: str) -> int | None:
    """NUMA node from sysfs: NVML's 8-digit domain becomes the kernel's 4-digit one."""
    if not bus_id:
        return None
    domain, _, rest = bus_id.lower().partition(":")
    path = f"/sys/bus/pci/devices/{domain[-4:]}:{rest}/numa_node"
    try:
        with open(path) as f:
            node = int(f.read().strip())
    except (OSError, ValueError):
        return None
    return node if node >= 0 else None


class _Fields:
    """Collects a device's readings, sorting failures into unsupported/errors."""

    def __init__(self, nvml: Any) -> None:
        self.nvml = nvml
        self.unsupported: list[str] = []
        self.errors: dict[str, str] = {}

    def get(self, name: str, fn: str, *args: Any) -> Any:
        func = getattr(self.nvml, fn, None)
        if func is None:
            self.unsupported.append(name)
            return None
        try:
            return func(*args)
        except Exception as exc:
            code = nvml_error_code(exc)
            if code is None:
                raise
            if code == GPU_IS_LOST:
                raise Lost(str(exc)) from None
            if code in (_NOT_SUPPORTED, _FUNCTION_NOT_FOUND, _NOT_FOUND):
                self.unsupported.append(name)
            else:
                self.errors[name] = str(exc)
            return None

    def first(self, name: str, *calls: tuple[str, tuple[Any, ...]]) -> Any:
        """The first of several spellings of a call the driver has (newest first)."""
        for fn, args in calls:
            before = len(self.unsupported)
            value = self.get(name, fn, *args)
            if value is not None or len(self.unsupported) == before:
                return value
            del self.unsupported[before:]
        self.unsupported.append(name)
        return None


def read_gpu(nvml: Any, index: int, proc_root: str) -> GpuInfo:
    """One GPU's inventory; a failure is the GPU's state, never an exception."""
    f = _Fields(nvml)
    try:
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
    except Exception as exc:
        code = nvml_error_code(exc)
        if code is None:
            raise
        state = STATE_LOST if code == GPU_IS_LOST else STATE_ERROR
        return GpuInfo(index=index, state=state, error=f"cannot open GPU {index}: {exc}")
    try:
        uuid = f.get("uuid", "nvmlDeviceGetUUID", handle)
        if uuid is None:
            reason = f.errors.get("uuid", "not supported")
            return GpuInfo(index=index, state=STATE_ERROR, error=f"no UUID: {reason}")
        memory = f.get("memory", "nvmlDeviceGetMemoryInfo", handle)
        pci = f.get("pci", "nvmlDeviceGetPciInfo", handle)
        bus_id = text(getattr(pci, "busId", "")) if pci is not None else ""
        numa = f.get("numa_node", "nvmlDeviceGetNumaNodeId", handle)
        if numa is None or int(numa) < 0:
            f.errors.pop("numa_node", None)
            numa = _numa_from_sysfs(bus_id)
        arch = f.get("architecture", "nvmlDeviceGetArchitecture", handle)
        cc = f.get("cuda_compute_capability", "nvmlDeviceGetCudaComputeCapability", handle)
        brand = f.get("brand", "nvmlDeviceGetBrand", handle)
        minor = f.get("minor", "nvmlDeviceGetMinorNumber", handle)
        mig_mode, mig_pending, migs = _read_migs(nvml, proc_root, f, handle, minor, memory)
        gpm = f.get("gpm", "nvmlGpmQueryDeviceSupport", handle)
        peers = _nvlink_remote_bus_ids(nvml, handle)
        info = GpuInfo(
            index=index,
            uuid=text(uuid),
            name=text(f.get("name", "nvmlDeviceGetName", handle) or ""),
            brand=_BRANDS.get(int(brand), f"Unknown({brand})") if brand is not None else "",
            memory_total=int(memory.total) if memory is not None else 0,
            minor=int(minor) if minor is not None else None,
            pci_bus_id=bus_id,
            numa_node=int(numa) if numa is not None else None,
            architecture=(
                _ARCHITECTURES.get(int(arch), f"Unknown({arch})") if arch is not None else ""
            ),
            cuda_compute_capability=f"{cc[0]}.{cc[1]}" if cc is not None else "",
            mig_mode=mig_mode,
            mig_pending=mig_pending,
            mig_devices=migs,
            nvlink_peers=peers,  # PCI bus ids here; NvmlBackend.gpus() maps them to UUIDs
            gpm_supported=bool(getattr(gpm, "isSupportedDevice", 0)) if gpm else False,
        )
    except Lost as exc:
        return GpuInfo(index=index, state=STATE_LOST, error=f"GPU fell off the bus: {exc}")
    if f.errors:
        detail = "; ".join(f"{k}: {v}" for k, v in sorted(f.errors.items()))
        # Without its minor the GPU cannot be given to a container: not usable.
        state = STATE_ERROR if info.minor is None else STATE_OK
        info = dataclasses.replace(info, error=detail, state=state)
    return info


def _nvlink_remote_bus_ids(nvml: Any, handle: Any) -> tuple[str, ...]:
    """PCI bus ids at the far end of each active NVLink (GPUs or NVSwitches)."""
    peers: list[str] = []
    for link in range(NVLINK_MAX_LINKS):
        try:
            if int(nvml.nvmlDeviceGetNvLinkState(handle, link)) != 1:
                continue
            remote = nvml.nvmlDeviceGetNvLinkRemotePciInfo(handle, link)
        except AttributeError:
            return ()  # a binding without NVLink calls
        except Exception as exc:
            code = nvml_error_code(exc)
            if code is None:
                raise
            if code == GPU_IS_LOST:
                raise Lost(str(exc)) from None
            if code in (_NOT_SUPPORTED, INVALID_ARGUMENT):
                break  # no NVLink, or no more links
            continue
        bus = text(getattr(remote, "busId", "")).lower()
        if bus and bus not in peers:
            peers.append(bus)
    return tuple(peers)


def _read_migs(
    nvml: Any, proc_root: str, f: _Fields, handle: Any, minor: int | None, memory: Any
) -> tuple[str, str, tuple[MigInfo, ...]]:
    modes = f.get("mig_mode", "nvmlDeviceGetMigMode", handle)
    if modes is None:
        return "unsupported", "", ()
    current, pending = (int(modes[0]), int(modes[1]))
    names = {0: "disabled", 1: "enabled"}
    mode = names.get(current, str(current))
    pending_text = names.get(pending, str(pending)) if pending != current else ""
    if current != 1:
        return mode, pending_text, ()
    parent_memory = int(memory.total) if memory is not None else 0
    count = f.get("mig_count", "nvmlDeviceGetMaxMigDeviceCount", handle) or 0
    migs = []
    for slot in range(int(count)):
        mf = _Fields(nvml)
        mig = mf.get("handle", "nvmlDeviceGetMigDeviceHandleByIndex", handle, slot)
        if mig is None:
            if "handle" in mf.errors:
                f.errors[f"mig{slot}"] = mf.errors["handle"]
            continue  # NOT_FOUND: an empty slot
        uuid = mf.get("uuid", "nvmlDeviceGetUUID", mig)
        gi = mf.get("gi", "nvmlDeviceGetGpuInstanceId", mig)
        ci = mf.get("ci", "nvmlDeviceGetComputeInstanceId", mig)
        if uuid is None or gi is None or ci is None:
            f.errors[f"mig{slot}"] = "; ".join(mf.errors.values()) or "identity unreadable"
            continue
        mig_memory = mf.get("memory", "nvmlDeviceGetMemoryInfo", mig)
        attrs = mf.get("attributes", "nvmlDeviceGetAttributes", mig)
        profile = mig_profile_from_name(text(mf.get("name", "nvmlDeviceGetName", mig) or ""))
        if not profile and attrs is not None:
            profile = _mig_profile_from_attributes(attrs, parent_memory)
        gi_path, ci_path = ("", "")
        if minor is not None:
            gi_path, ci_path = mig_cap_paths(proc_root, int(minor), int(gi), int(ci))
        migs.append(
            MigInfo(
                index=slot,
                uuid=text(uuid),
                gpu_instance_id=int(gi),
                compute_instance_id=int(ci),
                profile=profile,
                memory_total=int(mig_memory.total) if mig_memory is not None else 0,
                multiprocessor_count=int(attrs.multiprocessorCount) if attrs else 0,
                gi_cap_minor=read_cap_minor(gi_path) if gi_path else None,
                ci_cap_minor=read_cap_minor(ci_path) if ci_path else None,
                gi_cap_path=gi_path,
                ci_cap_path=ci_path,
            )
        )
    return mode, pending_text, tuple(migs)


# -- samples --------------------------------------------------------


def read_samples(nvml: Any, index: int) -> list[GpuSample]:
    """The GPU's sample, then one per MIG device; a lost GPU is one sample saying so."""
    now = time.time()
    f = _Fields(nvml)
    uuid = ""
    try:
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        uuid = text(f.get("uuid", "nvmlDeviceGetUUID", handle) or "")
        util = f.get("gpu_util", "nvmlDeviceGetUtilizationRates", handle)
        if util is None:
            f.unsupported.append("mem_copy_util")
        enc = f.get("enc_util", "nvmlDeviceGetEncoderUtilization", handle)
        dec = f.get("dec_util", "nvmlDeviceGetDecoderUtilization", handle)
        # v2 adds "reserved"; an older driver lacks it (FUNCTION_NOT_FOUND or a version error).
        mem = f.get("memory", "nvmlDeviceGetMemoryInfo", handle, _MEMORY_V2)
        if mem is None:
            f.errors.pop("memory", None)
            if "memory" in f.unsupported:
                f.unsupported.remove("memory")
            mem = f.get("memory", "nvmlDeviceGetMemoryInfo", handle)
        power = f.get("power_watts", "nvmlDeviceGetPowerUsage", handle)
        energy = f.get("energy_joules", "nvmlDeviceGetTotalEnergyConsumption", handle)
        temp = f.first(  # the unversioned call goes away with CUDA 14
            "gpu_temp_c",
            ("nvmlDeviceGetTemperatureV", (handle, _TEMP_GPU)),
            ("nvmlDeviceGetTemperature", (handle, _TEMP_GPU)),
        )
        mem_temp = _field_value(f, handle, "memory_temp_c", _FI_MEMORY_TEMP)
        sm_clock = f.get("sm_clock_mhz", "nvmlDeviceGetClockInfo", handle, _CLOCK_SM)
        mem_clock = f.get("mem_clock_mhz", "nvmlDeviceGetClockInfo", handle, _CLOCK_MEM)
        replay = f.get("pcie_replay_count", "nvmlDeviceGetPcieReplayCounter", handle)
        remap = f.get("remapped_rows", "nvmlDeviceGetRemappedRows", handle)
        ecc = {
            (kind, counter): f.get(
                f"ecc_{kind}_{counter}", "nvmlDeviceGetTotalEccErrors", handle, k, c
            )
            for kind, k in (("corrected", _ECC_CORRECTED), ("uncorrected", _ECC_UNCORRECTED))
            for counter, c in (("volatile", _ECC_VOLATILE), ("aggregate", _ECC_AGGREGATE))
        }
        migs = _mig_samples(nvml, handle, index, uuid, now)
    except Lost as exc:
        return [
            GpuSample(
                uuid, str(index), timestamp=now, state=STATE_LOST, errors={"device": str(exc)}
            )
        ]
    except Exception as exc:
        if nvml_error_code(exc) is None:
            raise
        state = STATE_LOST if nvml_error_code(exc) == GPU_IS_LOST else STATE_ERROR
        return [
            GpuSample(uuid, str(index), timestamp=now, state=state, errors={"device": str(exc)})
        ]
    sample = GpuSample(
        uuid=uuid,
        index=str(index),
        timestamp=now,
        gpu_util=float(util.gpu) if util is not None else None,
        mem_copy_util=float(util.memory) if util is not None else None,
        enc_util=float(enc[0]) if enc is not None else None,
        dec_util=float(dec[0]) if dec is not None else None,
        memory_total=int(mem.total) if mem is not None else None,
        memory_free=int(mem.free) if mem is not None else None,
        memory_used=int(mem.used) if mem is not None else None,
        memory_reserved=int(getattr(mem, "reserved", 0)) if mem is not None else None,
        power_watts=power / 1000.0 if power is not None else None,
        energy_joules=energy / 1000.0 if energy is not None else None,
        gpu_temp_c=float(temp) if temp is not None else None,
        memory_temp_c=mem_temp,
        sm_clock_mhz=float(sm_clock) if sm_clock is not None else None,
        mem_clock_mhz=float(mem_clock) if mem_clock is not None else None,
        pcie_replay_count=int(replay) if replay is not None else None,
        remapped_rows_correctable=int(remap[0]) if remap is not None else None,
        remapped_rows_uncorrectable=int(remap[1]) if remap is not None else None,
        remap_pending=bool(remap[2]) if remap is not None else None,
        remap_failure=bool(remap[3]) if remap is not None else None,
        ecc_corrected_volatile=_opt_int(ecc[("corrected", "volatile")]),
        ecc_uncorrected_volatile=_opt_int(ecc[("uncorrected", "volatile")]),
        ecc_corrected_aggregate=_opt_int(ecc[("corrected", "aggregate")]),
        ecc_uncorrected_aggregate=_opt_int(ecc[("uncorrected", "aggregate")]),
        unsupported=tuple(f.unsupported),
        errors=dict(f.errors),
    )
    return [sample, *migs]


def _field_value(f: _Fields, handle: Any, name: str, field_id: int) -> float | None:
    values = f.get(name, "nvmlDeviceGetFieldValues", handle, [field_id])
    if values is None:
        return None
    value = values[0]
    ret = int(getattr(value, "nvmlReturn", 0))
    if ret != 0:
        if ret == GPU_IS_LOST:
            raise Lost(f"field {field_id}")
        if ret == _NOT_SUPPORTED:
            f.unsupported.append(name)
        else:
            f.errors[name] = f"NVML error {ret}"
        return None
    kind = int(getattr(value, "valueType", 1))
    union = value.value
    attr = {0: "dVal", 1: "uiVal", 2: "ulVal", 3: "ullVal", 4: "sllVal", 5: "siVal"}.get(
        kind, "uiVal"
    )
    return float(getattr(union, attr))


def _mig_samples(nvml: Any, handle: Any, index: int, uuid: str, now: float) -> list[GpuSample]:
    f = _Fields(nvml)
    modes = f.get("mig_mode", "nvmlDeviceGetMigMode", handle)
    if modes is None or int(modes[0]) != 1:
        return []
    out = []
    count = f.get("mig_count", "nvmlDeviceGetMaxMigDeviceCount", handle) or 0
    for slot in range(int(count)):
        mf = _Fields(nvml)
        mig = mf.get("handle", "nvmlDeviceGetMigDeviceHandleByIndex", handle, slot)
        if mig is None:
            continue
        mig_uuid = text(mf.get("uuid", "nvmlDeviceGetUUID", mig) or "")
        gi = mf.get("gi", "nvmlDeviceGetGpuInstanceId", mig)
        mem = mf.get("memory", "nvmlDeviceGetMemoryInfo", mig)
        profile = mig_profile_from_name(text(mf.get("name", "nvmlDeviceGetName", mig) or ""))
        out.append(
            GpuSample(
                uuid=mig_uuid,
                index=f"{index}:{slot}",
                parent_uuid=uuid,
                gpu_instance_id=int(gi) if gi is not None else None,
                profile=profile,
                timestamp=now,
                memory_total=int(mem.total) if mem is not None else None,
                memory_free=int(mem.free) if mem is not None else None,
                memory_used=int(mem.used) if mem is not None else None,
                # NVML has no utilisation, power or clocks per MIG device.
                unsupported=(
                    "gpu_util",
                    "mem_copy_util",
                    "enc_util",
                    "dec_util",
                    "power_watts",
                ),
                errors=dict(mf.errors),
            )
        )
    return out


# -- processes ------------------------------------------------------


def read_processes(
    nvml: Any, index: int, mig_by_instance: Mapping[tuple[str, int | None, int | None], str]
) -> list[GpuProcess]:
    """Compute and graphics processes of one GPU, by host PID; [] for a GPU that fails."""
    f = _Fields(nvml)
    out: list[GpuProcess] = []
    try:
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        uuid = text(f.get("uuid", "nvmlDeviceGetUUID", handle) or "")
        for kind, fn in (
            ("compute", "nvmlDeviceGetComputeRunningProcesses"),
            ("graphics", "nvmlDeviceGetGraphicsRunningProcesses"),
        ):
            # The unversioned call needs the newest struct; older drivers have only _v2.
            found = f.first(kind, (fn, (handle,)), (f"{fn}_v2", (handle,))) or []
            out.extend(_process(mig_by_instance, uuid, kind, p) for p in found)
    except Lost:
        return []
    except Exception as exc:
        if nvml_error_code(exc) is None:
            raise
        log.debug("NVML: processes of GPU %d: %s", index, exc)
        return []
    return out


def _process(
    mig_by_instance: Mapping[tuple[str, int | None, int | None], str], uuid: str, kind: str, p: Any
) -> GpuProcess:
    gi = getattr(p, "gpuInstanceId", NO_INSTANCE)
    ci = getattr(p, "computeInstanceId", NO_INSTANCE)
    gi_id = None if gi is None or int(gi) == NO_INSTANCE else int(gi)
    ci_id = None if ci is None or int(ci) == NO_INSTANCE else int(ci)
    used = getattr(p, "usedGpuMemory", None)
    return GpuProcess(
        gpu_uuid=uuid,
        pid=int(p.pid),
        used_memory=int(used) if used is not None else None,
        mig_uuid=mig_by_instance.get((uuid, gi_id, ci_id), ""),
        gpu_instance_id=gi_id,
        compute_instance_id=ci_id,
        kind=kind,
    )


def read_process_utilization(nvml: Any, index: int, since_us: int) -> list[ProcessUtilization]:
    """Per-process samples of one GPU newer than ``since_us`` (NOT_FOUND: none yet)."""
    f = _Fields(nvml)
    try:
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        uuid = text(f.get("uuid", "nvmlDeviceGetUUID", handle) or "")
        samples = f.get("util", "nvmlDeviceGetProcessUtilization", handle, since_us)
    except Lost:
        return []
    except Exception as exc:
        if nvml_error_code(exc) is None:
            raise
        return []
    return [
        ProcessUtilization(
            uuid,
            int(s.pid),
            int(s.timeStamp),
            float(s.smUtil),
            float(s.memUtil),
            float(s.encUtil),
            float(s.decUtil),
        )
        for s in samples or []
    ]


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def count_gpus(nvml: Any) -> int:
    try:
        return int(nvml.nvmlDeviceGetCount())
    except Exception as exc:
        if nvml_error_code(exc) is None:
            raise
        log.error("NVML: cannot count GPUs: %s", exc)
        return 0


def read_driver(nvml: Any) -> DriverInfo:
    f = _Fields(nvml)
    try:
        driver = f.get("driver_version", "nvmlSystemGetDriverVersion")
        cuda = f.get("cuda_driver_version", "nvmlSystemGetCudaDriverVersion_v2")
        if cuda is None:
            cuda = f.get("cuda_driver_version", "nvmlSystemGetCudaDriverVersion")
        version = f.get("nvml_version", "nvmlSystemGetNVMLVersion")
    except Lost:
        return DriverInfo()
    cuda_text = f"{int(cuda) // 1000}.{int(cuda) % 1000 // 10}" if cuda is not None else ""
    return DriverInfo(text(driver or ""), cuda_text, text(version or ""))
