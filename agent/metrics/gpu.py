"""GPU metric families from one ``GpuReading``: per device, and per container on shared GPUs.

Per device (each GPU, and each MIG device of a GPU in MIG mode) every reading the
backend has is exported twice: under DCGM-exporter's name, unit and labels
(``names.DCGM``; optional) and as ``model_agent_gpu_*`` in base units
(``names.GPU``). A value the device does not have is left out, never sent as 0.

**Holder labels.** ``namespace``/``pod``/``container`` name the container the
assignment record says holds the device (``MetadataDB.gpu_holders``), while that
container exists and has not exited. Containers of one pod sharing a device give
the pod with an empty ``container``; containers of several pods sharing one give
empty holder labels: a device value belongs to no single pod, and copying it to
each would double it in every ``sum by (pod)``. What each container of a shared
GPU uses is in the per-container families. The ``dra_*`` labels are set when the
holder's CDI name is one the DRA driver prepared for a claim.

**Per container.** NVML's running processes (host PIDs, with their GPU memory) and
per-process utilisation samples, each PID mapped to its container, give
``model_agent_gpu_container_memory_used_bytes``, ``..._utilization_ratio`` (the
container's processes' SM utilisation, summed) and ``..._processes`` per (device,
container). NVML has no per-process utilisation on MIG devices: there the
utilisation series is absent and ``model_agent_gpu_process_utilization_supported``
is 0, rather than a copy of a device value. Memory of processes that belong to no
container of this agent is ``model_agent_gpu_unattributed_memory_used_bytes``.
Imports ``gpu`` and ``db`` types only (never ``pods``: containers come as ``ContainerRef``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from agent.db import DraPreparedDevice, GpuHolder
from agent.gpu import STATE_OK, GpuInfo, GpuSample, MigInfo
from agent.metrics import names
from agent.metrics.exposition import COUNTER, GAUGE, UNKNOWN, Family, FamilyBuilder, LabelCache
from agent.metrics.gpu_reading import GpuReading

__all__ = ["ContainerRef", "GpuFamilyOptions", "gpu_families"]

_NO_HOLDER = ("", "", "")
_NO_DRA = ("", "", "", "", "")
_DEVICE_KEYS = names.GPU_LABELS + names.HOLDER_LABELS + names.DRA_LABELS
_INFO_KEYS = (
    *names.GPU_LABELS,
    "device_uuid",
    "brand",
    "architecture",
    "cuda_compute_capability",
    "mig_mode",
    "numa_node",
)


@dataclass(frozen=True, slots=True)
class ContainerRef:
    """What the metrics need of one container of the agent."""

    namespace: str
    pod: str
    name: str
    live: bool  # created or running (an exited container holds no GPU)


@dataclass(frozen=True, slots=True)
class GpuFamilyOptions:
    hostname: str
    dcgm_names: bool = True


@dataclass(frozen=True, slots=True)
class _Device:
    gpu: GpuInfo
    mig: MigInfo | None

    @property
    def uuid(self) -> str:
        return self.mig.uuid if self.mig else self.gpu.uuid

    def identity(self, hostname: str, driver: str) -> tuple[str, ...]:
        """Label values in ``names.GPU_LABELS`` order (== ``DCGM_LABELS`` order)."""
        return (
            str(self.gpu.index),
            self.gpu.uuid,
            self.gpu.pci_bus_id,
            f"nvidia{self.gpu.minor}" if self.gpu.minor is not None else "",
            self.gpu.name,
            hostname,
            driver,
            self.mig.profile if self.mig else "",
            str(self.mig.gpu_instance_id) if self.mig else "",
        )


def _devices(reading: GpuReading) -> list[_Device]:
    out = []
    for gpu in reading.inventory.gpus:
        out.append(_Device(gpu, None))
        out.extend(_Device(gpu, mig) for mig in gpu.mig_devices)
    return out


def _dra_values(holder: GpuHolder, dra: Mapping[str, DraPreparedDevice]) -> tuple[str, ...]:
    prepared = dra.get(holder.request) if holder.via == "cdi" else None
    if prepared is None:
        return _NO_DRA
    return (
        prepared.claim_name,
        prepared.claim_namespace,
        prepared.driver,
        prepared.pool,
        prepared.device,
    )


def _holder_values(
    holders: list[GpuHolder], dra: Mapping[str, DraPreparedDevice]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(namespace, pod, container) and the DRA labels for a device's live holders."""
    if not holders:
        return _NO_HOLDER, _NO_DRA
    pods = {(h.pod_namespace, h.pod_name) for h in holders}
    if len(pods) > 1:
        return _NO_HOLDER, _NO_DRA
    ((namespace, pod),) = pods
    containers = {h.container_name for h in holders}
    container = next(iter(containers)) if len(containers) == 1 else ""
    claims = {_dra_values(h, dra) for h in holders}
    return (namespace, pod, container), (next(iter(claims)) if len(claims) == 1 else _NO_DRA)


