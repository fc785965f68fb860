"""Unpack a layer in a worker process (``unpack_process``), fed the download watermark.

The worker reads the blob file behind the download as the watermark rises;
cancelling :func:`run_unpack` kills and reaps it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from dataclasses import asdict, dataclass

from agent._util.proc import spawn, stderr_tail
from agent.images.download import Watermark
from agent.images.unpack_process import UnpackFailure

__all__ = ["UnpackFailure", "UnpackJob", "UnpackResult", "run_unpack"]


@dataclass(frozen=True, slots=True)
class UnpackJob:
    blob_path: str
    blob_size: int
    blob_digest: str
    diff_id: str
    compression: str
    dest: str


@dataclass(frozen=True, slots=True)
class UnpackResult:
    ok: bool
    #: why it failed (None on success)
    kind: UnpackFailure | None = None
    error: str = ""
    entries: int = 0
    warnings: tuple[str, ...] = ()


async def run_unpack(job: UnpackJob, watermark: Watermark) -> UnpackResult:
    """Unpack ``job`` in a worker process; it reads the blob as the watermark rises.

    Cancelling this coroutine kills the worker.
    """
    child = await spawn([sys.executable, "-m", "agent.images.unpack_process"], stdin="pipe")
    stdin = child.stdin

    async def feed() -> None:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            stdin.write(json.dumps(asdict(job)).encode() + b"\n")
            async for value in watermark.updates():
                stdin.write(b"%d\n" % value)
                await stdin.drain()
            stdin.close()

    async with child:
        stdout = asyncio.ensure_future(child.stdout.read())
        stderr = asyncio.ensure_future(child.stderr.read())
        feeder = asyncio.ensure_future(feed())
        exited = asyncio.ensure_future(child.wait())
        try:
            # A worker that fails early (a hostile entry) exits before the download ends.
            await asyncio.wait({feeder, exited}, return_when=asyncio.FIRST_COMPLETED)
            out, err = await stdout, await stderr
            code = await exited
        finally:
            for task in (feeder, stdout, stderr, exited):
                task.cancel()
    try:
        result = json.loads(out.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        return UnpackResult(
            False, UnpackFailure.CRASH, f"unpack worker exited with {code}: {stderr_tail(err)}"
        )
    kind = result.get("kind")
    return UnpackResult(
        ok=bool(result.get("ok")),
        kind=UnpackFailure(kind) if kind else None,
        error=str(result.get("error", "")),
        entries=int(result.get("entries", 0)),
        warnings=tuple(result.get("warnings", ())),
    )
