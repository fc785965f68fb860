"""The content store: blobs addressed by digest, and resumable ingests.

    content/blobs/sha256/<hex>        committed, verified, immutable
    content/ingest/<hex>/data         a blob being downloaded (written at offsets)
    content/ingest/<hex>/parts.json   which fixed-size parts of it are complete
    content/ingest/<hex>/consumed     how much of data an unpack freed (hole-punched)
    content/.trash/                   deleted blobs and ingests, emptied in the background

A blob becomes visible only by an atomic rename after its digest was checked,
so a reader never sees a partial or wrong blob. An ingest survives an agent
crash: the next pull of the same blob re-fetches only the parts not recorded
as complete (and the digest check catches anything a crash corrupted).
``parts.json`` is replaced atomically but not fsynced: it must survive an agent
crash (the page cache does), and after a power loss the digest check catches
parts whose bytes never reached the disk. Deleting goes through the trash, so
unlinking a multi-GB blob never holds up a caller.

The methods block (file I/O): the puller calls them in threads.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from dataclasses import dataclass, field

from agent._util.fs import atomic_write, fsync_dir
from agent.errors import AgentError
from agent.images.reference import parse_digest
from agent.images.trash import TRASH_DIR, Trash

__all__ = ["ContentStore", "DigestMismatch", "Ingest"]


class DigestMismatch(AgentError):
    """Downloaded bytes do not match the digest they were asked for."""


def _hex(digest: str) -> str:
    return parse_digest(digest).split(":", 1)[1]


@dataclass
class Ingest:
    """A blob in the middle of being downloaded, split into fixed-size parts."""

    digest: str
    size: int
    directory: str
    part_size: int
    done_parts: set[int] = field(default_factory=set)
    #: parts finish in several threads; their parts.json updates take turns
    _record_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def data_path(self) -> str:
        return os.path.join(self.directory, "data")

    @property
    def consumed_path(self) -> str:
        """Where the unpack worker records how much of the data it freed (``unpack_process``)."""
        return os.path.join(self.directory, "consumed")

    @property
    def part_count(self) -> int:
        return max(1, -(-self.size // self.part_size))

    def part_range(self, index: int) -> tuple[int, int]:
        """``[start, end)`` of part ``index``."""
        start = index * self.part_size
        return start, min(self.size, start + self.part_size)

    def mark_done(self, index: int) -> None:
        """Record part ``index`` as complete (blocking: call it in a thread)."""
        with self._record_lock:
            self.done_parts.add(index)
            state = {
                "digest": self.digest,
                "size": self.size,
                "part_size": self.part_size,
                "done": sorted(self.done_parts),
            }
            path = os.path.join(self.directory, "parts.json")
            tmp = f"{path}.tmp"
            with open(tmp, "w") as f:
                json.dump(state, f)
            os.replace(tmp, path)

    @property
    def complete(self) -> bool:
        return len(self.done_parts) >= self.part_count


class ContentStore:
    def __init__(self, root: str) -> None:
        self.root = root
        self.blobs = os.path.join(root, "blobs", "sha256")
        self.ingests = os.path.join(root, "ingest")
        os.makedirs(self.blobs, mode=0o700, exist_ok=True)
        os.makedirs(self.ingests, mode=0o700, exist_ok=True)
        os.chmod(root, 0o700)
        self.trash = Trash(os.path.join(root, TRASH_DIR))

    def path(self, digest: str) -> str:
        return os.path.join(self.blobs, _hex(digest))

    def has(self, digest: str) -> bool:
        return os.path.exists(self.path(digest))

    def read(self, digest: str) -> bytes:
        with open(self.path(digest), "rb") as f:
            return f.read()

    def write(self, digest: str, data: bytes) -> None:
        """Store a small blob (manifest, config) after checking its digest."""
        actual = "sha256:" + hashlib.sha256(data).hexdigest()
        if actual != digest:
            raise DigestMismatch(f"content {digest} has digest {actual}")
        if not self.has(digest):
            atomic_write(self.path(digest), data, mode=0o600)

    def delete(self, digest: str) -> None:
        self.trash.put(self.path(digest))

    def digests(self) -> set[str]:
        return {f"sha256:{name}" for name in os.listdir(self.blobs) if len(name) == 64}

    # -- ingests ----------------------------------------------------------

    def open_ingest(self, digest: str, size: int, part_size: int) -> Ingest:
        """Start or resume the download of ``digest``; the data file has ``size`` bytes."""
        directory = os.path.join(self.ingests, _hex(digest))
        os.makedirs(directory, mode=0o700, exist_ok=True)
        ingest = Ingest(digest, size, directory, part_size)
        try:
            with open(os.path.join(directory, "parts.json")) as f:
                state = json.load(f)
            if (state.get("size"), state.get("part_size")) == (size, part_size):
                ingest.done_parts = {int(i) for i in state.get("done", [])}
        except (OSError, ValueError):
            pass  # nothing usable recorded: start over
        if not os.path.exists(ingest.data_path) or os.path.getsize(ingest.data_path) != size:
            ingest.done_parts.clear()
            with open(ingest.data_path, "wb") as f:
                f.truncate(size)
        try:
            with open(ingest.consumed_path) as f:
                consumed = int(f.read().strip() or 0)
        except (OSError, ValueError):
            consumed = 0
        if consumed:  # an unpack freed these bytes before a crash: fetch them again
            ingest.done_parts = {i for i in ingest.done_parts if ingest.part_range(i)[1] > consumed}
            os.unlink(ingest.consumed_path)
        return ingest

    def commit_ingest(self, ingest: Ingest) -> None:
        """Make a verified ingest a blob (the caller checked the digest while reading it)."""
        fd = os.open(ingest.data_path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(ingest.data_path, self.path(ingest.digest))
        fsync_dir(self.blobs)
        self.trash.put(ingest.directory)

    def abort_ingest(self, digest: str) -> None:
        self.trash.put(os.path.join(self.ingests, _hex(digest)))

    def prune_ingests(self, older_than_seconds: float) -> list[str]:
        """Remove ingests nobody touched for a while (abandoned pulls)."""
        removed = []
        cutoff = time.time() - older_than_seconds
        for name in os.listdir(self.ingests):
            path = os.path.join(self.ingests, name)
            try:
                if os.stat(path).st_mtime < cutoff:
                    self.trash.put(path)
                    removed.append(name)
            except FileNotFoundError:
                continue
        return removed

    def usage(self) -> tuple[int, int]:
        """``(bytes allocated, files)`` of committed blobs and ingests."""
        total = files = 0
        for top in (self.blobs, self.ingests):
            for dirpath, _, names in os.walk(top):
                for name in names:
                    try:
                        st = os.lstat(os.path.join(dirpath, name))
                    except FileNotFoundError:
                        continue
                    total += st.st_blocks * 512
                    files += 1
        return total, files
