"""Every metric name the agent exports, so dashboards, alerts and the chart have one list.

Own metrics are ``model_agent_<subsystem>_<what>_<unit>`` in base units. GPU
metrics are also exported under the DCGM-exporter names (``DCGM``) and container
metrics under the cAdvisor names (``agent.metrics.cadvisor.DESCRIPTORS``), which
existing dashboards and autoscaling recipes already query. The README's
"Metrics" section lists each with its labels. Imports nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "BUILD_INFO",
    "CONTAINERS",
    "CONTAINER_OOM_KILLS_TOTAL",
    "CONTAINER_START_DURATION_SECONDS",
    "CRI_OPERATIONS_IN_FLIGHT",
    "CRI_OPERATIONS_TOTAL",
    "CRI_OPERATION_DURATION_SECONDS",
    "CRI_STREAM_MESSAGES_TOTAL",
    "DCGM",
    "DCGM_LABELS",
    "DCGM_LINT_EXCEPTIONS",
    "DRA_LABELS",
    "GPU",
    "GPU_CONTAINER_MEMORY_USED_BYTES",
    "GPU_CONTAINER_PROCESSES",
    "GPU_CONTAINER_UTILIZATION_RATIO",
    "GPU_HEALTHY",
    "GPU_INFO",
    "GPU_LABELS",
    "GPU_PROCESS_UTILIZATION_SUPPORTED",
    "GPU_UNATTRIBUTED_MEMORY_USED_BYTES",
    "GPU_XID_ERRORS_TOTAL",
    "HOLDER_LABELS",
    "IMAGES",
    "IMAGE_PULLS_IN_FLIGHT",
    "IMAGE_PULLS_TOTAL",
    "IMAGE_PULL_BYTES_TOTAL",
    "IMAGE_PULL_DURATION_SECONDS",
    "IMAGE_STORE_BYTES",
    "METRICS_COLLECT_DURATION_SECONDS",
    "METRICS_COLLECT_ERRORS_TOTAL",
    "METRICS_REQUESTS_TOTAL",
    "PODS",
    "POD_COLD_START_DURATION_SECONDS",
    "RECOVERED_OBJECTS",
    "RECOVERY_DURATION_SECONDS",
    "RESTARTS_TOTAL",
    "Field",
]

# -- the agent itself ---------------------------------------------------------------------

BUILD_INFO = "model_agent_build_info"
RESTARTS_TOTAL = "model_agent_restarts_total"
RECOVERY_DURATION_SECONDS = "model_agent_recovery_duration_seconds"
RECOVERED_OBJECTS = "model_agent_recovered_objects"
METRICS_REQUESTS_TOTAL = "model_agent_metrics_requests_total"
METRICS_COLLECT_DURATION_SECONDS = "model_agent_metrics_collect_duration_seconds"
METRICS_COLLECT_ERRORS_TOTAL = "model_agent_metrics_collect_errors_total"

# -- the CRI --------------------------------------------------------------------------------

CRI_OPERATIONS_TOTAL = "model_agent_cri_operations_total"
CRI_OPERATION_DURATION_SECONDS = "model_agent_cri_operation_duration_seconds"
CRI_OPERATIONS_IN_FLIGHT = "model_agent_cri_operations_in_flight"
CRI_STREAM_MESSAGES_TOTAL = "model_agent_cri_stream_messages_total"

# -- pods and containers --------------------------------------------------------------------

PODS = "model_agent_pods"
CONTAINERS = "model_agent_containers"
CONTAINER_START_DURATION_SECONDS = "model_agent_container_start_duration_seconds"
POD_COLD_START_DURATION_SECONDS = "model_agent_pod_cold_start_duration_seconds"
CONTAINER_OOM_KILLS_TOTAL = "model_agent_container_oom_kills_total"

# -- images ---------------------------------------------------------------------------------

IMAGE_PULL_BYTES_TOTAL = "model_agent_image_pull_bytes_total"
IMAGE_PULL_DURATION_SECONDS = "model_agent_image_pull_duration_seconds"
IMAGE_PULLS_IN_FLIGHT = "model_agent_image_pulls_in_flight"
IMAGE_PULLS_TOTAL = "model_agent_image_pulls_total"
IMAGE_STORE_BYTES = "model_agent_image_store_bytes"
IMAGES = "model_agent_images"

# -- GPUs -----------------------------------------------------------------------------------

#: Labels of every per-device GPU series, DCGM-exporter's (in its order) then the DRA ones.
#: ``gpu`` is the GPU's index (a MIG device's parent), ``UUID`` the physical GPU's,
#: ``device`` its node (``nvidia0``); ``GPU_I_PROFILE``/``GPU_I_ID`` are set on MIG devices.
DCGM_LABELS = (
    "gpu",
    "UUID",
    "pci_bus_id",
    "device",
    "modelName",
    "Hostname",
    "DCGM_FI_DRIVER_VERSION",
    "GPU_I_PROFILE",
    "GPU_I_ID",
)
#: The holder of the device (empty when none, or when containers of several pods share it).
HOLDER_LABELS = ("namespace", "pod", "container")
#: Set when the holder got the device through a DRA ResourceClaim.
DRA_LABELS = (
    "dra_claim_name",
    "dra_claim_namespace",
    "dra_driver_name",
    "dra_pool_name",
    "dra_device_name",
)
#: The agent's own GPU families carry the same labels, but the model as ``model_name``:
#: Prometheus's lint (``promtool check metrics``) refuses camelCase label names.
GPU_LABELS = tuple("model_name" if x == "modelName" else x for x in DCGM_LABELS)

GPU_INFO = "model_agent_gpu_info"
GPU_HEALTHY = "model_agent_gpu_healthy"
GPU_XID_ERRORS_TOTAL = "model_agent_gpu_xid_errors_total"
GPU_PROCESS_UTILIZATION_SUPPORTED = "model_agent_gpu_process_utilization_supported"
GPU_UNATTRIBUTED_MEMORY_USED_BYTES = "model_agent_gpu_unattributed_memory_used_bytes"
GPU_CONTAINER_MEMORY_USED_BYTES = "model_agent_gpu_container_memory_used_bytes"
GPU_CONTAINER_UTILIZATION_RATIO = "model_agent_gpu_container_utilization_ratio"
GPU_CONTAINER_PROCESSES = "model_agent_gpu_container_processes"


@dataclass(frozen=True, slots=True)
class Field:
    """One per-device reading: its name, help, type, and the factor from the backend's unit."""

    name: str
    help: str
    source: str  # a GpuSample attribute, or "gpm:<key>" for a GPM metric
    scale: float = 1.0
    counter: bool = False
    extra_label: tuple[str, str] = ("", "")  # (label, value) for families split by a label


