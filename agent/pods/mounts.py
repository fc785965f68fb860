"""Mounts the agent makes on the host: container overlays and pod /dev/shm.

Made with the mount(2) and umount2(2) system calls (in a thread: an overlay mount can
take a few milliseconds), not by running mount(8): a container's create and remove each
paid a process start for it (about 15 ms here). Overlay lowerdirs are absolute paths when
the options fit the one page the kernel takes; a deeper image falls back to mount(8) run
in the snapshots directory with relative lowerdirs, far below the limit. Unmounting is
idempotent and falls back to a lazy unmount when something still holds the mount, so
removal never gets stuck.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
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
#: mount(2) copies at most one page of options; leave room for the kernel's own.
_MAX_SYSCALL_OPTIONS = 3800
_MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 0x2, 0x4, 0x8
_MNT_DETACH = 0x2
_libc = ctypes.CDLL(None, use_errno=True)


def _mount(source: str, target: str, fstype: str, flags: int, options: str) -> None:
    if _libc.mount(source.encode(), target.encode(), fstype.encode(), flags, options.encode()):
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), target)


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
    absolute = ":".join(os.path.join(lower_root, lower) for lower in lowers)
    options = f"lowerdir={absolute},upperdir={upper},workdir={work}"
    if len(options) <= _MAX_SYSCALL_OPTIONS:
        try:
            await asyncio.to_thread(_mount, "overlay", target, "overlay", 0, options)
        except OSError as exc:
            raise AgentError(f"mount the container rootfs at {target}: {exc.strerror}") from None
        return
    relative = f"lowerdir={':'.join(lowers)},upperdir={upper},workdir={work}"
    if len(relative) > 4000:
        raise AgentError(f"overlay options for {target} are too long ({len(relative)} bytes)")
    try:
        await run(
            ["mount", "-t", "overlay", "overlay", "-o", relative, target],
            cwd=lower_root,
            timeout=_TIMEOUT,
        )
    except CommandFailed as exc:
        raise AgentError(f"mount the container rootfs at {target}: {exc}") from None


async def mount_tmpfs(target: str, *, size: str, mode: str) -> None:
    flags = _MS_NOSUID | _MS_NODEV | _MS_NOEXEC
    try:
        await asyncio.to_thread(_mount, "shm", target, "tmpfs", flags, f"mode={mode},size={size}")
    except OSError as exc:
        raise AgentError(f"mount tmpfs at {target}: {exc.strerror}") from None


def _unmount(target: str) -> None:
    if _libc.umount2(target.encode(), 0) == 0:
        return
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOENT):
        return  # not a mount point (any more), or gone: nothing to do
    if err == errno.EBUSY and _libc.umount2(target.encode(), _MNT_DETACH) == 0:
        return  # still held (a process cwd, an open file): detach it, freed when unused
    err = ctypes.get_errno()
    raise OSError(err, os.strerror(err), target)


async def unmount(target: str) -> None:
    """Unmount ``target`` if it is a mount point (lazily if busy); missing is fine."""
    try:
        await asyncio.to_thread(_unmount, target)
    except OSError as exc:
        raise AgentError(f"unmount {target}: {exc.strerror}") from None


class Mounter(Protocol):
    """The mounts the pods managers make (a seam, so their unit tests need no root)."""

    async def overlay(
        self, target: str, *, lower_root: str, lowers: Sequence[str], upper: str, work: str
    ) -> None: ...

    async def tmpfs(self, target: str, *, size: str, mode: str) -> None: ...

    async def unmount(self, target: str) -> None: ...


class HostMounter:
    """The real thing: mount(2)/umount2(2) on the host."""

    async def overlay(
        self, target: str, *, lower_root: str, lowers: Sequence[str], upper: str, work: str
    ) -> None:
        await mount_overlay(target, lower_root=lower_root, lowers=lowers, upper=upper, work=work)

    async def tmpfs(self, target: str, *, size: str, mode: str) -> None:
        await mount_tmpfs(target, size=size, mode=mode)

    async def unmount(self, target: str) -> None:
        await unmount(target)


HOST: Mounter = HostMounter()
