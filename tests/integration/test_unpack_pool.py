"""The unpack worker pool: started ahead, reused after a success, never after a failure."""

from __future__ import annotations

import asyncio
import os

import pytest

from agent.images.download import Watermark
from agent.images.unpack_pool import UnpackFailure, UnpackJob, UnpackPool
from tests.support.layers import MALICIOUS, File, Layer, build_tar, layer, sha256_digest

pytestmark = pytest.mark.integration


def job_for(item: Layer, base: str, name: str) -> tuple[UnpackJob, Watermark]:
    blob = f"{base}/{name}.blob"
    with open(blob, "wb") as f:
        f.write(item.blob)
    os.makedirs(f"{base}/{name}")
    job = UnpackJob(
        blob_path=blob,
        blob_size=item.size,
        blob_digest=item.digest,
        diff_id=item.diff_id,
        compression=item.compression,
        dest=f"{base}/{name}",
    )
    watermark = Watermark(item.size)
    watermark.finish()  # the whole blob is there
    return job, watermark


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


async def test_workers_are_prestarted_and_reused_after_a_success(short_dir):
    pool = UnpackPool(warm=1)
    try:
        pool.prestart()
        for _ in range(200):
            if pool._idle:
                break
            await asyncio.sleep(0.02)
        (warm,) = pool._idle
        first = warm.child.pid
        job, watermark = job_for(layer([File("a", b"a")]), short_dir, "one")
        result = await pool.run(job, watermark)
        assert result.ok and result.entries == 1 and result.inodes == 2
        assert [w.child.pid for w in pool._idle] == [first]  # the same process, reused
        job, watermark = job_for(layer([File("b", b"b")]), short_dir, "two")
        assert (await pool.run(job, watermark)).ok
        assert [w.child.pid for w in pool._idle] == [first]
    finally:
        await pool.close()
    assert not alive(first)


async def test_a_worker_that_failed_is_killed_and_replaced(short_dir):
    pool = UnpackPool(warm=1)
    try:
        hostile = Layer.from_tar(build_tar(MALICIOUS["dotdot-name"]), "gzip")
        job, watermark = job_for(hostile, short_dir, "bad")
        result = await pool.run(job, watermark)
        assert not result.ok and result.kind is UnpackFailure.LAYER
        for _ in range(200):  # a replacement is started in the background
            if pool._idle:
                break
            await asyncio.sleep(0.02)
        job, watermark = job_for(layer([File("c", b"c")]), short_dir, "good")
        assert (await pool.run(job, watermark)).ok
    finally:
        await pool.close()


async def test_cancelling_a_run_kills_its_worker(short_dir):
    pool = UnpackPool(warm=0)
    try:
        item = layer([File("w", os.urandom(1 << 20))])
        job, _ = job_for(item, short_dir, "slow")
        never = Watermark(item.size)  # the download never comes
        running = asyncio.ensure_future(pool.run(job, never))
        for _ in range(200):
            if pool._busy:
                break
            await asyncio.sleep(0.01)
        (worker,) = pool._busy
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        assert not alive(worker.child.pid)
        assert pool._idle == []
    finally:
        await pool.close()


async def test_an_artifact_file_is_verified_not_extracted(short_dir):
    """``extract=False``: the blob is a file of an OCI artifact; only its digest counts."""
    data = b"weights" * 1000
    pool = UnpackPool(warm=0)
    try:
        for name, digest, ok in (
            ("good", sha256_digest(data), True),
            ("corrupt", sha256_digest(b"other"), False),
        ):
            blob = f"{short_dir}/{name}.blob"
            with open(blob, "wb") as f:
                f.write(data)
            os.makedirs(f"{short_dir}/{name}")
            job = UnpackJob(
                blob_path=blob,
                blob_size=len(data),
                blob_digest=digest,
                diff_id="",
                compression="",
                dest=f"{short_dir}/{name}",
                extract=False,
            )
            watermark = Watermark(len(data))
            watermark.finish()
            result = await pool.run(job, watermark)
            assert result.ok is ok, result
            if not ok:
                assert result.kind is UnpackFailure.DIGEST
            assert os.listdir(f"{short_dir}/{name}") == []  # nothing extracted
            with open(blob, "rb") as f:
                assert f.read() == data  # the blob itself is left for the agent to place
    finally:
        await pool.close()
