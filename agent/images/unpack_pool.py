"""Unpack workers (``unpack_process``), started ahead of time and reused.

Each layer in flight gets a worker process of its own (layers unpack in
parallel, a stuck or hostile one can be killed), but a worker is not started
per layer: starting Python and importing the unpack code costs hundreds of
milliseconds, more than a small layer's whole unpack. The pool starts
``warm`` idle workers when the agent starts, hands one to each job (starting
more when more layers are in flight) and takes it back after a success,
keeping at most ``warm`` idle. A worker that failed,
crashed or was cancelled is killed and reaped, never reused: its pipe may
hold a half-sent job.

The worker reads the blob file behind the download as the watermark rises;
cancelling :meth:`UnpackPool.run` kills and reaps its worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
from dataclasses import asdict, dataclass

from agent._util.proc import Child, spawn
from agent.errors import AgentError
from agent.images.download import Watermark
from agent.images.unpack_process import UnpackFailure

__all__ = ["UnpackFailure", "UnpackJob", "UnpackPool", "UnpackResult"]

log = logging.getLogger(__name__)

_WORKER = [sys.executable, "-m", "agent.images.unpack_process"]
_STDERR_KEEP = 4000


@dataclass(frozen=True, slots=True)
class UnpackJob:
    blob_path: str
    blob_size: int
    blob_digest: str
    diff_id: str
    compression: str
    dest: str
    #: limits the worker enforces (0: none)
    max_bytes: int = 0
    max_entries: int = 0
    reserve_bytes: int = 0
    #: free what was read from the blob file in steps of this (0: keep the blob)
    punch_step: int = 0
    consumed_path: str = ""
    #: False: the blob is an artifact's file, only verified (the agent moves it into place)
    extract: bool = True


@dataclass(frozen=True, slots=True)
class UnpackResult:
    ok: bool
    #: why it failed (None on success)
    kind: UnpackFailure | None = None
    error: str = ""
    entries: int = 0
    #: the disk the unpacked layer takes
    size_bytes: int = 0
    inodes: int = 0
    warnings: tuple[str, ...] = ()


class _Worker:
    """One worker process, its stdout lines and the tail of its stderr."""

    def __init__(self, child: Child) -> None:
        self.child = child
        self.stderr = bytearray()
        self._drain = asyncio.ensure_future(self._read_stderr())

    @classmethod
    async def start(cls) -> _Worker:
        return cls(await spawn(_WORKER, stdin="pipe"))

    async def _read_stderr(self) -> None:
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            while chunk := await self.child.stderr.read(4096):
                self.stderr += chunk
                del self.stderr[:-_STDERR_KEEP]

    @property
    def alive(self) -> bool:
        return self.child.returncode is None

    def stderr_tail(self) -> str:
        return self.stderr.decode(errors="replace").strip()[-2000:] or "(no output)"

    async def stop(self) -> None:
        await self.child.kill_and_reap()
        self._drain.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._drain


class UnpackPool:
    """Worker processes for layer unpacks; one per job in flight, ``warm`` kept idle."""

    def __init__(self, warm: int) -> None:
        self._warm = warm
        self._idle: list[_Worker] = []
        self._busy: set[_Worker] = set()
        self._starting = 0
        self._refill: asyncio.Task[None] | None = None
        self._closed = False

    def prestart(self) -> None:
        """Start the idle workers now (in the background), so the first pull finds them."""
        if not self._closed and self._refill is None:
            self._refill = asyncio.ensure_future(self._fill())
            self._refill.add_done_callback(self._refilled)

    def _refilled(self, task: asyncio.Task[None]) -> None:
        self._refill = None
        if not task.cancelled() and task.exception() is not None:
            log.warning("could not start unpack workers: %s", task.exception())

    def _wants_more(self) -> bool:
        return not self._closed and len(self._idle) + self._starting < self._warm

    async def _fill(self) -> None:
        while self._wants_more():
            self._starting += 1
            try:
                worker = await _Worker.start()
            finally:
                self._starting -= 1
            if self._closed or len(self._idle) >= self._warm:
                await worker.stop()
                return
            self._idle.append(worker)

    async def _take(self) -> _Worker:
        while self._idle:
            worker = self._idle.pop()
            if worker.alive:
                return worker
            await worker.stop()
        return await _Worker.start()

    async def run(self, job: UnpackJob, watermark: Watermark) -> UnpackResult:
        """Unpack ``job`` in a worker; it reads the blob as the watermark rises.

        Cancelling this coroutine kills the worker.
        """
        worker = await self._take()
        self._busy.add(worker)
        reusable = False
        try:
            result = await _exchange(worker, job, watermark)
            reusable = result.ok and worker.alive
            return result
        finally:
            self._busy.discard(worker)
            if reusable and not self._closed and len(self._idle) < self._warm:
                self._idle.append(worker)
            else:
                await asyncio.shield(worker.stop())
                self.prestart()  # a replacement, started now rather than by the next pull

    async def close(self) -> None:
        self._closed = True
        if self._refill is not None:
            self._refill.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refill
        workers, self._idle = [*self._idle, *self._busy], []
        for worker in workers:
            await worker.stop()


async def _exchange(worker: _Worker, job: UnpackJob, watermark: Watermark) -> UnpackResult:
    stdin = worker.child.stdin

    async def feed() -> None:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            stdin.write(json.dumps(asdict(job)).encode() + b"\n")
            async for value in watermark.updates():
                stdin.write(b"%d\n" % value)
                await stdin.drain()

    # A failed download cancels the caller (and so kills the worker); a worker that
    # fails early (a hostile entry) answers before the download ends.
    feeder = asyncio.ensure_future(feed())
    try:
        line = await worker.child.stdout.readline()
    except ValueError:  # a line over the stream's limit: the worker is broken
        line = b""
    finally:
        feeder.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await feeder
    try:
        result = json.loads(line)
    except ValueError:
        if worker.alive:
            with contextlib.suppress(AgentError):
                await worker.child.wait(timeout=5)
        code = worker.child.returncode
        return UnpackResult(
            False,
            UnpackFailure.CRASH,
            f"unpack worker exited with {code}: {worker.stderr_tail()}",
        )
    kind = result.get("kind")
    return UnpackResult(
        ok=bool(result.get("ok")),
        kind=UnpackFailure(kind) if kind else None,
        error=str(result.get("error", "")),
        entries=int(result.get("entries", 0)),
        size_bytes=int(result.get("size_bytes", 0)),
        inodes=int(result.get("inodes", 0)),
        warnings=tuple(result.get("warnings", ())),
    )
