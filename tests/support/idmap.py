"""Whether a filesystem takes idmapped mounts: the probe critest runs before its userns POD spec.

critest (``security_context_linux.go``, ``supportsIDMap``) clones the mount tree of a
path with ``open_tree(2)`` and sets ``MOUNT_ATTR_IDMAP`` on the clone with
``mount_setattr(2)``, naming the user namespace of a short-lived helper process
mapped ``0 -> 65536`` for 65536 ids. This module does the same through ``ctypes``
(Python has no wrappers for either call). The clone is never attached, so nothing
is mounted, and the helper is killed before returning.

Owns that probe only; imports nothing from ``agent/``.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import subprocess
import time
from collections.abc import Iterator

__all__ = ["USERNS_HOST_ID", "USERNS_SIZE", "supports_idmap"]

#: critest's ``usernsHostID`` and ``usernsSize``: the helper's mapping.
USERNS_HOST_ID = 65536
USERNS_SIZE = 65536

# Syscall numbers of the unified table (the same on x86_64 and arm64).
_SYS_OPEN_TREE = 428
_SYS_MOUNT_SETATTR = 442
_OPEN_TREE_CLONE = 1
_AT_EMPTY_PATH = 0x1000
_MOUNT_ATTR_IDMAP = 0x00100000
_HELPER_TIMEOUT = 5.0


class _MountAttr(ctypes.Structure):
    """``struct mount_attr`` (linux/mount.h), the argument of mount_setattr(2)."""

    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


_libc = ctypes.CDLL(None, use_errno=True)


def _syscall(number: int, *args: object) -> int:
    result = int(_libc.syscall(ctypes.c_long(number), *args))
    if result < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))
    return result


def _open_tree_clone(path: str) -> int:
    return _syscall(
        _SYS_OPEN_TREE,
        ctypes.c_long(-1),
        ctypes.c_char_p(os.fsencode(path)),
        ctypes.c_ulong(_OPEN_TREE_CLONE | os.O_CLOEXEC),
    )


def _set_idmap(tree_fd: int, userns_fd: int) -> None:
    attr = _MountAttr(attr_set=_MOUNT_ATTR_IDMAP, userns_fd=userns_fd)
    _syscall(
        _SYS_MOUNT_SETATTR,
        ctypes.c_long(tree_fd),
        ctypes.c_char_p(b""),
        ctypes.c_ulong(_AT_EMPTY_PATH),
        ctypes.byref(attr),
        ctypes.c_size_t(ctypes.sizeof(attr)),
    )


@contextlib.contextmanager
def _mapped_userns_process() -> Iterator[int]:
    """A ``sleep 5`` in a new user namespace mapped as critest maps it; yields its pid."""
    helper = subprocess.Popen(["unshare", "--user", "sleep", "5"])
    try:
        own = os.readlink("/proc/self/ns/user")
        deadline = time.monotonic() + _HELPER_TIMEOUT
        while os.readlink(f"/proc/{helper.pid}/ns/user") == own:
            if helper.poll() is not None or time.monotonic() > deadline:
                raise OSError("the user-namespace helper did not unshare")
            time.sleep(0.01)
        mapping = f"0 {USERNS_HOST_ID} {USERNS_SIZE}\n".encode()
        for name in ("uid_map", "gid_map"):
            fd = os.open(f"/proc/{helper.pid}/{name}", os.O_WRONLY)
            try:
                os.write(fd, mapping)
            finally:
                os.close(fd)
        yield helper.pid
    finally:
        helper.kill()
        helper.wait(timeout=_HELPER_TIMEOUT)


def supports_idmap(path: str) -> str | None:
    """None if ``path``'s filesystem takes an idmapped mount, else why not."""
    try:
        tree_fd = _open_tree_clone(path)
    except OSError as exc:
        return exc.strerror or str(exc)
    try:
        with _mapped_userns_process() as pid:
            userns_fd = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
            try:
                _set_idmap(tree_fd, userns_fd)
            finally:
                os.close(userns_fd)
    except OSError as exc:
        return exc.strerror or str(exc)
    finally:
        os.close(tree_fd)
    return None
