"""The unpack worker: ``python -m agent.images.unpack_process``, one layer at a time.

Decompressing and extracting a multi-GB layer is CPU work that would stall
the event loop and, in threads of the agent, fight over its GIL; a process per
layer in flight lets layers unpack in parallel and lets the agent kill one
that must stop. Workers are started ahead of time and reused (``unpack_pool``),
so a small layer never pays a Python start. Inside, three stages overlap in
threads (hashing, decompression and file writes all release the GIL):

    read blob file + sha256  ->  decompress + sha256  ->  tar extraction (main thread)

Protocol (pipes, so a worker can start while the blob is still downloading):

* stdin, per job: one JSON line ``{blob_path, blob_size, blob_digest,
  diff_id, compression, dest, max_bytes, max_entries, reserve_bytes,
  punch_step, consumed_path, extract}``; then
  one line per update with the number of bytes of the blob file that are
  final (the parent's download watermark); ``-1`` (or stdin closing) before
  ``blob_size`` bytes are final means the download failed.
* stdout, per job: one JSON line, ``{"ok": true, "entries", "bytes",
  "size_bytes", "inodes", "warnings"}`` (``size_bytes``/``inodes``: the disk
  the unpacked layer takes) or ``{"ok": false, "kind", "error"}``.

After a successful job the worker has read every line of it and waits for the
next; after a failure the parent kills it (its pipe may hold stale lines).
The worker verifies both digests itself: the compressed bytes against the
blob digest and the uncompressed stream against the config's diff_id (an
artifact's tar may have none: ``diff_id`` empty). With ``extract`` false the
blob is a file of an OCI artifact, not a tar: the worker only verifies its
digest as it downloads, and the agent moves it into place. It
enforces the layer's limits as it goes: uncompressed bytes, entries, and the
free disk space and inodes it must leave.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import hashlib
import json
import os
import queue
import sys
import threading
from collections.abc import Callable, Iterator
from typing import IO, Any, BinaryIO, cast

from agent._util.fs import disk_usage
from agent.images.tar_apply import LayerError, LimitExceeded, TarSource, apply_layer

__all__ = ["UnpackFailure", "main", "unpack"]

_CHUNK = 1 << 20
_QUEUE_DEPTH = 16
#: How often (uncompressed bytes) the free disk space is checked against the reserve.
_SPACE_CHECK_BYTES = 16 << 20


class UnpackFailure(enum.StrEnum):
    """Why a layer was not unpacked (the ``kind`` of a failed result)."""

    DOWNLOAD = "download"  # the blob never finished downloading
    LAYER = "layer"  # the tar stream is corrupt or hostile
    DIGEST = "digest"  # the compressed bytes do not match the blob digest
    DIFF_ID = "diff_id"  # the uncompressed stream does not match the config's diff_id
    SPACE = "space"  # the disk filled up, or would have gone below the reserve
    LIMIT = "limit"  # the layer is over image.max_layer_* (bytes or entries)
    CRASH = "crash"  # the worker died without a result

    def is_corruption(self) -> bool:
        """The bytes are wrong: the blob must be discarded, never resumed."""
        return self in (UnpackFailure.DIGEST, UnpackFailure.DIFF_ID)


class DownloadEnded(Exception):
    """The parent said the download failed (or closed the pipe) before the blob was complete."""


class BelowReserve(Exception):
    """Extracting further would leave less free disk than the configured reserve."""


class _Stop(Exception):
    """The consumer went away; a producer thread ends quietly."""


_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02


def _punch_hole(fd: int, offset: int, length: int) -> None:
    """Free ``[offset, offset+length)`` of a file (its pages, dirty or not, go too)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    flags = _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE
    if libc.fallocate(fd, flags, offset, length) != 0:
        raise OSError(ctypes.get_errno(), "fallocate(PUNCH_HOLE)")


