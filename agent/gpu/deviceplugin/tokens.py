"""Allocation tokens: how the env fallback proves the agent itself allocated a GPU.

``Allocate`` puts ``MODEL_AGENT_GPU_ALLOCATION=<token>`` next to
``NVIDIA_VISIBLE_DEVICES`` into the container's environment. The token is 128 random
bits recorded in the database (``device_plugin_allocations``) with the devices it
stands for, so it survives agent restarts (the kubelet re-creates a crashed container
from its own checkpoint, without calling ``Allocate`` again). At ``CreateContainer``,
``devices_for`` answers the UUIDs of the token the container carries — the only ones
``NVIDIA_VISIBLE_DEVICES`` may grant under the secure default. A missing or unknown
token grants nothing; a token is bound to the first pod that uses it (the kubelet's
``io.kubernetes.pod.uid`` label), and another pod presenting it is refused and logged.
Tokens never used within a day, and tokens idle for 30 days whose pod holds no GPU,
are pruned. Imports ``db`` only.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Mapping, Sequence

from agent.db import DevicePluginAllocation, MetadataDB

__all__ = ["ALLOCATION_ENV", "POD_UID_LABEL", "AllocationTokens"]

log = logging.getLogger(__name__)

ALLOCATION_ENV = "MODEL_AGENT_GPU_ALLOCATION"
POD_UID_LABEL = "io.kubernetes.pod.uid"
UNUSED_TTL = 24 * 3600
IDLE_TTL = 30 * 24 * 3600


class AllocationTokens:
    def __init__(self, db: MetadataDB) -> None:
        self._db = db

    def issue(self, resource: str, device_ids: Sequence[str], uuids: Sequence[str]) -> str:
        token = secrets.token_hex(16)
        self._db.put_device_allocation(
            DevicePluginAllocation(
                token=token,
                resource=resource,
                device_ids=tuple(device_ids),
                device_uuids=tuple(uuids),
                pod_uid="",
                created_at=int(time.time()),
                used_at=0,
            )
        )
        return token

    def devices_for(self, env: Mapping[str, str], labels: Mapping[str, str]) -> frozenset[str]:
        """The UUIDs the container's token stands for (empty: no token, or not honoured)."""
        token = env.get(ALLOCATION_ENV, "").strip()
        if not token:
            return frozenset()
        allocation = self._db.device_allocation(token)
        if allocation is None:
            log.warning(
                "GPU allocation token %s…: not issued by this agent; nothing granted", token[:8]
            )
            return frozenset()
        pod = labels.get(POD_UID_LABEL, "")
        if allocation.pod_uid and pod != allocation.pod_uid:
            log.warning(
                "GPU allocation token %s… of pod %s presented by pod %s: nothing granted",
                token[:8],
                allocation.pod_uid,
                pod or "(no pod UID)",
            )
            return frozenset()
        self._db.use_device_allocation(token, pod, int(time.time()))
        return frozenset(allocation.device_uuids)

    def prune(self) -> int:
        now = int(time.time())
        return self._db.prune_device_allocations(
            unused_before=now - UNUSED_TTL, idle_before=now - IDLE_TTL
        )
