"""Snapshot directories: one unpacked layer each, used as an overlay lowerdir.

    snapshots/<name>/fs       a committed layer (name = the chain id's first 16 hex)
    snapshots/tmp-<random>/   a layer being unpacked
    snapshots/.del-<name>/    a layer being removed

A layer is unpacked into a temporary directory and renamed into place only
after its digests were verified, so a committed snapshot is always complete;
removal renames first, so a crash never leaves half a snapshot under a live
name. Temporary and half-removed directories are swept at start. Directory
names are short on purpose: overlay mount options must fit in one page.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
from collections.abc import Sequence

__all__ = ["Snapshots", "chain_ids"]


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
        os.makedirs(root, mode=0o711, exist_ok=True)

    def fs_path(self, name: str) -> str:
        return os.path.join(self.root, name, "fs")

    def prepare(self) -> str:
        """A fresh temporary snapshot; returns its directory (extract into ``<dir>/fs``)."""
        directory = os.path.join(self.root, f"tmp-{secrets.token_hex(6)}")
        os.makedirs(os.path.join(directory, "fs"), mode=0o755)
        return directory

    def commit(self, temporary: str, chain_id: str) -> str:
        """Rename a finished temporary snapshot into place; returns its name."""
        hex_id = chain_id.split(":", 1)[1]
        for length in (16, 24, 32, 64):
            name = hex_id[:length]
            try:
                os.rename(temporary, os.path.join(self.root, name))
                return name
            except OSError:
                if not os.path.exists(os.path.join(self.root, name)):
                    raise
        raise FileExistsError(f"snapshot for {chain_id} cannot be named")

    def discard(self, temporary: str) -> None:
        shutil.rmtree(temporary, ignore_errors=True)

    def remove(self, name: str) -> None:
        path = os.path.join(self.root, name)
        doomed = os.path.join(self.root, f".del-{name}")
        try:
            os.rename(path, doomed)
        except FileNotFoundError:
            return
        shutil.rmtree(doomed, ignore_errors=True)

    def names(self) -> set[str]:
        return {
            n
            for n in os.listdir(self.root)
            if not n.startswith(("tmp-", ".del-")) and os.path.isdir(os.path.join(self.root, n))
        }

    def sweep_temporary(self) -> list[str]:
        """Remove what an interrupted unpack or removal left (run before serving)."""
        swept = []
        for name in os.listdir(self.root):
            if name.startswith(("tmp-", ".del-")):
                shutil.rmtree(os.path.join(self.root, name), ignore_errors=True)
                swept.append(name)
        return swept
