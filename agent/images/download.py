"""Download one blob into its ingest, in parallel parts, resumably.

The blob is split into fixed-size parts fetched with ``Range`` requests, up
to the pull's connection limit at a time, each written at its offset. While
parts arrive, :class:`Watermark` tracks how many bytes from the start are
final so the unpack worker can decompress behind the download. A broken or
stalled connection resumes its part where it stopped; parts finished before
a crash are not fetched again. A registry without ``Range`` support gets one
plain sequential request.

It runs in the download process (``download_process``), not the agent's, and
that process's loop only receives bytes: every file write (a ``pwritev`` per
megabyte, which can block for long when the kernel throttles dirty pages) and
every ``parts.json`` update runs in a worker thread. Writes keep ``reserve``
bytes (and an inode reserve) free on the filesystem: the download stops with
``RESOURCE_EXHAUSTED`` before the disk fills.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
from collections.abc import AsyncIterator, Callable
from typing import Protocol

import aiohttp

from agent.errors import AgentError, RegistryUnavailable, ResourceExhausted
from agent.images.content import Ingest
from agent.images.repository import Repository
from agent.images.unpack_process import inode_reserve

__all__ = ["Watermark", "WatermarkSink", "check_free_space", "download_blob"]

_FLUSH_BYTES = 1 << 20
#: pwritev takes at most IOV_MAX (1024) buffers.
_MAX_IOVECS = 512
_PART_ATTEMPTS = 5
#: How far the watermark must move before the unpack worker is told.
_NOTIFY_BYTES = 4 << 20
#: How often (bytes written) the free space is checked against the reserve.
_SPACE_CHECK_BYTES = 16 << 20


def check_free_space(path: str, needed: int, reserve: int) -> None:
    """Refuse (``ResourceExhausted``) if writing ``needed`` bytes would leave less
    than ``reserve`` free on the filesystem of ``path``, or if it is already under
    its inode reserve (``unpack_process.inode_reserve``): the layer's files need them."""
    st = os.statvfs(path)
    free = st.f_bavail * st.f_frsize
    if free - needed < reserve:
        raise ResourceExhausted(
            f"not enough disk space for the image: {free >> 20} MiB free, "
            f"{needed >> 20} MiB to write and a {reserve >> 20} MiB reserve to keep "
            "(image.disk_reserve_mb)"
        )
    inodes = inode_reserve(st)
    if st.f_favail < inodes:
        raise ResourceExhausted(
            f"not enough inodes for the image: {st.f_favail} free, under the "
            f"{inodes} inode reserve (kept with image.disk_reserve_mb)"
        )


class WatermarkSink(Protocol):
    """What a download tells about its progress from the start of the blob."""

    def advance(self, value: int) -> None: ...

    def finish(self) -> None: ...