_MIB = 1 / (1024 * 1024)

#: DCGM-exporter's default counters (etc/default-counters.csv), in DCGM's units, and the
#: profiling fields NVML's GPM gives (Hopper and later). DCGM's counters are exposed
#: untyped: a Prometheus client names every counter ``*_total``, DCGM's names have no suffix.
DCGM: tuple[Field, ...] = (
    Field("DCGM_FI_DEV_SM_CLOCK", "SM clock frequency (in MHz).", "sm_clock_mhz"),
    Field("DCGM_FI_DEV_MEM_CLOCK", "Memory clock frequency (in MHz).", "mem_clock_mhz"),
    Field("DCGM_FI_DEV_MEMORY_TEMP", "Memory temperature (in C).", "memory_temp_c"),
    Field("DCGM_FI_DEV_GPU_TEMP", "GPU temperature (in C).", "gpu_temp_c"),
    Field("DCGM_FI_DEV_POWER_USAGE", "Power draw (in W).", "power_watts"),
    Field(
        "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
        "Total energy consumption since boot (in mJ).",
        "energy_joules",
        1000.0,
        counter=True,
    ),
    Field(
        "DCGM_FI_DEV_PCIE_REPLAY_COUNTER",
        "Total number of PCIe retries.",
        "pcie_replay_count",
        counter=True,
    ),
    Field("DCGM_FI_DEV_GPU_UTIL", "GPU utilization (in %).", "gpu_util"),
    Field("DCGM_FI_DEV_MEM_COPY_UTIL", "Memory utilization (in %).", "mem_copy_util"),
    Field("DCGM_FI_DEV_ENC_UTIL", "Encoder utilization (in %).", "enc_util"),
    Field("DCGM_FI_DEV_DEC_UTIL", "Decoder utilization (in %).", "dec_util"),
    Field("DCGM_FI_DEV_XID_ERRORS", "Value of the last XID error encountered.", "last_xid"),
    Field("DCGM_FI_DEV_FB_FREE", "Framebuffer memory free (in MiB).", "memory_free", _MIB),
    Field("DCGM_FI_DEV_FB_USED", "Framebuffer memory used (in MiB).", "memory_used", _MIB),
    Field(
        "DCGM_FI_DEV_FB_RESERVED",
        "Framebuffer memory reserved (in MiB).",
        "memory_reserved",
        _MIB,
    ),
    Field(
        "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS",
        "Number of remapped rows for uncorrectable errors.",
        "remapped_rows_uncorrectable",
        counter=True,
    ),
    Field(
        "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS",
        "Number of remapped rows for correctable errors.",
        "remapped_rows_correctable",
        counter=True,
    ),
    Field(
        "DCGM_FI_DEV_ROW_REMAP_FAILURE",
        "Whether remapping of rows has failed.",
        "remap_failure",
    ),
    Field(
        "DCGM_FI_PROF_GR_ENGINE_ACTIVE",
        "Ratio of time the graphics engine is active.",
        "gpm:graphics_engine_active",
        0.01,
    ),
    Field(
        "DCGM_FI_PROF_SM_ACTIVE",
        "The ratio of cycles an SM has at least 1 warp assigned.",
        "gpm:sm_active",
        0.01,
    ),
    Field(
        "DCGM_FI_PROF_SM_OCCUPANCY",
        "The ratio of number of warps resident on an SM.",
        "gpm:sm_occupancy",
        0.01,
    ),
    Field(
        "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE",
        "Ratio of cycles the tensor (HMMA) pipe is active.",
        "gpm:tensor_active",
        0.01,
    ),
    Field(
        "DCGM_FI_PROF_DRAM_ACTIVE",
        "Ratio of cycles the device memory interface is active sending or receiving data.",
        "gpm:dram_active",
        0.01,
    ),
    Field(
        "DCGM_FI_PROF_PCIE_TX_BYTES",
        "The rate of data transmitted over the PCIe bus - including both protocol headers "
        "and data payloads - in bytes per second.",
        "gpm:pcie_tx_bytes_per_second",
    ),
    Field(
        "DCGM_FI_PROF_PCIE_RX_BYTES",
        "The rate of data received over the PCIe bus - including both protocol headers and "
        "data payloads - in bytes per second.",
        "gpm:pcie_rx_bytes_per_second",
    ),
    Field(
        "DCGM_FI_PROF_NVLINK_TX_BYTES",
        "The rate of data transmitted over NVLink, not including protocol headers, in bytes "
        "per second.",
        "gpm:nvlink_tx_bytes_per_second",
    ),
    Field(
        "DCGM_FI_PROF_NVLINK_RX_BYTES",
        "The rate of data received over NVLink, not including protocol headers, in bytes per "
        "second.",
        "gpm:nvlink_rx_bytes_per_second",
    ),
)

