"""The GPU backend interface: what the agent asks a GPU driver, and the values it gets back.

``GpuBackend`` is implemented by ``nvml.NvmlBackend`` (the real driver, through
``pynvml``), ``simulated.SimulatedBackend`` (a file, for tests and demos) and
``NoGpuBackend`` (a node without GPUs). Everything above ``gpu/`` sees only this
module's types, so the inventory, the CDI node spec, the metrics collectors and
the health monitor work the same on every backend.

Backends are synchronous and may block (NVML calls can take milliseconds, an
event wait blocks for its timeout): callers run them in a thread, never on the
event loop. Every method is safe to call from several threads at once. No method
raises for a driver problem: a GPU or a field that fails is reported in the
value (``state``/``error``/``unsupported``), so one bad GPU never hides the rest.

Units are base units: bytes, watts, joules, degrees Celsius, MHz; utilisation
is a percentage 0-100 as NVML reports it. This module imports nothing from the
agent.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Protocol

__all__ = [
    "STATE_ERROR",
    "STATE_LOST",
    "STATE_OK",
    "BackendStatus",
    "DriverInfo",
    "GpmSample",
    "GpuBackend",
    "GpuEvent",
    "GpuEventStream",
    "GpuInfo",
    "GpuProcess",
    "GpuSample",
    "MigInfo",
    "NoGpuBackend",
    "ProcessUtilization",
]

#: A GPU that answers.
STATE_OK = "ok"
#: A GPU that fell off the bus (NVML_ERROR_GPU_IS_LOST): it needs a reset or a reboot.
STATE_LOST = "lost"
#: A GPU whose identity could not be read (``error`` says why).
STATE_ERROR = "error"


@dataclass(frozen=True, slots=True)
class BackendStatus:
    """Whether the backend works, and in words why not (for logs and ``Status`` verbose)."""

    backend: str  # "nvml", "simulated", "none"
    available: bool
    reason: str = ""
    gpu_count: int = 0


@dataclass(frozen=True, slots=True)
class DriverInfo:
    driver_version: str = ""  # "550.54.15"
    cuda_driver_version: str = ""  # "12.4": the newest CUDA the driver supports
    nvml_version: str = ""


@dataclass(frozen=True, slots=True)
class MigInfo:
    """One MIG device (a GPU instance + compute instance) of a GPU in MIG mode."""

    index: int  # position among the parent's MIG devices: the ``<mig>`` of ``<gpu>:<mig>``
    uuid: str  # "MIG-<uuid>"
    gpu_instance_id: int
    compute_instance_id: int
    profile: str  # "1g.18gb", "3g.71gb", "1c.2g.20gb", ...
    memory_total: int = 0
    multiprocessor_count: int = 0
    #: Minors of /dev/nvidia-caps/nvidia-cap<N> granting access to the GPU and compute
    #: instance, from /proc/driver/nvidia/capabilities (None where not readable).
    gi_cap_minor: int | None = None
    ci_cap_minor: int | None = None
    gi_cap_path: str = ""  # .../capabilities/gpu<minor>/mig/gi<gi>/access
    ci_cap_path: str = ""  # .../gi<gi>/ci<ci>/access


@dataclass(frozen=True, slots=True)
class GpuInfo:
    """What the inventory knows about one physical GPU."""

    index: int
    uuid: str = ""
    name: str = ""
    brand: str = ""  # "Tesla", "Nvidia", "GeForce", ... (go-nvlib's names)
    memory_total: int = 0
    minor: int | None = None  # /dev/nvidia<minor>
    pci_bus_id: str = ""  # "00000000:18:00.0", as NVML reports it
    numa_node: int | None = None
    architecture: str = ""  # "Hopper", "Ampere", "Ada Lovelace", ...
    cuda_compute_capability: str = ""  # "9.0"
    mig_mode: str = "unsupported"  # "enabled", "disabled" or "unsupported"
    mig_pending: str = ""  # the mode after the next reset, when it differs
    mig_devices: tuple[MigInfo, ...] = ()
    #: UUIDs of the GPUs this one reaches over an active NVLink (for topology-aware packing)
    nvlink_peers: tuple[str, ...] = ()
    gpm_supported: bool = False
    state: str = STATE_OK
    error: str = ""  # why state is not ok, or which fields could not be read


@dataclass(frozen=True, slots=True)
class GpuSample:
    """One reading of one GPU or MIG device; ``None`` is a value not available.

    ``unsupported`` names the fields the device does not have (MIG devices have
    no utilisation, consumer GPUs no ECC); ``errors`` the fields that failed.
    """

    uuid: str
    index: str  # "1" for a GPU, "1:0" for a MIG device
    parent_uuid: str = ""  # the GPU of a MIG device; "" for a GPU
    gpu_instance_id: int | None = None
    profile: str = ""
    timestamp: float = 0.0  # time.time() when read
    state: str = STATE_OK
    gpu_util: float | None = None  # percent
    mem_copy_util: float | None = None
    enc_util: float | None = None
    dec_util: float | None = None
    memory_total: int | None = None  # bytes
    memory_free: int | None = None
    memory_used: int | None = None
    memory_reserved: int | None = None
    power_watts: float | None = None
    energy_joules: float | None = None  # since the driver loaded (a counter)
    gpu_temp_c: float | None = None
    memory_temp_c: float | None = None
    sm_clock_mhz: float | None = None
    mem_clock_mhz: float | None = None
    pcie_replay_count: int | None = None
    remapped_rows_correctable: int | None = None
    remapped_rows_uncorrectable: int | None = None
    remap_pending: bool | None = None
    remap_failure: bool | None = None
    ecc_corrected_volatile: int | None = None
    ecc_uncorrected_volatile: int | None = None
    ecc_corrected_aggregate: int | None = None
    ecc_uncorrected_aggregate: int | None = None
    unsupported: tuple[str, ...] = ()
    errors: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class GpuProcess:
    """A process holding a context on a GPU, by host PID (the driver knows no PID namespaces)."""

    gpu_uuid: str
    pid: int
    used_memory: int | None = None  # bytes; None where the driver cannot say
    mig_uuid: str = ""  # the MIG device the process runs on, "" for a whole GPU
    gpu_instance_id: int | None = None
    compute_instance_id: int | None = None
    kind: str = "compute"  # "compute" or "graphics"


@dataclass(frozen=True, slots=True)
class ProcessUtilization:
    """One per-process utilisation sample (not available on MIG devices)."""

    gpu_uuid: str
    pid: int
    timestamp_us: int  # CPU time of the sample, microseconds since the epoch
    sm_util: float  # percent
    mem_util: float
    enc_util: float
    dec_util: float


@dataclass(frozen=True, slots=True)
class GpmSample:
    """Profiling metrics (NVML GPM, Hopper and later) over the interval since the last call.

    ``metrics`` keys: ``graphics_engine_active``, ``sm_active``, ``sm_occupancy``,
    ``tensor_active``, ``dram_active`` (percent), ``pcie_tx_bytes_per_second``,
    ``pcie_rx_bytes_per_second``, ``nvlink_tx_bytes_per_second``,
    ``nvlink_rx_bytes_per_second``. A key is absent where the GPU lacks the metric.
    """

    uuid: str  # a GPU or MIG device
    index: str
    interval_seconds: float
    metrics: dict[str, float] = field(default_factory=dict)
    gpu_instance_id: int | None = None


@dataclass(frozen=True, slots=True)
class GpuEvent:
    """A driver event: an XID, an ECC error, or a GPU lost from the bus.

    ``kind`` is ``xid``, ``ecc_single``, ``ecc_double``, ``gpu_lost`` or ``error``
    (the event wait itself failed; ``uuid`` is then "" and the event concerns
    every GPU, which the device plugin treats as all unhealthy).
    """

    kind: str
    uuid: str = ""  # the GPU; "" when the driver did not say which
    xid: int = 0
    mig_uuid: str = ""
    gpu_instance_id: int | None = None
    compute_instance_id: int | None = None
    timestamp: float = 0.0
    message: str = ""


class GpuEventStream(Protocol):
    """Driver events, read by one thread (the health monitor)."""

    def wait(self, timeout: float) -> list[GpuEvent]:
        """Events that arrived, waiting up to ``timeout`` seconds for the first; [] on timeout."""
        ...

    def close(self) -> None:
        """Stop: a ``wait`` in progress returns soon; later waits return []."""
        ...


class GpuBackend(Protocol):
    @property
    def name(self) -> str: ...

    def open(self) -> BackendStatus:
        """Load and initialise the driver interface; idempotent, never raises."""
        ...

    def close(self) -> None: ...

    def status(self) -> BackendStatus: ...

    def driver(self) -> DriverInfo: ...

    def gpus(self) -> list[GpuInfo]:
        """The inventory: every GPU by index, with its MIG devices."""
        ...

    def samples(self) -> list[GpuSample]:
        """One reading per GPU and per MIG device, batched in one call."""
        ...

    def processes(self) -> list[GpuProcess]:
        """Compute and graphics processes on every GPU."""
        ...

    def process_utilization(self, since_us: int) -> list[ProcessUtilization]:
        """Per-process samples newer than ``since_us`` (microseconds since the epoch)."""
        ...

    def gpm_samples(self) -> list[GpmSample]:
        """GPM metrics since the previous call (the first call only primes: [])."""
        ...

    def open_events(self) -> GpuEventStream:
        """Subscribe to XID / ECC / GPU-lost events of every GPU."""
        ...


class _NoEvents:
    def __init__(self) -> None:
        self._closed = threading.Event()

    def wait(self, timeout: float) -> list[GpuEvent]:
        self._closed.wait(timeout)
        return []

    def close(self) -> None:
        self._closed.set()


class NoGpuBackend:
    """A node without GPUs (``backend = "none"``, or NVML found nothing): empty answers."""

    def __init__(self, reason: str = "GPU support disabled (gpu.backend = none)") -> None:
        self._reason = reason

    @property
    def name(self) -> str:
        return "none"

    def open(self) -> BackendStatus:
        return self.status()

    def close(self) -> None:
        pass

    def status(self) -> BackendStatus:
        return BackendStatus("none", False, self._reason, 0)

    def driver(self) -> DriverInfo:
        return DriverInfo()

    def gpus(self) -> list[GpuInfo]:
        return []

    def samples(self) -> list[GpuSample]:
        return []

    def processes(self) -> list[GpuProcess]:
        return []

    def process_utilization(self, since_us: int) -> list[ProcessUtilization]:
        return []

    def gpm_samples(self) -> list[GpmSample]:
        return []

    def open_events(self) -> GpuEventStream:
        return _NoEvents()