class Watermark:
    """How many leading bytes of a blob are final; observed by the unpacker."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.value = 0
        self.finished = False
        self._changed = asyncio.Event()
        self._told = 0

    def advance(self, value: int) -> None:
        if value > self.value:
            self.value = value
            if value - self._told >= _NOTIFY_BYTES or value >= self.size:
                self._told = value
                self._changed.set()

    def finish(self) -> None:
        self.value = self.size
        self.finished = True
        self._changed.set()

    async def updates(self) -> AsyncIterator[int]:
        """Each new value until the blob is complete (then stops)."""
        sent = -1
        while True:
            if self.value != sent:
                sent = self.value
                yield sent
            if self.finished and sent >= self.size:
                return
            self._changed.clear()
            if self.value == sent and not self.finished:
                await self._changed.wait()


class _Parts:
    """Bytes written per part, to compute the contiguous watermark."""

    def __init__(self, ingest: Ingest) -> None:
        self.ingest = ingest
        self.written = [0] * ingest.part_count
        for index in ingest.done_parts:
            start, end = ingest.part_range(index)
            self.written[index] = end - start

    def contiguous(self) -> int:
        total = 0
        for index, written in enumerate(self.written):
            start, end = self.ingest.part_range(index)
            total += written
            if written < end - start:
                break
        return total


class _RangeIgnored(Exception):
    """The registry answered a Range request with the whole blob."""


class _Writer:
    """Writes at offsets of the ingest file, in a thread, minding the disk reserve."""

    def __init__(self, fd: int, path: str, reserve: int) -> None:
        self.fd = fd
        self.path = path
        self.reserve = reserve
        self._since_check = 0

    def write(self, views: list[memoryview], position: int) -> None:
        """``pwritev`` all of ``views`` at ``position`` (blocking: runs in a thread)."""
        total = sum(len(v) for v in views)
        self._since_check += total
        if self.reserve and self._since_check >= _SPACE_CHECK_BYTES:
            self._since_check = 0
            check_free_space(self.path, 0, self.reserve)
        while views:
            try:
                written = os.pwritev(self.fd, views, position)
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise ResourceExhausted("no space left on device for the image") from None
                raise
            position += written
            while views and written >= len(views[0]):
                written -= len(views.pop(0))
            if views and written:
                views[0] = views[0][written:]


async def download_blob(
    repo: Repository,
    ingest: Ingest,
    watermark: WatermarkSink,
    connections: asyncio.Semaphore,
    parallel: int,
    on_bytes: Callable[[int], None],
    reserve: int = 0,
) -> None:
    """Fetch every part of ``ingest`` not yet done; ``watermark`` follows along.

    ``reserve`` bytes must stay free on the ingest's filesystem (checked before
    the first byte and while writing).
    """
    parts = _Parts(ingest)
    watermark.advance(parts.contiguous())
    pending = [i for i in range(ingest.part_count) if i not in ingest.done_parts]
    if reserve and pending:
        missing = sum(ingest.part_range(i)[1] - ingest.part_range(i)[0] for i in pending)
        check_free_space(ingest.directory, missing, reserve)
    fd = os.open(ingest.data_path, os.O_WRONLY | os.O_CLOEXEC)
    writer = _Writer(fd, ingest.directory, reserve)
    try:
        if pending:
            try:
                await _fetch_parts(
                    repo, ingest, pending, writer, parts, watermark, connections, parallel, on_bytes
                )
            except _RangeIgnored:
                async with connections:
                    await _fetch_whole(repo, ingest, writer, watermark, on_bytes)
    finally:
        os.close(fd)
    watermark.finish()


async def _fetch_parts(
    repo: Repository,
    ingest: Ingest,
    pending: list[int],
    writer: _Writer,
    parts: _Parts,
    watermark: WatermarkSink,
    connections: asyncio.Semaphore,
    parallel: int,
    on_bytes: Callable[[int], None],
) -> None:
    queue = list(pending)

    async def worker() -> None:
        while queue:
            index = queue.pop(0)
            async with connections:
                await _fetch_part(repo, ingest, index, writer, parts, watermark, on_bytes)

    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(min(len(pending), parallel)):
                group.create_task(worker())
    except* _RangeIgnored:
        raise _RangeIgnored from None
    except* AgentError as errors:
        raise errors.exceptions[0] from None


async def _fetch_part(
    repo: Repository,
    ingest: Ingest,
    index: int,
    writer: _Writer,
    parts: _Parts,
    watermark: WatermarkSink,
    on_bytes: Callable[[int], None],
) -> None:
    start, end = ingest.part_range(index)

    def on_written(count: int) -> None:
        parts.written[index] += count
        watermark.advance(parts.contiguous())

    error = ""
    for _ in range(_PART_ATTEMPTS):
        offset = start + parts.written[index]
        if offset >= end:
            break
        try:
            async with repo.open_blob(ingest.digest, offset, end) as body:
                if not body.ranged:
                    raise _RangeIgnored
                await _write_stream(body.chunks(), writer, offset, end, on_written, on_bytes)
        except (aiohttp.ClientError, TimeoutError) as exc:
            error = str(exc) or type(exc).__name__
            continue  # resume this part after what was written
    if start + parts.written[index] < end:
        raise RegistryUnavailable(f"blob {ingest.digest}: download kept failing ({error})")
    await asyncio.to_thread(ingest.mark_done, index)


async def _fetch_whole(
    repo: Repository,
    ingest: Ingest,
    writer: _Writer,
    watermark: WatermarkSink,
    on_bytes: Callable[[int], None],
) -> None:
    """One sequential download, for registries that ignore ``Range``."""
    position = 0

    def on_written(count: int) -> None:
        nonlocal position
        position += count
        watermark.advance(position)

    error = ""
    for _ in range(_PART_ATTEMPTS):
        try:
            async with repo.open_blob(ingest.digest, position, ingest.size) as body:
                chunks = body.chunks() if body.ranged else _skip(body.chunks(), position)
                await _write_stream(chunks, writer, position, ingest.size, on_written, on_bytes)
            break
        except (aiohttp.ClientError, TimeoutError) as exc:
            error = str(exc) or type(exc).__name__
    if position < ingest.size:
        raise RegistryUnavailable(f"blob {ingest.digest}: download kept failing ({error})")
    for index in range(ingest.part_count):
        await asyncio.to_thread(ingest.mark_done, index)


async def _skip(chunks: AsyncIterator[bytes], count: int) -> AsyncIterator[bytes]:
    async for chunk in chunks:
        if count >= len(chunk):
            count -= len(chunk)
            continue
        yield chunk[count:]
        count = 0


async def _write_stream(
    chunks: AsyncIterator[bytes],
    writer: _Writer,
    offset: int,
    end: int,
    on_written: Callable[[int], None],
    on_bytes: Callable[[int], None],
) -> None:
    """Write ``chunks`` at ``offset``; what arrived is kept even if the stream breaks.

    Chunks are gathered and written with one ``pwritev`` per megabyte (no
    joining copy, few system calls) in a thread, while the next megabyte
    arrives: at most one write of this stream is in flight.
    """
    pending: list[bytes] = []
    pending_bytes = 0
    position = offset
    in_flight: asyncio.Future[None] | None = None
    in_flight_bytes = 0

    async def settle() -> None:
        nonlocal in_flight
        if in_flight is not None:
            future, in_flight = in_flight, None
            await future
            on_written(in_flight_bytes)

    async def flush() -> None:
        nonlocal position, pending, pending_bytes, in_flight, in_flight_bytes
        await settle()
        if not pending:
            return
        views = [memoryview(chunk) for chunk in pending]
        loop = asyncio.get_running_loop()
        in_flight = loop.run_in_executor(None, writer.write, views, position)
        in_flight_bytes = pending_bytes
        position += pending_bytes
        pending, pending_bytes = [], 0

    try:
        async for chunk in chunks:
            if position + pending_bytes + len(chunk) > end:
                raise RegistryUnavailable("the registry sent more bytes than the blob has")
            pending.append(chunk)
            pending_bytes += len(chunk)
            on_bytes(len(chunk))
            if pending_bytes >= _FLUSH_BYTES or len(pending) >= _MAX_IOVECS:
                await flush()
    except (aiohttp.ClientError, TimeoutError):
        # Keep what arrived before the connection broke: the retry resumes after it.
        with contextlib.suppress(OSError, AgentError):
            await flush()
            await settle()
        raise
    except BaseException:
        if in_flight is not None:  # never leave a write running on a closed fd
            with contextlib.suppress(BaseException):
                await asyncio.shield(in_flight)
        raise
    await flush()
    await settle()
    if position < end:
        raise aiohttp.ClientPayloadError(f"connection closed at byte {position} of {end}")