def read_blob(
    path: str,
    size: int,
    watermarks: IO[bytes],
    *,
    punch_step: int = 0,
    consumed_path: str = "",
) -> Iterator[bytes]:
    """The blob's bytes in order, waiting for the download watermark to pass them.

    With ``punch_step``, what was read is freed from the file in steps of that
    many bytes (the blob is not kept after the unpack): its pages never have to
    be written to disk, and the ingest holds only what the download is ahead.
    ``consumed_path`` records how far that went (before freeing it), so a
    resumed download fetches those parts again.
    """
    fd = os.open(path, (os.O_RDWR if punch_step else os.O_RDONLY) | os.O_CLOEXEC)
    punched = 0
    try:
        position = available = 0
        while position < size:
            if punch_step and position - punched >= punch_step:
                upto = position - position % punch_step
                _record_consumed(consumed_path, upto)
                try:
                    _punch_hole(fd, punched, upto - punched)
                except OSError:
                    punch_step = 0  # a filesystem without hole punching: keep it all
                punched = upto
            while position >= available:
                line = watermarks.readline()
                value = int(line) if line.strip() else -1
                if value < 0:
                    raise DownloadEnded(f"download stopped at {available} of {size} bytes")
                available = min(size, value)
            data = os.pread(fd, min(available - position, 4 * _CHUNK), position)
            if not data:
                raise DownloadEnded(f"blob file is shorter than its watermark ({position})")
            position += len(data)
            yield data
    finally:
        os.close(fd)


def _record_consumed(path: str, offset: int) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(f"{offset}\n")
    os.replace(tmp, path)


class ChunkPipe:
    """A bounded queue of byte chunks between two threads, read like a file."""

    def __init__(self) -> None:
        self._queue: queue.Queue[bytes | BaseException | None] = queue.Queue(_QUEUE_DEPTH)
        self._buffer = memoryview(b"")
        self._closed = threading.Event()
        self._eof = False

    # producer side
    def put(self, item: bytes | BaseException | None) -> None:
        while not self._closed.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue
        raise _Stop

    # consumer side
    def next_chunk(self) -> bytes:
        """The next whole chunk (b"" at the end); what ``read`` had buffered comes first."""
        if self._buffer:
            data, self._buffer = bytes(self._buffer), memoryview(b"")
            return data
        if self._eof:
            return b""
        item = self._queue.get()
        if item is None:
            self._eof = True
            return b""
        if isinstance(item, BaseException):
            raise item
        return item

    def _fill(self) -> bool:
        while not self._buffer and not self._eof:
            item = self._queue.get()
            if item is None:
                self._eof = True
            elif isinstance(item, BaseException):
                raise item
            else:
                self._buffer = memoryview(item)
        return bool(self._buffer)

    def read(self, n: int = -1) -> bytes:
        if not self._fill():
            return b""
        if n < 0 or n >= len(self._buffer):
            data, self._buffer = bytes(self._buffer), memoryview(b"")
        else:
            data, self._buffer = bytes(self._buffer[:n]), self._buffer[n:]
        return data

    def readinto(self, target: Any) -> int:
        """Copy straight into the reader's buffer (one copy, no temporary bytes)."""
        if not self._fill():
            return 0
        n = min(len(target), len(self._buffer))
        target[:n] = self._buffer[:n]
        self._buffer = self._buffer[n:]
        return n

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._closed.set()


def _stage(target: Callable[[], None]) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def _decompressor(source: ChunkPipe, compression: str) -> Any:
    if compression == "gzip":
        from isal import igzip

        return igzip.IGzipFile(fileobj=source, mode="rb")  # type: ignore[no-untyped-call]
    if compression == "zstd":
        import zstandard

        return zstandard.ZstdDecompressor().stream_reader(
            cast(IO[bytes], source), read_size=_CHUNK, read_across_frames=True
        )
    return source


