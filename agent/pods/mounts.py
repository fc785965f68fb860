"""Mounts the agent makes on the host: container overlays and pod /dev/shm.

Overlay lowerdirs are passed relative to the snapshots directory (the mount
runs there), so a deep image stays far below the one-page limit on mount
options. Unmounting is idempotent and falls back to a lazy unmount when
something still holds the mount, so removal never gets stuck.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Protocol

from agent._util.proc import CommandFailed, run
from agent.errors import AgentError

__all__ = [
    "HOST",
    "HostMounter",
    "Mounter",
    "is_mounted",
    "mount_overlay",
    "mount_tmpfs",
    "unmount",
]

_TIMEOUT = 30.0


def is_mounted(path: str) -> bool:
    """True if ``path`` is a mount point (missing paths are not)."""
    real = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == real for line in f)


async def mount_overlay(
    target: str, *, lower_root: str, lowers: Sequence[str], upper: str, work: str
) -> None:
    """Mount ``lowers`` (top-most first, relative to ``lower_root``) under ``upper``."""
    if not lowers:
        raise AgentError("an image needs at least one layer")
    options = f"lowerdir={':'.join(lowers)},upperdir={upper},workdir={work}"
    if len(options) > 4000:
        raise AgentError(f"overlay options for {target} are too long ({len(options)} bytes)")
    try:
        await run(
            ["mount", "-t", "overlay", "overlay", "-o", options, target],
            cwd=lower_root,
            timeout=_TIMEOUT,
        )
    except CommandFailed as exc:
        raise AgentError(f"mount the container rootfs at {target}: {exc}") from None


async def mount_tmpfs(target: str, *, size: str, mode: str) -> None:
    try:
        await run(
            [
                "mount",
                "-t",
                "tmpfs",
                "-o",
                f"rw,nosuid,nodev,noexec,mode={mode},size={size}",
                "shm",
                target,
            ],
            timeout=_TIMEOUT,
        )
    except CommandFailed as exc:
        raise AgentError(f"mount tmpfs at {target}: {exc}") from None


async def unmount(target: str) -> None:
    """Unmount ``target`` if it is a mount point (lazily if busy); missing is fine."""
    if not is_mounted(target):
        return
    try:
        await run(["umount", target], timeout=_TIMEOUT)
    except CommandFailed:
        await run(["umount", "-l", target], timeout=_TIMEOUT, check=False)


class Mounter(Protocol):
    """The mounts the pods managers make (a seam, so their unit tests need no root)."""

    async def overlay(
        self, target: str, *, lower_root: str, lowers: Sequence[str], upper: str, work: str
    ) -> None: ...

    async def tmpfs(self, target: str, *, size: str, mode: str) -> None: ...

    async def unmount(self, target: str) -> None: ...


class HostMounter:
    """The real thing: ``mount``/``umount`` on the host."""

    async def overlay(
        self, target: str, *, lower_root: str, lowers: Sequence[str], upper: str, work: str
    ) -> None:
        await mount_overlay(target, lower_root=lower_root, lowers=lowers, upper=upper, work=work)

    async def tmpfs(self, target: str, *, size: str, mode: str) -> None:
        await mount_tmpfs(target, size=size, mode=mode)

    async def unmount(self, target: str) -> None:
        await unmount(target)


HOST: Mounter = HostMounter()
