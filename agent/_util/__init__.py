"""Small, boring helpers shared by every package: subprocesses, atomic files.

Nothing here knows about CRI, images or pods; it imports only ``errors``.
"""

from agent._util.fs import atomic_write, atomic_write_json, disk_usage, ensure_dir, fsync_dir
from agent._util.locks import KeyedLock
from agent._util.proc import Child, CommandFailed, Completed, run, spawn, stderr_tail
from agent._util.sdnotify import Notifier
from agent._util.securejoin import resolve_in_root
from agent._util.serde import from_dict, to_dict

__all__ = [
    "Child",
    "CommandFailed",
    "Completed",
    "KeyedLock",
    "Notifier",
    "atomic_write",
    "atomic_write_json",
    "disk_usage",
    "ensure_dir",
    "from_dict",
    "fsync_dir",
    "resolve_in_root",
    "run",
    "spawn",
    "stderr_tail",
    "to_dict",
]