class Pipeline:
    """The three stages; exposes the tar stream and, at the end, both digests."""

    def __init__(self, job: dict[str, Any], watermarks: IO[bytes]) -> None:
        self._job = job
        self._watermarks = watermarks
        self.compressed = ChunkPipe()
        self.tar = ChunkPipe()
        self.blob_digest = hashlib.sha256()
        self.diff_digest = hashlib.sha256()
        self.blob_bytes = 0
        self.tar_bytes = 0
        self._hash_diff = bool(job["diff_id"])
        compression = job["compression"]
        if compression not in ("gzip", "zstd", ""):
            raise LayerError(f"unsupported compression '{compression}'")
        self._threads = [_stage(self._read), _stage(self._decompress)]

    def _read(self) -> None:
        try:
            job = self._job
            chunks = read_blob(
                job["blob_path"],
                int(job["blob_size"]),
                self._watermarks,
                punch_step=int(job.get("punch_step") or 0),
                consumed_path=str(job.get("consumed_path") or ""),
            )
            for chunk in chunks:
                self.blob_digest.update(chunk)
                self.blob_bytes += len(chunk)
                self.compressed.put(chunk)
            self.compressed.put(None)
        except _Stop:
            pass
        except BaseException as exc:
            with contextlib.suppress(_Stop):
                self.compressed.put(exc)

    def _decompress(self) -> None:
        try:
            job = self._job
            max_bytes = int(job.get("max_bytes") or 0)
            reserve = int(job.get("reserve_bytes") or 0)
            next_check = 0
            stream = _decompressor(self.compressed, job["compression"])
            while True:
                chunk = stream.read(_CHUNK)
                if not chunk:
                    break
                self.tar_bytes += len(chunk)
                if max_bytes and self.tar_bytes > max_bytes:
                    raise LimitExceeded(
                        f"the layer unpacks to more than {max_bytes} bytes "
                        "(image.max_layer_unpacked_gb)"
                    )
                if reserve and self.tar_bytes >= next_check:
                    next_check = self.tar_bytes + _SPACE_CHECK_BYTES
                    _check_reserve(job["dest"], reserve)
                if self._hash_diff:
                    self.diff_digest.update(chunk)
                self.tar.put(chunk)
            self.tar.put(None)
        except _Stop:
            pass
        except BaseException as exc:
            with contextlib.suppress(_Stop):
                self.tar.put(exc)

    def drain(self) -> None:
        """Consume what the tar reader left (the diff_id covers trailing padding too)."""
        while self.tar.read(_CHUNK):
            pass

    def close(self) -> None:
        self.tar.close()
        self.compressed.close()
        for thread in self._threads:
            thread.join(timeout=5)


#: Inodes a pull leaves free besides the byte reserve (fewer on a filesystem with
#: under a million: 1% of them), so a layer of millions of tiny files cannot take
#: the last inodes the node needs.
INODE_RESERVE = 10_000