def _value(field: names.Field, sample: GpuSample | None, gpm: Mapping[str, float]) -> float | None:
    if field.source.startswith("gpm:"):
        raw: object = gpm.get(field.source[4:])
    elif sample is None:
        return None
    else:
        raw = getattr(sample, field.source, None)
    if raw is None:
        return None
    return float(raw) * field.scale  # type: ignore[arg-type]


class _Families:
    """Metric families by name, created on first use, sharing one label cache."""

    def __init__(self, cache: LabelCache) -> None:
        self.by_name: dict[str, FamilyBuilder] = {}
        self._cache = cache

    def get(self, name: str, help_text: str, kind: str, keys: Iterable[str]) -> FamilyBuilder:
        builder = self.by_name.get(name)
        if builder is None:
            builder = self.by_name[name] = FamilyBuilder(
                name, help_text, kind, tuple(keys), self._cache
            )
        return builder

    def add(
        self,
        name: str,
        help_text: str,
        kind: str,
        keys: Iterable[str],
        values: Sequence[str],
        value: float,
    ) -> None:
        self.get(name, help_text, kind, keys).add(tuple(values), value)


def gpu_families(
    reading: GpuReading,
    containers: Mapping[str, ContainerRef],
    xid_last: Mapping[str, int],
    xid_counts: Mapping[tuple[str, int], int],
    options: GpuFamilyOptions,
    cache: LabelCache | None = None,
) -> list[Family]:
    families = _Families(cache or LabelCache())
    driver = reading.inventory.driver.driver_version
    live_holders: dict[str, list[GpuHolder]] = defaultdict(list)
    for holder in reading.holders:
        ref = containers.get(holder.container_id)
        if ref is not None and ref.live:
            live_holders[holder.device_uuid].append(holder)
    devices = _devices(reading)
    for device in devices:
        identity = device.identity(options.hostname, driver)
        holder_labels, dra = _holder_values(live_holders.get(device.uuid, []), reading.dra_by_cdi)
        labels = [*identity, *holder_labels, *dra]
        _device_families(families, device, reading, labels, xid_last, options)
        _info(families, device, identity)
    _xid_counts(families, devices, xid_counts, options.hostname, driver)
    _container_families(families, devices, reading, containers, options.hostname, driver)
    return [b.family for b in families.by_name.values() if b.family.lines]


def _device_families(
    families: _Families,
    device: _Device,
    reading: GpuReading,
    labels: list[str],
    xid_last: Mapping[str, int],
    options: GpuFamilyOptions,
) -> None:
    sample = reading.samples.get(device.uuid)
    gpm_sample = reading.gpm.get(device.uuid)
    gpm = gpm_sample.metrics if gpm_sample is not None else {}
    answering = device.gpu.state == STATE_OK and (sample is None or sample.state == STATE_OK)
    ok = answering and device.gpu.uuid not in reading.unhealthy
    if device.mig is None:
        families.add(
            names.GPU_HEALTHY,
            "1 while the GPU is healthy (what the device plugin and DRA driver report), 0 "
            "when it is lost, failing or marked unhealthy (XID, ECC)",
            GAUGE,
            _DEVICE_KEYS,
            labels,
            1.0 if ok else 0.0,
        )
    families.add(
        names.GPU_PROCESS_UTILIZATION_SUPPORTED,
        "1 where NVML samples utilisation per process (whole GPUs), 0 where it cannot "
        "(MIG devices): per-container utilisation is then not exported",
        GAUGE,
        _DEVICE_KEYS,
        labels,
        0.0 if device.mig else 1.0,
    )
    if options.dcgm_names:
        dcgm_labels = names.DCGM_LABELS + names.HOLDER_LABELS + names.DRA_LABELS
        for field in names.DCGM:
            if field.source == "last_xid":
                value: float | None = (
                    float(xid_last.get(device.gpu.uuid, 0))
                    if device.mig is None and answering
                    else None
                )
            else:
                value = _value(field, sample, gpm)
            if value is not None:
                kind = UNKNOWN if field.counter else GAUGE
                families.add(field.name, field.help, kind, dcgm_labels, labels, value)
    for field in names.GPU:
        value = _value(field, sample, gpm)
        if value is None:
            continue
        kind = COUNTER if field.counter else GAUGE
        keys: tuple[str, ...] = _DEVICE_KEYS
        values = labels
        if field.extra_label[0]:
            keys = (*keys, field.extra_label[0])
            values = [*labels, field.extra_label[1]]
        families.add(field.name, field.help, kind, keys, values, value)


