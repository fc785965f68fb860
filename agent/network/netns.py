"""Network namespaces pinned as files, so they outlive the processes in them.

A pod's network namespace is created empty by ``unshare --net=<pin>``, which
bind-mounts the new namespace's nsfs file onto ``<pin_dir>/<name>``; CNI
plugins and containers join it by that path. The pin directory is first made
a *private* bind mount of itself (what ``ip netns`` does for ``/run/netns``,
but private), so the pins never propagate into, or get pinned by, other mount
namespaces that share the host's mounts, and umounting one always works.

Everything here runs helper programs (``unshare``, ``nsenter``, ``mount``,
``umount``) through ``agent._util.proc.run``; nothing touches CRI types or CNI.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import functools
import os
import re
import socket
import threading
import weakref
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from agent._util.nspin import pin_new_namespace
from agent._util.proc import Completed, run
from agent.errors import AgentError, AlreadyExists, InvalidArgument, NotFound

__all__ = [
    "InterfaceCounters",
    "cleanup_dir",
    "create",
    "exists",
    "interface_counters",
    "parse_proc_net_dev",
    "prepare_dir",
    "remove",
    "run_in",
    "socket_in",
]

#: mount/umount/unshare are quick; anything slower is a stuck host.
_MOUNT_TIMEOUT = 10.0
_COUNTERS_TIMEOUT = 5.0
#: ``ioctl(NS_GET_NSTYPE)`` on an nsfs file answers the namespace's CLONE_* flag.
_NS_GET_NSTYPE = 0xB703
_CLONE_NEWNET = 0x40000000
#: A pin mounted twice (two racing creates of a dir, a stray manual mount) is
#: umounted this many times at most before we give up and say so.
_MAX_STACKED = 8
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,254}")
_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")

#: One lock per event loop serialises preparing the pin directory, so two
#: concurrent first pods do not stack two bind mounts on it.
_dir_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
    weakref.WeakKeyDictionary()
)


@dataclass(frozen=True, slots=True)
class InterfaceCounters:
    """One interface's totals from ``/proc/net/dev`` inside a namespace."""

    name: str
    rx_bytes: int
    rx_packets: int
    rx_errors: int
    rx_dropped: int
    tx_bytes: int
    tx_packets: int
    tx_errors: int
    tx_dropped: int


@dataclass(frozen=True, slots=True)
class _Mount:
    mount_point: str
    root: str
    fstype: str
    #: ``shared:N``/``master:N`` tags; empty for a private mount
    propagation: tuple[str, ...]


def _unescape(field: str) -> str:
    return _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


def _mounts() -> list[_Mount]:
    """This process's mount table (``/proc/self/mountinfo``), in mount order."""
    result = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            try:
                sep = fields.index("-", 6)
            except ValueError:
                continue
            result.append(
                _Mount(
                    mount_point=_unescape(fields[4]),
                    root=_unescape(fields[3]),
                    fstype=fields[sep + 1],
                    propagation=tuple(fields[6:sep]),
                )
            )
    return result


def _mounts_at(path: str) -> list[_Mount]:
    target = os.path.realpath(path)
    return [m for m in _mounts() if m.mount_point == target]


def _check_name(name: str) -> None:
    if not _NAME.fullmatch(name):
        raise InvalidArgument(
            f"network namespace name {name!r} must be letters, digits, '_', '.', '-' "
            "(at most 255, not starting with a symbol)"
        )


