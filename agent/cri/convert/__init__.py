"""Pure conversions between CRI protobuf messages and domain values, one module per family.

``<thing>_from_pb`` and ``<thing>_to_pb``; nothing here does I/O. Requests
are validated on the way in (``cri.validate``) and bad input is
``INVALID_ARGUMENT`` naming the field.
"""

from agent.cri.convert.containers import (
    container_config_from_pb,
    container_selector,
    container_status_to_pb,
    container_to_pb,
    container_verbose_info,
)
from agent.cri.convert.events import event_to_pb
from agent.cri.convert.images import (
    credentials_from_pb,
    fs_usage_to_pb,
    image_to_pb,
    image_verbose_info,
)
from agent.cri.convert.resources import MIN_MEMORY_LIMIT, resources_from_pb, resources_to_pb
from agent.cri.convert.sandboxes import (
    sandbox_config_from_pb,
    sandbox_selector,
    sandbox_status_to_pb,
    sandbox_to_pb,
    sandbox_verbose_info,
)
from agent.cri.convert.stats import (
    container_stats_to_pb,
    descriptors_to_pb,
    pod_metrics_to_pb,
    pod_stats_to_pb,
)

__all__ = [
    "MIN_MEMORY_LIMIT",
    "container_config_from_pb",
    "container_selector",
    "container_stats_to_pb",
    "container_status_to_pb",
    "container_to_pb",
    "container_verbose_info",
    "credentials_from_pb",
    "descriptors_to_pb",
    "event_to_pb",
    "fs_usage_to_pb",
    "image_to_pb",
    "image_verbose_info",
    "pod_metrics_to_pb",
    "pod_stats_to_pb",
    "resources_from_pb",
    "resources_to_pb",
    "sandbox_config_from_pb",
    "sandbox_selector",
    "sandbox_status_to_pb",
    "sandbox_to_pb",
    "sandbox_verbose_info",
]
