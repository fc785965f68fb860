"""Pin a new namespace made by a short-lived holder process: the nsfs file, bind-mounted.

A namespace lives while a process is in it or its ``/proc/<pid>/ns/<kind>`` file is
mounted somewhere. The holder (``unshare … sleep``, maybe under ``nsenter``) makes
the namespace; once the kernel shows it (its ns file differs from ours), ``setup``
runs (e.g. writing a user namespace's uid/gid maps, which only a process in the
parent namespace may do, once), the file is bind-mounted on ``path``, and the
holder is killed and reaped. The mount is made from the agent's own mount
namespace, which a holder inside a new user namespace could not do.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
from collections.abc import Callable, Sequence

from agent._util.proc import spawn
from agent.errors import AgentError, DeadlineExceeded

__all__ = ["pin_new_namespace", "unpin"]

_MS_BIND = 0x1000
_MNT_DETACH = 0x2
_libc = ctypes.CDLL(None, use_errno=True)


def _ns_id(pid: int | str, kind: str) -> int:
    return os.stat(f"/proc/{pid}/ns/{kind}").st_ino


async def pin_new_namespace(
    argv: Sequence[str],
    kind: str,
    path: str,
    *,
    setup: Callable[[int], None] = lambda pid: None,
    timeout: float = 10.0,
) -> None:
    """Run ``argv`` (which must end up in a new ``kind`` namespace and wait), pin it at
    ``path`` (an existing file), then end the holder."""
    ours = _ns_id("self", kind)
    async with await spawn(list(argv), stdout="null") as holder:
        try:
            async with asyncio.timeout(timeout):
                while True:
                    if holder.returncode is not None:
                        raise AgentError(f"{argv[0]} exited: {await holder.read_stderr()}")
                    with contextlib.suppress(FileNotFoundError):
                        if _ns_id(holder.pid, kind) != ours:
                            break
                    await asyncio.sleep(0.002)
        except TimeoutError:
            raise DeadlineExceeded(f"no new {kind} namespace within {timeout:g}s") from None
        setup(holder.pid)
        source = f"/proc/{holder.pid}/ns/{kind}"
        if _libc.mount(source.encode(), path.encode(), None, _MS_BIND, None) != 0:
            err = ctypes.get_errno()
            raise AgentError(f"pin the {kind} namespace at {path}: {os.strerror(err)}")
        await holder.kill_and_reap()


def unpin(path: str) -> None:
    """Unmount (lazily if busy) and delete a pin; missing is fine."""
    if _libc.umount2(path.encode(), _MNT_DETACH) != 0:
        err = ctypes.get_errno()
        if err not in (22, 2):  # EINVAL: not mounted, ENOENT: gone
            raise AgentError(f"unpin {path}: {os.strerror(err)}")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
