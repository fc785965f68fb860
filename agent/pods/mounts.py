"""Mounts the agent makes on the host: container overlays and pod /dev/shm.

Made with the mount(2) and umount2(2) system calls (in a thread: an overlay mount can
take a few milliseconds), not by running mount(8): a container's create and remove each
paid a process start for it (about 15 ms here). Overlay lowerdirs are absolute paths when
the options fit the one page the kernel takes; a deeper image falls back to mount(8) run
in the snapshots directory with relative lowerdirs, far below the limit. Unmounting is
idempotent and falls back to a lazy unmount when something still holds the mount, so
removal never gets stuck. Special binds (read-only on every submount, ``nosuid,nodev``,
id-mapped) go through the new mount API (``open_tree``, ``mount_setattr``,
``move_mount``), and a probe at start tells whether id-mapped mounts work here.

Size: the mount system calls, the mounts made with them and the probe of what the
kernel and the store's filesystem can id-map share the same ctypes wrappers.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import os
import re
from collections.abc import Sequence
from typing import Protocol

from agent._util.proc import CommandFailed, run, spawn
from agent.errors import AgentError, FailedPrecondition

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
    "probe_idmapped_mounts",
    "recursive_readonly_supported",
    "unmount",
    "unmount_tree",
    "why_no_idmapped_mounts",
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
# runc 1.1 cannot make id-mapped mounts from the spec (1.2 can), and recursive read-only
# ("rro") depends on the handler's version, so the agent makes both itself, the same way for
# every handler (as containerd does for its snapshots): open_tree(2) clones a tree,
# mount_setattr(2) makes it read-only or id-mapped (recursively), move_mount(2) attaches
# it where runc then bind-mounts it from.

_SYS_OPEN_TREE, _SYS_MOVE_MOUNT, _SYS_MOUNT_SETATTR = 428, 429, 442  # the same on all arches
_SYS_FSOPEN, _SYS_FSCONFIG, _SYS_FSMOUNT = 430, 431, 432
_OPEN_TREE_CLONE, _OPEN_TREE_CLOEXEC = 0x1, 0o2000000
_AT_FDCWD, _AT_EMPTY_PATH, _AT_RECURSIVE = -100, 0x1000, 0x8000
_MOVE_MOUNT_F_EMPTY_PATH = 0x4
_MOUNT_ATTR_RDONLY, _MOUNT_ATTR_NOSUID, _MOUNT_ATTR_NODEV = 0x1, 0x2, 0x4
_MOUNT_ATTR_IDMAP = 0x100000
_FSOPEN_CLOEXEC, _FSCONFIG_CMD_CREATE, _FSMOUNT_CLOEXEC = 0x1, 6, 0x1


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


class _CallFailed(OSError):
    """A mount-API call failed; ``call`` names it, since which one failed says why."""

    def __init__(self, err: int, call: str, path: str) -> None:
        super().__init__(err, f"{call}: {os.strerror(err)}", path)
        self.call = call


def _check(result: int, what: str, path: str) -> int:
    if result < 0:
        raise _CallFailed(ctypes.get_errno(), what, path)
    return result


def _clone_tree(source: str, *, recursive: bool) -> int:
    """A detached copy of the mount at ``source`` (and its submounts if ``recursive``)."""
    flags = _OPEN_TREE_CLONE | _OPEN_TREE_CLOEXEC | (_AT_RECURSIVE if recursive else 0)
    return _check(
        _libc.syscall(_SYS_OPEN_TREE, _AT_FDCWD, source.encode(), flags), "open_tree", source
    )


def _set_mount_attrs(
    tree: int,
    source: str,
    *,
    readonly: bool,
    userns_fd: int,
    recursive: bool,
    no_devices: bool = False,
) -> None:
    flags_set = (
        (_MOUNT_ATTR_RDONLY if readonly else 0)
        | (_MOUNT_ATTR_NOSUID | _MOUNT_ATTR_NODEV if no_devices else 0)
        | (_MOUNT_ATTR_IDMAP if userns_fd >= 0 else 0)
    )
    attr = _MountAttr(flags_set, 0, 0, max(userns_fd, 0))
    flags = _AT_EMPTY_PATH | (_AT_RECURSIVE if recursive else 0)
    _check(
        _libc.syscall(
            _SYS_MOUNT_SETATTR, tree, b"", flags, ctypes.byref(attr), ctypes.sizeof(attr)
        ),
        "mount_setattr",
        source,
    )


def _attached_clone(
    source: str,
    target: str,
    *,
    readonly: bool,
    userns: str | None,
    recursive: bool,
    no_devices: bool = False,
) -> None:
    tree = _clone_tree(source, recursive=recursive)
    userns_fd = -1
    try:
        if userns:
            userns_fd = os.open(userns, os.O_RDONLY | os.O_CLOEXEC)
        _set_mount_attrs(
            tree,
            source,
            readonly=readonly,
            userns_fd=userns_fd,
            recursive=recursive,
            no_devices=no_devices,
        )
        _check(
            _libc.syscall(
                _SYS_MOVE_MOUNT, tree, b"", _AT_FDCWD, target.encode(), _MOVE_MOUNT_F_EMPTY_PATH
            ),
            "move_mount",
            target,
        )
    finally:
        os.close(tree)  # a clone never attached goes with its last fd: nothing is left
        if userns_fd >= 0:
            os.close(userns_fd)


def _unescape_mountinfo(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), field)


def _fs_type(path: str) -> str:
    """The type of the filesystem ``path`` is on (``ext4``, ``tmpfs``), from mountinfo."""
    real = os.path.realpath(path)
    best, fstype = "", "unknown"
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            point = _unescape_mountinfo(fields[4])
            inside = real == point or real.startswith(point.rstrip("/") + "/")
            if inside and len(point) >= len(best):  # the deepest, the last of stacked ones
                best, fstype = point, fields[fields.index("-") + 1]
    return fstype


def _idmap_refusal(what: str, fstype: str, err: int) -> str:
    """Why ``what`` cannot be id-mapped, in words an operator can act on."""
    release = os.uname().release
    if err == errno.ENOSYS:
        return f"Linux {release} cannot make id-mapped mounts (mount_setattr(2) needs 5.12)"
    if err == errno.EINVAL:
        since = " (tmpfs can be from Linux 6.3)" if fstype == "tmpfs" else ""
        return f"{what} is on {fstype}, which cannot be id-mapped on Linux {release}{since}"
    return f"{what} (on {fstype}) cannot be id-mapped: {os.strerror(err)}"


async def bind_special(
    source: str,
    target: str,
    *,
    readonly: bool = False,
    userns: str = "",
    recursive: bool = True,
    no_devices: bool = False,
) -> None:
    """Bind ``source`` at ``target`` (a new empty dir or file), read-only on every submount
    (``readonly``), ``nosuid,nodev`` (``no_devices``: image content, whose device nodes and
    setuid files must not work through a host path either) and/or id-mapped through the
    user namespace pinned at ``userns``.

    A filesystem or kernel that cannot id-map is FAILED_PRECONDITION (the pod cannot run on
    this node as asked); the failed clone is never attached, so nothing is left mounted.
    """
    try:
        await asyncio.to_thread(
            _attached_clone,
            source,
            target,
            readonly=readonly,
            userns=userns or None,
            recursive=recursive,
            no_devices=no_devices,
        )
    except _CallFailed as exc:
        if userns and exc.call == "mount_setattr" and exc.errno is not None:
            refusal = _idmap_refusal(source, _fs_type(source), exc.errno)
            raise FailedPrecondition(
                f"id-mapped mount for the pod's user namespace: {refusal}"
            ) from None
        what = "id-mapped " if userns else ""
        raise AgentError(f"{what}bind {source} at {target}: {exc.strerror}") from None
    except OSError as exc:
        raise AgentError(f"bind {source} at {target}: {exc.strerror}") from None


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


#: What the start-up probe found ("" when id-mapped mounts work); None before it ran.
_idmap_probe_result: str | None = None
_PROBE_TIMEOUT = 10.0
#: The throwaway user namespace of the probe is mapped like a pod's (the ids never matter:
#: nothing is attached, nothing is written).
_PROBE_MAPPING = "0 65536 65536\n"


def _no_idmapped_layers() -> str:
    if _kernel_at_least(5, 19):
        return ""
    release = os.uname().release
    return f"Linux {release} cannot id-map the layers of an overlay (5.19 or newer can)"


def why_no_idmapped_mounts() -> str:
    """Why this node cannot give pods user namespaces ("" when it can): what
    :func:`probe_idmapped_mounts` found at start, the kernel version alone before it ran."""
    if _idmap_probe_result is not None:
        return _idmap_probe_result
    return _no_idmapped_layers()


def idmapped_mounts_supported() -> bool:
    """Can layers and volumes be id-mapped here? (``RuntimeHandlerFeatures.user_namespaces``)"""
    return not why_no_idmapped_mounts()


def _write_probe_maps(pid: int) -> None:
    for name in ("uid_map", "gid_map"):
        with open(f"/proc/{pid}/{name}", "w") as f:
            f.write(_PROBE_MAPPING)


async def _throwaway_userns() -> int:
    """An fd of a new, mapped user namespace; its holder process is gone (the fd keeps it)."""
    ours = os.stat("/proc/self/ns/user").st_ino
    async with await spawn(["unshare", "--user", "sleep", "10"], stdout="null") as holder:
        try:
            async with asyncio.timeout(_PROBE_TIMEOUT):
                while True:
                    if holder.returncode is not None:
                        raise OSError(f"unshare exited: {await holder.read_stderr()}")
                    with contextlib.suppress(FileNotFoundError):
                        if os.stat(f"/proc/{holder.pid}/ns/user").st_ino != ours:
                            break
                    await asyncio.sleep(0.002)
        except TimeoutError:
            raise OSError(f"unshare made no user namespace in {_PROBE_TIMEOUT:g}s") from None
        _write_probe_maps(holder.pid)
        userns_fd = os.open(f"/proc/{holder.pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
        await holder.kill_and_reap()
    return userns_fd


def _detached_tmpfs() -> int:
    """A new tmpfs mounted nowhere (fsopen/fsmount): gone when its fd is closed."""
    context = _check(_libc.syscall(_SYS_FSOPEN, b"tmpfs", _FSOPEN_CLOEXEC), "fsopen", "tmpfs")
    try:
        _check(
            _libc.syscall(_SYS_FSCONFIG, context, _FSCONFIG_CMD_CREATE, None, None, 0),
            "fsconfig",
            "tmpfs",
        )
        return _check(_libc.syscall(_SYS_FSMOUNT, context, _FSMOUNT_CLOEXEC, 0), "fsmount", "tmpfs")
    finally:
        os.close(context)


def _try_idmap(what: str, fstype: str, mount: int, userns_fd: int) -> str:
    """Id-map the detached ``mount`` (and close it): why that failed, or ""."""
    try:
        _set_mount_attrs(mount, what, readonly=False, userns_fd=userns_fd, recursive=False)
    except _CallFailed as exc:
        return _idmap_refusal(what, fstype, exc.errno or errno.EINVAL)
    finally:
        os.close(mount)
    return ""


def _try_idmaps(root_dir: str, userns_fd: int) -> str:
    """Id-map a clone of ``root_dir``'s mount, then a new tmpfs: why one failed, or ""."""
    try:
        store = _clone_tree(root_dir, recursive=False)
    except OSError as exc:
        return f"cannot probe id-mapped mounts of {root_dir}: {exc.strerror}"
    problem = _try_idmap(f"the image store {root_dir}", _fs_type(root_dir), store, userns_fd)
    if problem:
        return problem
    try:
        tmpfs = _detached_tmpfs()
    except OSError as exc:
        return f"cannot probe id-mapped mounts of a tmpfs: {exc.strerror}"
    return _try_idmap("a secret or token volume", "tmpfs", tmpfs, userns_fd)


