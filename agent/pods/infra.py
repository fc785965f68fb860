"""The pod infra process's root filesystem, built by the agent itself.

Every pod runs ``catatonit -P`` (a statically linked init that only waits)
to hold its IPC, UTS and PID namespaces. Its root is a read-only directory
with nothing but that binary and mount points, made once under the root
dir: no pause image to pull from a registry.
"""

from __future__ import annotations

import os
import shutil

from agent.errors import AgentError
from agent.oci import resolve_binary

__all__ = ["ensure_infra_rootfs"]


def ensure_infra_rootfs(root_dir: str, binary: str) -> str:
    """The infra rootfs path, created (atomically) if missing."""
    target = os.path.join(root_dir, "infra", "rootfs")
    path = resolve_binary(binary)
    if path is None:
        raise AgentError(f"the pod infra binary '{binary}' was not found (install catatonit)")
    marker = os.path.join(target, "catatonit")
    if os.path.exists(marker) and os.path.getsize(marker) == os.path.getsize(path):
        return target
    staging = target + ".new"
    shutil.rmtree(staging, ignore_errors=True)
    for name in ("dev", "proc", "sys", "etc", "tmp"):
        os.makedirs(os.path.join(staging, name), mode=0o755)
    shutil.copy2(path, os.path.join(staging, "catatonit"))
    os.chmod(os.path.join(staging, "catatonit"), 0o755)
    if os.path.exists(target):
        shutil.rmtree(target)
    os.rename(staging, target)
    return target