def _info(families: _Families, device: _Device, identity: tuple[str, ...]) -> None:
    gpu = device.gpu
    families.add(
        names.GPU_INFO,
        "A GPU or MIG device of the node, with what the inventory knows of it (always 1)",
        GAUGE,
        _INFO_KEYS,
        [
            *identity,
            device.uuid,
            gpu.brand,
            gpu.architecture,
            gpu.cuda_compute_capability,
            gpu.mig_mode,
            "" if gpu.numa_node is None else str(gpu.numa_node),
        ],
        1.0,
    )


def _xid_counts(
    families: _Families,
    devices: list[_Device],
    counts: Mapping[tuple[str, int], int],
    hostname: str,
    driver: str,
) -> None:
    by_uuid = {d.gpu.uuid: d for d in devices if d.mig is None}
    family = families.get(
        names.GPU_XID_ERRORS_TOTAL,
        "XID errors the driver reported since the agent started, by XID code",
        COUNTER,
        (*names.GPU_LABELS, "xid"),
    )
    for (uuid, xid), count in sorted(counts.items()):
        device = by_uuid.get(uuid)
        if device is not None:
            family.add((*device.identity(hostname, driver), str(xid)), float(count))


def _container_families(
    families: _Families,
    devices: list[_Device],
    reading: GpuReading,
    containers: Mapping[str, ContainerRef],
    hostname: str,
    driver: str,
) -> None:
    by_uuid = {d.uuid: d for d in devices}
    held_via: dict[tuple[str, str], GpuHolder] = {
        (h.device_uuid, h.container_id): h for h in reading.holders
    }
    memory: dict[tuple[str, str], float] = defaultdict(float)
    memory_known: set[tuple[str, str]] = set()
    utilization: dict[tuple[str, str], float] = defaultdict(float)
    processes: dict[tuple[str, str], int] = defaultdict(int)
    unattributed: dict[str, float] = defaultdict(float)
    for process in reading.processes:
        device_uuid = process.mig_uuid or process.gpu_uuid
        if device_uuid not in by_uuid:
            continue
        cid = reading.pid_containers.get(process.pid)
        if cid is None or cid not in containers:
            unattributed[device_uuid] += float(process.used_memory or 0)
            continue
        key = (device_uuid, cid)
        processes[key] += 1
        if process.used_memory is not None:
            memory[key] += float(process.used_memory)
            memory_known.add(key)
        if not process.mig_uuid:
            utilization[key] += reading.utilization.get((process.gpu_uuid, process.pid), 0.0)
    for device_uuid, value in unattributed.items():
        families.add(
            names.GPU_UNATTRIBUTED_MEMORY_USED_BYTES,
            "GPU memory of processes that belong to no container of this agent "
            "(host processes, other runtimes)",
            GAUGE,
            names.GPU_LABELS,
            list(by_uuid[device_uuid].identity(hostname, driver)),
            value,
        )
    for key in sorted(processes):
        device_uuid, cid = key
        device = by_uuid[device_uuid]
        ref = containers[cid]
        holder = held_via.get(key)
        dra = _dra_values(holder, reading.dra_by_cdi) if holder is not None else _NO_DRA
        labels = [*device.identity(hostname, driver), ref.namespace, ref.pod, ref.name, *dra]
        families.add(
            names.GPU_CONTAINER_PROCESSES,
            "Processes of the container with a context on the GPU (or MIG device)",
            GAUGE,
            _DEVICE_KEYS,
            labels,
            float(processes[key]),
        )
        if key in memory_known:
            families.add(
                names.GPU_CONTAINER_MEMORY_USED_BYTES,
                "GPU memory the container's processes use (NVML usedGpuMemory, summed)",
                GAUGE,
                _DEVICE_KEYS,
                labels,
                memory[key],
            )
        if device.mig is None:
            families.add(
                names.GPU_CONTAINER_UTILIZATION_RATIO,
                "SM utilisation of the container's processes since the previous reading "
                "(NVML per-process samples, summed; not available on MIG devices)",
                GAUGE,
                _DEVICE_KEYS,
                labels,
                utilization[key] / 100.0,
            )
