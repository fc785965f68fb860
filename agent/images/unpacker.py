"""Run one unpack worker process for a layer and feed it the download watermark."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from dataclasses import asdict, dataclass
from typing import Any

from agent.images.download import Watermark

__all__ = ["UnpackJob", "UnpackResult", "run_unpack"]


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
    #: "" on success; else download, layer, digest, diff_id, space or crash
    kind: str = ""
    error: str = ""
    entries: int = 0
    warnings: tuple[str, ...] = ()


async def run_unpack(job: UnpackJob, watermark: Watermark) -> UnpackResult:
    """Unpack ``job`` in a worker process; it reads the blob as the watermark rises.

    Cancelling this coroutine kills the worker.
    """
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agent.images.unpack_worker",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    assert proc.stderr is not None
    stdin = proc.stdin

    async def feed() -> None:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            stdin.write(json.dumps(asdict(job)).encode() + b"\n")
            async for value in watermark.updates():
                stdin.write(b"%d\n" % value)
                await stdin.drain()
            stdin.close()

    stdout = asyncio.ensure_future(proc.stdout.read())
    stderr = asyncio.ensure_future(proc.stderr.read())
    feeder = asyncio.ensure_future(feed())
    exited = asyncio.ensure_future(proc.wait())
    try:
        # A worker that fails early (a hostile entry) exits before the download ends.
        await asyncio.wait({feeder, exited}, return_when=asyncio.FIRST_COMPLETED)
        out, err = await stdout, await stderr
        code = await exited
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    finally:
        for task in (feeder, stdout, stderr, exited):
            task.cancel()
    try:
        result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        tail = err.decode(errors="replace").strip()[-1000:]
        return UnpackResult(False, "crash", f"unpack worker exited with {code}: {tail}")
    return UnpackResult(
        ok=bool(result.get("ok")),
        kind=str(result.get("kind", "")),
        error=str(result.get("error", "")),
        entries=int(result.get("entries", 0)),
        warnings=tuple(result.get("warnings", ())),
    )