def exists(path: str) -> bool:
    """Whether ``path`` is a live network namespace (a pinned or /proc nsfs file).

    Asks the kernel (``NS_GET_NSTYPE``), so a plain file left where a pin used
    to be, or a pin of another namespace type, is not mistaken for one.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return fcntl.ioctl(fd, _NS_GET_NSTYPE) == _CLONE_NEWNET
    except OSError:  # ENOTTY: not an nsfs file
        return False
    finally:
        os.close(fd)


def _loop_lock() -> asyncio.Lock:
    loop = asyncio.get_running_loop()
    lock = _dir_locks.get(loop)
    if lock is None:
        lock = _dir_locks[loop] = asyncio.Lock()
    return lock


async def prepare_dir(pin_dir: str, *, timeout: float = _MOUNT_TIMEOUT) -> None:
    """Make ``pin_dir`` exist as a private bind mount of itself (idempotent).

    Private, so an nsfs bind mount inside it neither propagates to peer mount
    namespaces (which would then hold the namespace alive after our umount)
    nor receives theirs.
    """
    async with _loop_lock():
        os.makedirs(pin_dir, mode=0o711, exist_ok=True)
        own = _mounts_at(pin_dir)
        if not own:
            await run(["mount", "--bind", pin_dir, pin_dir], timeout=timeout)
            own = _mounts_at(pin_dir)
        if not own or own[-1].propagation:
            await run(["mount", "--make-private", pin_dir], timeout=timeout)


async def create(
    pin_dir: str, name: str, *, userns: str = "", timeout: float = _MOUNT_TIMEOUT
) -> str:
    """Create a new, empty network namespace pinned at ``<pin_dir>/<name>``; its path.

    Only ``lo`` exists in it, down; CNI (the loopback plugin) brings it up. With
    ``userns`` (a pinned user namespace) the network namespace is owned by it, so a
    pod's root there may mount its sysfs (runc does), as in containerd and CRI-O.
    """
    _check_name(name)
    await prepare_dir(pin_dir, timeout=timeout)
    path = os.path.join(pin_dir, name)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444)
    except FileExistsError:
        raise AlreadyExists(f"network namespace pin {path} already exists") from None
    os.close(fd)
    try:
        if userns:
            holder = ["nsenter", f"--user={userns}", "unshare", "--net", "sleep", "60"]
            await pin_new_namespace(holder, "net", path, timeout=timeout)
        else:
            # unshare creates the namespace and bind-mounts its nsfs file onto the pin.
            await run(["unshare", f"--net={path}", "true"], timeout=timeout)
    except BaseException:
        with contextlib.suppress(AgentError, OSError):
            await remove(path, timeout=timeout)
        raise
    return path


async def remove(path: str, *, timeout: float = _MOUNT_TIMEOUT) -> None:
    """Unpin and delete ``path``; the namespace goes when nothing else holds it.

    Idempotent: a missing file or one that is not mounted is fine. A busy
    mount is detached lazily rather than failing a pod's removal.
    """
    for _ in range(_MAX_STACKED):
        if not _mounts_at(path):
            break
        done = await run(["umount", path], timeout=timeout, check=False)
        if done.returncode != 0 and _mounts_at(path):
            await run(["umount", "--lazy", path], timeout=timeout)
    else:
        if _mounts_at(path):
            raise AgentError(f"network namespace pin {path} is still mounted after umount")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


async def run_in(
    path: str,
    argv: Sequence[str],
    timeout: float,
    *,
    input: bytes | None = None,
    check: bool = True,
) -> Completed:
    """Run ``argv`` inside the network namespace at ``path`` (``nsenter --net``)."""
    if not exists(path):
        raise NotFound(f"network namespace {path} does not exist")
    return await run(
        ["nsenter", f"--net={path}", "--", *argv], timeout=timeout, input=input, check=check
    )


async def socket_in(path: str, family: int, kind: int) -> socket.socket:
    """A non-blocking socket created inside the namespace at ``path`` (port-forward).

    A socket belongs to the namespace it was created in, wherever it is used
    later. ``setns`` switches only the calling thread, so the socket is made
    on a throwaway thread that exits right after: no thread of ours is ever
    left in a pod's namespace.
    """
    if not exists(path):
        raise NotFound(f"network namespace {path} does not exist")
    loop = asyncio.get_running_loop()
    made: asyncio.Future[socket.socket] = loop.create_future()

    def make() -> None:
        try:
            with open(path, "rb") as ns:
                if _libc().setns(ns.fileno(), _CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns {path}: {os.strerror(err)}")
            sock = socket.socket(family, kind | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        except BaseException as exc:
            loop.call_soon_threadsafe(_settle, made, None, exc)
        else:
            loop.call_soon_threadsafe(_settle, made, sock, None)

    threading.Thread(target=make, name="netns-socket", daemon=True).start()
    return await made


def _settle(
    future: asyncio.Future[socket.socket], sock: socket.socket | None, exc: BaseException | None
) -> None:
    if future.cancelled():
        if sock is not None:
            sock.close()
    elif exc is not None:
        future.set_exception(exc)
    else:
        assert sock is not None
        future.set_result(sock)


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def parse_proc_net_dev(text: str) -> dict[str, InterfaceCounters]:
    """Counters per interface from ``/proc/net/dev`` text, ``lo`` left out."""
    result = {}
    for line in text.splitlines()[2:]:  # two header lines
        name, sep, values = line.partition(":")
        name = name.strip()
        if not sep or name == "lo":
            continue
        numbers = [int(v) for v in values.split()]
        if len(numbers) < 12:
            continue
        result[name] = InterfaceCounters(
            name=name,
            rx_bytes=numbers[0],
            rx_packets=numbers[1],
            rx_errors=numbers[2],
            rx_dropped=numbers[3],
            tx_bytes=numbers[8],
            tx_packets=numbers[9],
            tx_errors=numbers[10],
            tx_dropped=numbers[11],
        )
    return result


async def interface_counters(
    path: str, *, timeout: float = _COUNTERS_TIMEOUT
) -> dict[str, InterfaceCounters]:
    """Per-interface rx/tx counters inside the namespace, by interface name.

    ``/proc/net/dev`` shows the reading process's namespace, so it is read by
    a short ``cat`` run inside it: simpler and safer than ``setns`` on one of
    the event loop's threads.
    """
    done = await run_in(path, ["cat", "/proc/net/dev"], timeout)
    return parse_proc_net_dev(done.stdout.decode(errors="replace"))


def _may_be_pin(path: str) -> bool:
    """Pins are files (mounted or left by a crash); a plain subdirectory is not ours."""
    return not os.path.isdir(path) or bool(_mounts_at(path))


async def cleanup_dir(
    pin_dir: str,
    *,
    keep: Collection[str] = (),
    release_dir: bool = False,
    timeout: float = _MOUNT_TIMEOUT,
) -> list[str]:
    """Remove every pin in ``pin_dir`` except the names in ``keep``; the paths removed.

    For recovery after a crash: pins of pods that no longer exist. With
    ``release_dir`` (only sensible when nothing is kept) the directory's own
    bind mount is undone too.
    """
    try:
        names = sorted(os.listdir(pin_dir))
    except FileNotFoundError:
        names = []
    removed = []
    for name in names:
        if name in keep:
            continue
        path = os.path.join(pin_dir, name)
        if not _may_be_pin(path):
            continue
        await remove(path, timeout=timeout)
        removed.append(path)
    if release_dir:
        async with _loop_lock():
            for _ in range(_MAX_STACKED):
                if not _mounts_at(pin_dir):
                    break
                await run(["umount", pin_dir], timeout=timeout)
            else:
                raise AgentError(f"{pin_dir} is still mounted after umount")
    return removed
