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
    "bind_special",
    "idmapped_mounts_supported",
    "is_mounted",
    "mount_overlay",
    "mount_tmpfs",
    "mounts_under",
    "recursive_readonly_supported",
    "unmount",
    "unmount_tree",
]

_TIMEOUT = 30.0
#: mount(2) copies at most one page of options; leave room for the kernel's own.
_MAX_SYSCALL_OPTIONS = 3800
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 0x1, 0x2, 0x4, 0x8
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
    """Mount ``lowers`` (top-most first, relative to ``lower_root``) under ``upper``.

    Without ``upper`` (an image volume) the overlay is read-only, nosuid and nodev.
    """
    if not lowers:
        raise AgentError("an image needs at least one layer")
    writable = f",upperdir={upper},workdir={work}" if upper else ""
    flags = 0 if upper else _MS_RDONLY | _MS_NOSUID | _MS_NODEV
    absolute = ":".join(os.path.join(lower_root, lower) for lower in lowers)
    options = f"lowerdir={absolute}{writable}"
    if len(options) <= _MAX_SYSCALL_OPTIONS:
        try:
            await asyncio.to_thread(_mount, "overlay", target, "overlay", flags, options)
        except OSError as exc:
            raise AgentError(f"mount an overlay at {target}: {exc.strerror}") from None
        return
    relative = f"lowerdir={':'.join(lowers)}{writable}"
    if len(relative) > 4000:
        raise AgentError(f"overlay options for {target} are too long ({len(relative)} bytes)")
    try:
        extra = "" if upper else ",ro,nosuid,nodev"
        await run(
            ["mount", "-t", "overlay", "overlay", "-o", relative + extra, target],
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


# -- the new mount API (Linux >= 5.12; idmapped overlay layers need >= 5.19) ----------------
#
# runc 1.1 cannot make id-mapped or recursive read-only mounts from the spec, so the agent
# makes them (as containerd does for its snapshots): open_tree(2) clones a tree,
# mount_setattr(2) makes it read-only or id-mapped (recursively), move_mount(2) attaches
# it where runc then bind-mounts it from.

_SYS_OPEN_TREE, _SYS_MOVE_MOUNT, _SYS_MOUNT_SETATTR = 428, 429, 442  # the same on all arches
_OPEN_TREE_CLONE, _OPEN_TREE_CLOEXEC = 0x1, 0o2000000
_AT_FDCWD, _AT_EMPTY_PATH, _AT_RECURSIVE = -100, 0x1000, 0x8000
_MOVE_MOUNT_F_EMPTY_PATH = 0x4
_MOUNT_ATTR_RDONLY, _MOUNT_ATTR_IDMAP = 0x1, 0x100000


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def _check(result: int, what: str, path: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}", path)
    return result


def _attached_clone(
    source: str, target: str, *, readonly: bool, userns: str | None, recursive: bool
) -> None:
    flags = _OPEN_TREE_CLONE | _OPEN_TREE_CLOEXEC | (_AT_RECURSIVE if recursive else 0)
    tree = _check(
        _libc.syscall(_SYS_OPEN_TREE, _AT_FDCWD, source.encode(), flags), "open_tree", source
    )
    userns_fd = os.open(userns, os.O_RDONLY | os.O_CLOEXEC) if userns else -1
    try:
        attr = _MountAttr(
            (_MOUNT_ATTR_RDONLY if readonly else 0) | (_MOUNT_ATTR_IDMAP if userns else 0),
            0,
            0,
            max(userns_fd, 0),
        )
        setattr_flags = _AT_EMPTY_PATH | (_AT_RECURSIVE if recursive else 0)
        _check(
            _libc.syscall(
                _SYS_MOUNT_SETATTR,
                tree,
                b"",
                setattr_flags,
                ctypes.byref(attr),
                ctypes.sizeof(attr),
            ),
            "mount_setattr",
            source,
        )
        _check(
            _libc.syscall(
                _SYS_MOVE_MOUNT, tree, b"", _AT_FDCWD, target.encode(), _MOVE_MOUNT_F_EMPTY_PATH
            ),
            "move_mount",
            target,
        )
    finally:
        os.close(tree)
        if userns_fd >= 0:
            os.close(userns_fd)


async def bind_special(
    source: str,
    target: str,
    *,
    readonly: bool = False,
    userns: str = "",
    recursive: bool = True,
) -> None:
    """Bind ``source`` at ``target`` (a new empty dir or file), read-only on every submount
    (``readonly``) and/or id-mapped through the user namespace pinned at ``userns``."""
    try:
        await asyncio.to_thread(
            _attached_clone,
            source,
            target,
            readonly=readonly,
            userns=userns or None,
            recursive=recursive,
        )
    except OSError as exc:
        what = "id-mapped " if userns else ""
        raise AgentError(f"{what}bind {source} at {target}: {exc.strerror}") from None


def mounts_under(path: str) -> list[str]:
    """Mount points at or below ``path``, deepest first (the order to unmount them)."""
    real = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    inside = [p for p in points if p == real or p.startswith(real + "/")]
    return sorted(set(inside), key=lambda p: p.count("/"), reverse=True)


async def unmount_tree(path: str) -> None:
    """Unmount everything mounted at or below ``path`` (a container's staging dirs)."""
    for point in mounts_under(path):
        await unmount(point)


def _kernel_at_least(major: int, minor: int) -> bool:
    try:
        have = tuple(int(p) for p in os.uname().release.split("-")[0].split(".")[:2])
    except ValueError:
        return False
    return have >= (major, minor)


def idmapped_mounts_supported() -> bool:
    """Can this kernel id-map the layers of an overlay (Linux >= 5.19)?"""
    return _kernel_at_least(5, 19)


def recursive_readonly_supported() -> bool:
    """Can this kernel make a mount tree read-only in one call (mount_setattr, 5.12)?"""
    return _kernel_at_least(5, 12)


class Mounter(Protocol):
    """The mounts the pods managers make (a seam, so their unit tests need no root)."""

    async def overlay(
        self, target: str, *, lower_root: str, lowers: Sequence[str], upper: str, work: str
    ) -> None: ...

    async def tmpfs(self, target: str, *, size: str, mode: str) -> None: ...

    async def unmount(self, target: str) -> None: ...

    async def bind_special(
        self, source: str, target: str, *, readonly: bool = False, userns: str = ""
    ) -> None: ...

    async def unmount_tree(self, path: str) -> None: ...


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

    async def bind_special(
        self, source: str, target: str, *, readonly: bool = False, userns: str = ""
    ) -> None:
        await bind_special(source, target, readonly=readonly, userns=userns)

    async def unmount_tree(self, path: str) -> None:
        await unmount_tree(path)


HOST: Mounter = HostMounter()