#: What ``promtool check metrics`` says about DCGM-exporter's own names, kept because
#: dashboards query them as they are (``metrics.dcgm_names = false`` drops them).
DCGM_LINT_EXCEPTIONS = frozenset(
    {
        "label names should be written in 'snake_case' not 'camelCase'",  # modelName
        "metric name should not include type 'counter'",  # DCGM_FI_DEV_PCIE_REPLAY_COUNTER
    }
)

#: The agent's own per-device families, in base units, with ``GPU_LABELS``.
GPU: tuple[Field, ...] = (
    Field(
        "model_agent_gpu_utilization_ratio",
        "Fraction of the last sample period a kernel ran on the GPU (NVML duty cycle).",
        "gpu_util",
        0.01,
    ),
    Field(
        "model_agent_gpu_memory_copy_utilization_ratio",
        "Fraction of the last sample period device memory was read or written.",
        "mem_copy_util",
        0.01,
    ),
    Field(
        "model_agent_gpu_encoder_utilization_ratio",
        "Video encoder utilisation.",
        "enc_util",
        0.01,
    ),
    Field(
        "model_agent_gpu_decoder_utilization_ratio",
        "Video decoder utilisation.",
        "dec_util",
        0.01,
    ),
    Field("model_agent_gpu_memory_total_bytes", "Device memory in total.", "memory_total"),
    Field("model_agent_gpu_memory_used_bytes", "Device memory in use.", "memory_used"),
    Field("model_agent_gpu_memory_free_bytes", "Device memory free.", "memory_free"),
    Field(
        "model_agent_gpu_memory_reserved_bytes",
        "Device memory the driver reserves.",
        "memory_reserved",
    ),
    Field("model_agent_gpu_power_watts", "Power draw.", "power_watts"),
    Field(
        "model_agent_gpu_energy_joules_total",
        "Energy consumed since the driver loaded.",
        "energy_joules",
        counter=True,
    ),
    Field("model_agent_gpu_temperature_celsius", "GPU core temperature.", "gpu_temp_c"),
    Field(
        "model_agent_gpu_memory_temperature_celsius",
        "Device memory temperature.",
        "memory_temp_c",
    ),
    Field("model_agent_gpu_sm_clock_hertz", "SM clock frequency.", "sm_clock_mhz", 1e6),
    Field("model_agent_gpu_memory_clock_hertz", "Memory clock frequency.", "mem_clock_mhz", 1e6),
    Field(
        "model_agent_gpu_pcie_replays_total",
        "PCIe replays (retries) since the driver loaded.",
        "pcie_replay_count",
        counter=True,
    ),
    Field(
        "model_agent_gpu_remapped_rows_total",
        "Memory rows remapped, by the kind of error that caused it.",
        "remapped_rows_correctable",
        counter=True,
        extra_label=("error_type", "correctable"),
    ),
    Field(
        "model_agent_gpu_remapped_rows_total",
        "Memory rows remapped, by the kind of error that caused it.",
        "remapped_rows_uncorrectable",
        counter=True,
        extra_label=("error_type", "uncorrectable"),
    ),
    Field(
        "model_agent_gpu_row_remap_pending",
        "1 when a row remap waits for the next GPU reset.",
        "remap_pending",
    ),
    Field(
        "model_agent_gpu_row_remap_failed",
        "1 when a row remap failed (the GPU needs service).",
        "remap_failure",
    ),
    Field(
        "model_agent_gpu_ecc_errors_total",
        "ECC errors, by error type and counter (volatile: since the driver loaded).",
        "ecc_corrected_volatile",
        counter=True,
        extra_label=("error_type", "corrected_volatile"),
    ),
    Field(
        "model_agent_gpu_ecc_errors_total",
        "ECC errors, by error type and counter (volatile: since the driver loaded).",
        "ecc_uncorrected_volatile",
        counter=True,
        extra_label=("error_type", "uncorrected_volatile"),
    ),
    Field(
        "model_agent_gpu_ecc_errors_total",
        "ECC errors, by error type and counter (volatile: since the driver loaded).",
        "ecc_corrected_aggregate",
        counter=True,
        extra_label=("error_type", "corrected_aggregate"),
    ),
    Field(
        "model_agent_gpu_ecc_errors_total",
        "ECC errors, by error type and counter (volatile: since the driver loaded).",
        "ecc_uncorrected_aggregate",
        counter=True,
        extra_label=("error_type", "uncorrected_aggregate"),
    ),
    Field(
        "model_agent_gpu_graphics_engine_active_ratio",
        "Fraction of time the graphics/compute engine was active (GPM).",
        "gpm:graphics_engine_active",
        0.01,
    ),
    Field(
        "model_agent_gpu_sm_active_ratio",
        "Fraction of cycles an SM had at least one warp assigned (GPM).",
        "gpm:sm_active",
        0.01,
    ),
    Field(
        "model_agent_gpu_sm_occupancy_ratio",
        "Resident warps as a fraction of the SMs' maximum (GPM).",
        "gpm:sm_occupancy",
        0.01,
    ),
    Field(
        "model_agent_gpu_tensor_active_ratio",
        "Fraction of cycles the tensor pipe was active (GPM).",
        "gpm:tensor_active",
        0.01,
    ),
    Field(
        "model_agent_gpu_dram_active_ratio",
        "Fraction of cycles the memory interface was active (GPM).",
        "gpm:dram_active",
        0.01,
    ),
    Field(
        "model_agent_gpu_pcie_transmit_bytes_per_second",
        "PCIe transmit rate over the last GPM interval.",
        "gpm:pcie_tx_bytes_per_second",
    ),
    Field(
        "model_agent_gpu_pcie_receive_bytes_per_second",
        "PCIe receive rate over the last GPM interval.",
        "gpm:pcie_rx_bytes_per_second",
    ),
    Field(
        "model_agent_gpu_nvlink_transmit_bytes_per_second",
        "NVLink transmit rate over the last GPM interval.",
        "gpm:nvlink_tx_bytes_per_second",
    ),
    Field(
        "model_agent_gpu_nvlink_receive_bytes_per_second",
        "NVLink receive rate over the last GPM interval.",
        "gpm:nvlink_rx_bytes_per_second",
    ),
)