def inode_reserve(st: os.statvfs_result) -> int:
    """Inodes to keep free on ``st``'s filesystem: 0 where it does not count them
    (``f_files`` 0, as btrfs reports), else min(1% of them, ``INODE_RESERVE``)."""
    return min(st.f_files // 100, INODE_RESERVE)


def _check_reserve(path: str, reserve: int) -> None:
    st = os.statvfs(path)
    free = st.f_bavail * st.f_frsize
    if free < reserve:
        raise BelowReserve(
            f"only {free >> 20} MiB left on the image filesystem, under the "
            f"{reserve >> 20} MiB reserve (image.disk_reserve_mb)"
        )
    inodes = inode_reserve(st)
    if st.f_favail < inodes:
        raise BelowReserve(
            f"only {st.f_favail} inodes left on the image filesystem, under the "
            f"{inodes} inode reserve (kept with image.disk_reserve_mb)"
        )


def _checked_reads(read_chunk: Callable[[], bytes], path: str, reserve: int) -> Callable[[], bytes]:
    """``read_chunk``, checking the reserve before each chunk reaches the extractor.

    The decompressor's check runs up to a queue (16 MiB) ahead of the files
    written, and a MiB of tar can hold 2048 empty files: checked here, at most one
    chunk's entries (2048) are created past the last check that passed."""

    def read() -> bytes:
        _check_reserve(path, reserve)
        return read_chunk()

    return read


def unpack(job: dict[str, Any], watermarks: IO[bytes]) -> dict[str, Any]:
    try:
        pipeline = Pipeline(job, watermarks)
    except LayerError as exc:
        return _failure(UnpackFailure.LAYER, str(exc))
    extract = bool(job.get("extract", True))
    try:
        if extract:
            reserve = int(job.get("reserve_bytes") or 0)
            read_chunk = pipeline.tar.next_chunk
            if reserve:
                read_chunk = _checked_reads(read_chunk, job["dest"], reserve)
            stats = apply_layer(
                TarSource(read_chunk),
                job["dest"],
                max_entries=int(job.get("max_entries") or 0),
            )
        pipeline.drain()
    except DownloadEnded as exc:
        return _failure(UnpackFailure.DOWNLOAD, str(exc))
    except LimitExceeded as exc:
        return _failure(UnpackFailure.LIMIT, str(exc))
    except BelowReserve as exc:
        return _failure(UnpackFailure.SPACE, str(exc))
    except LayerError as exc:
        return _failure(UnpackFailure.LAYER, str(exc))
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return _failure(UnpackFailure.SPACE, "no space left on device")
        if exc.errno is None:  # gzip.BadGzipFile and friends: corrupt input
            return _failure(UnpackFailure.LAYER, f"corrupt compressed layer: {exc}")
        return _failure(UnpackFailure.LAYER, f"{exc.filename or ''}: {exc.strerror}")
    except Exception as exc:  # decompressors raise their own types for corrupt input
        return _failure(
            UnpackFailure.LAYER, f"corrupt compressed layer: {type(exc).__name__}: {exc}"
        )
    finally:
        pipeline.close()
    size = int(job["blob_size"])
    if pipeline.blob_bytes != size:
        return _failure(
            UnpackFailure.LAYER, "the compressed stream ended before the end of the blob"
        )
    blob_digest = "sha256:" + pipeline.blob_digest.hexdigest()
    if blob_digest != job["blob_digest"]:
        return _failure(UnpackFailure.DIGEST, f"blob {job['blob_digest']} has digest {blob_digest}")
    diff_id = "sha256:" + pipeline.diff_digest.hexdigest()
    if job["diff_id"] and diff_id != job["diff_id"]:
        return _failure(
            UnpackFailure.DIFF_ID,
            f"uncompressed layer has digest {diff_id}, the image config says {job['diff_id']}",
        )
    if not extract:
        return {
            "ok": True,
            "entries": 1,
            "bytes": pipeline.tar_bytes,
            "size_bytes": size,
            "inodes": 1,
            "warnings": [],
        }
    # Measured here, not in the agent: walking a tree of many files is GIL-bound work.
    size_bytes, inodes = disk_usage(job["dest"])
    return {
        "ok": True,
        "entries": stats.entries,
        "bytes": pipeline.tar_bytes,
        "size_bytes": size_bytes,
        "inodes": inodes,
        "warnings": [w[:300] for w in stats.warnings[:50]],  # one short stdout line
    }


def _failure(kind: UnpackFailure, error: str) -> dict[str, Any]:
    return {"ok": False, "kind": kind.value, "error": error}


def _die_with_parent() -> None:
    """Ask the kernel to kill us if the agent dies (a killed agent leaves no workers)."""
    import ctypes
    import signal

    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def main(stdin: BinaryIO = sys.stdin.buffer, stdout: IO[str] = sys.stdout) -> int:
    """Serve jobs until stdin closes."""
    _die_with_parent()
    # SCHED_BATCH: the same CPU share as before, but a waking event loop (the agent
    # answering an RPC) preempts us rather than waiting for our time slice to end.
    # Not a lower priority: pulls must not crawl on a node busy with pods.
    with contextlib.suppress(OSError, AttributeError):
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    os.umask(0)  # files are created with the layer's own permission bits
    while True:
        line = stdin.readline()
        if not line:
            return 0
        result = unpack(json.loads(line), stdin)
        stdout.write(json.dumps(result) + "\n")
        stdout.flush()


if __name__ == "__main__":
    raise SystemExit(main())