async def probe_idmapped_mounts(root_dir: str) -> str:
    """Try, once at start, the id-mapped mounts a user-namespaced pod needs, for real: a bind
    of the filesystem under ``root_dir`` (image layers) and a tmpfs (secrets and tokens;
    Linux >= 6.3), each id-mapped through a throwaway user namespace and never attached.

    The kernel version alone says too little: an ext4 store idmaps from 5.12, a tmpfs from
    6.3, some filesystems never. Returns why not ("" when it works) and keeps it for
    :func:`why_no_idmapped_mounts`, so the advertised feature and the checks agree.
    """
    global _idmap_probe_result
    problem = _no_idmapped_layers()
    if not problem:
        try:
            userns_fd = await _throwaway_userns()
        except OSError as exc:
            problem = f"no user namespace to probe id-mapped mounts with: {exc}"
        else:
            try:
                problem = await asyncio.to_thread(_try_idmaps, root_dir, userns_fd)
            finally:
                os.close(userns_fd)
    _idmap_probe_result = problem
    return problem


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
        self,
        source: str,
        target: str,
        *,
        readonly: bool = False,
        userns: str = "",
        no_devices: bool = False,
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
        self,
        source: str,
        target: str,
        *,
        readonly: bool = False,
        userns: str = "",
        no_devices: bool = False,
    ) -> None:
        await bind_special(source, target, readonly=readonly, userns=userns, no_devices=no_devices)

    async def unmount_tree(self, path: str) -> None:
        await unmount_tree(path)


HOST: Mounter = HostMounter()
