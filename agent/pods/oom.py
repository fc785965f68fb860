"""oom_score_adj requests the agent may not be allowed to honour.

Lowering a process's oom_score_adj below its parent's needs CAP_SYS_RESOURCE;
without it runc fails the container (the kubelet asks -998 for sandboxes).
Like containerd's ``restrict_oom_score_adj``, requests below the agent's own
score are raised to it, and logged once per value.
"""

from __future__ import annotations

import logging

__all__ = ["OomPolicy", "has_cap_sys_resource"]

log = logging.getLogger(__name__)
_CAP_SYS_RESOURCE = 24


def has_cap_sys_resource() -> bool:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> _CAP_SYS_RESOURCE & 1)
    except (OSError, ValueError):
        pass
    return False


def _own_score() -> int:
    try:
        with open("/proc/self/oom_score_adj") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return 0


class OomPolicy:
    def __init__(self, restrict: bool) -> None:
        self.restrict = restrict
        self.floor = _own_score() if restrict else -1000
        self._warned: set[int] = set()

    def clamp(self, requested: int) -> int:
        if requested >= self.floor:
            return requested
        if requested not in self._warned:
            self._warned.add(requested)
            log.info(
                "oom_score_adj %d raised to %d (the agent's own; no CAP_SYS_RESOURCE)",
                requested,
                self.floor,
            )
        return self.floor
