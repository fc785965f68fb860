"""Snapshot directories: one unpacked layer each, used as an overlay lowerdir.

    snapshots/<name>/fs       a committed layer (name = the chain id's first 16 hex)
    snapshots/tmp-<random>/   a layer being unpacked
    snapshots/.trash/         removed layers, deleted in the background (``trash``)

A layer is unpacked into a temporary directory and renamed into place only
after its digests were verified, so a committed snapshot is always complete;
removal renames it into the trash, so a removal is instant and a crash never
leaves half a snapshot under a live name. Temporary directories are moved to
the trash at start. Directory names are short on purpose: overlay mount
options must fit in one page.

The root is 0700, as containerd keeps its snapshotter's: image content
(device nodes, set-id binaries) is reachable by root only. Containers still
see it: the kernel opens overlay lowerdirs with the credentials of whoever
mounted them (the agent), not of the container's processes.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Collection, Sequence

from agent._util.fs import ensure_dir
from agent.images.trash import TRASH_DIR, Trash

__all__ = ["Snapshots", "chain_ids"]

_TEMPORARY = "tmp-"
#: what an earlier version renamed a snapshot to while deleting it
_LEGACY_DELETING = ".del-"


def chain_ids(diff_ids: Sequence[str]) -> list[str]:
    """The OCI chain ids: ``C(0) = D(0)``, ``C(n) = sha256(C(n-1) + " " + D(n))``."""
    result: list[str] = []
    for diff_id in diff_ids:
        if not result:
            result.append(diff_id)
        else:
            joined = f"{result[-1]} {diff_id}".encode()
            result.append("sha256:" + hashlib.sha256(joined).hexdigest())
    return result


class Snapshots:
    def __init__(self, root: str) -> None:
        self.root = root
        ensure_dir(root, 0o700)  # also tightens a 0711 root an older version made
        self.trash = Trash(os.path.join(root, TRASH_DIR))

    def fs_path(self, name: str) -> str:
        return os.path.join(self.root, name, "fs")

    def prepare(self) -> str:
        """A fresh temporary snapshot; returns its directory (extract into ``<dir>/fs``)."""
        directory = os.path.join(self.root, f"{_TEMPORARY}{secrets.token_hex(6)}")
        os.makedirs(os.path.join(directory, "fs"), mode=0o755)
        return directory

    def commit(self, temporary: str, chain_id: str, taken: Collection[str]) -> str:
        """Rename a finished temporary snapshot into place; returns its name.

        ``taken`` are the names records use. A directory under any other name
        is garbage no record can reach (left by a crash): it goes to the trash
        rather than blocking the name, so a pull never depends on a deletion.
        """
        hex_id = chain_id.split(":", 1)[1]
        candidates = [hex_id[:n] for n in (16, 24, 32, 64)]
        for stale in candidates:  # garbage under this layer's names, whichever it takes
            if stale not in taken and os.path.lexists(os.path.join(self.root, stale)):
                self.trash.put(os.path.join(self.root, stale))
        name = next(n for n in candidates if n not in taken)
        os.rename(temporary, os.path.join(self.root, name))
        return name

    def discard(self, temporary: str) -> None:
        """Give up a temporary snapshot (a failed unpack)."""
        self.trash.put(temporary)

    def remove(self, name: str, usage: tuple[int, int] | None = None) -> bool:
        """Move a committed snapshot into the trash (instant); False if it was not there."""
        return self.trash.put(os.path.join(self.root, name), usage)

    def names(self) -> set[str]:
        return {
            n
            for n in os.listdir(self.root)
            if not n.startswith((_TEMPORARY, _LEGACY_DELETING, TRASH_DIR))
            and os.path.isdir(os.path.join(self.root, n))
        }

    def sweep_temporary(self) -> list[str]:
        """Trash what an interrupted unpack or removal left (run before serving)."""
        swept = []
        for name in os.listdir(self.root):
            if name.startswith((_TEMPORARY, _LEGACY_DELETING)):
                self.trash.put(os.path.join(self.root, name))
                swept.append(name)
        return swept
