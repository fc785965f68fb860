"""Every metric name the agent exports, so dashboards have one list to read.

Own metrics are ``model_agent_<subsystem>_<what>_<unit>``; GPU and container
metrics additionally use the DCGM-exporter and cAdvisor names users already
query (added by the packages that collect them).
"""

from __future__ import annotations

__all__ = [
    "BUILD_INFO",
    "CRI_OPERATIONS_IN_FLIGHT",
    "CRI_OPERATIONS_TOTAL",
    "CRI_OPERATION_DURATION_SECONDS",
    "GPU_HEALTHY",
    "IMAGE_PULLS_IN_FLIGHT",
    "IMAGE_PULLS_TOTAL",
    "IMAGE_PULL_BYTES_TOTAL",
    "IMAGE_PULL_DURATION_SECONDS",
]

BUILD_INFO = "model_agent_build_info"
CRI_OPERATIONS_TOTAL = "model_agent_cri_operations_total"
CRI_OPERATION_DURATION_SECONDS = "model_agent_cri_operation_duration_seconds"
CRI_OPERATIONS_IN_FLIGHT = "model_agent_cri_operations_in_flight"

IMAGE_PULL_BYTES_TOTAL = "model_agent_image_pull_bytes_total"
IMAGE_PULL_DURATION_SECONDS = "model_agent_image_pull_duration_seconds"
IMAGE_PULLS_IN_FLIGHT = "model_agent_image_pulls_in_flight"
IMAGE_PULLS_TOTAL = "model_agent_image_pulls_total"

#: 1/0 per GPU {gpu, UUID}: the health every kubelet path reports (agent.gpu.health).
GPU_HEALTHY = "model_agent_gpu_healthy"
