"""Blob downloads on the download thread's loop, against a small registry stand-in on
127.0.0.1 that answers ranged blob requests (optionally slowly): the blob arrives whole,
the watermark and progress reach the agent's loop, and a cancelled download has
stopped writing by the time the cancellation returns."""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading

import pytest
from aiohttp import web

from agent.config import ImageSection
from agent.images import reference
from agent.images.content import ContentStore
from agent.images.download import Watermark
from agent.images.download_thread import DownloadThread, _Bridge
from agent.images.registry import RegistryClient
from agent.images.repository import Repository

BLOB = os.urandom(3 * 2**20 + 12345)
DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()
PART = 1 << 20


class BlobServer:
    """``GET /v2/<repo>/blobs/<digest>`` with ``Range``, ``delay`` seconds per 64 KiB."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.sent = 0
        self.open_streams = 0
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def _blob(self, request: web.Request) -> web.StreamResponse:
        start, end = 0, len(BLOB) - 1
        header = request.headers.get("Range", "")
        if header.startswith("bytes="):
            first, _, last = header[6:].partition("-")
            start, end = int(first), int(last)
        response = web.StreamResponse(status=206 if header else 200)
        response.headers["Content-Range"] = f"bytes {start}-{end}/{len(BLOB)}"
        response.content_length = end - start + 1
        await response.prepare(request)
        self.open_streams += 1
        try:
            for offset in range(start, end + 1, 1 << 16):
                chunk = BLOB[offset : min(end + 1, offset + (1 << 16))]
                await response.write(chunk)
                self.sent += len(chunk)
                if self.delay:
                    await asyncio.sleep(self.delay)
        finally:
            self.open_streams -= 1
        return response

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/v2/{name:.+}/blobs/{digest}", self._blob)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


async def tasks_on(downloads: DownloadThread) -> int:
    """Tasks running on the download loop now (besides this question)."""
    loop = downloads._loop
    assert loop is not None

    async def count() -> int:
        return len(asyncio.all_tasks()) - 1

    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(count(), loop))


async def run_download(tmp_path, server: BlobServer, *, cancel_after: int = 0):
    client = RegistryClient(ImageSection(), read_timeout=10)
    repo = Repository(client, reference.parse(f"127.0.0.1:{server.port}/test/blob"), None, {})
    store = ContentStore(str(tmp_path / "content"))
    os.makedirs(store.ingests, exist_ok=True)
    ingest = store.open_ingest(DIGEST, len(BLOB), PART)
    watermark = Watermark(len(BLOB))
    received: list[int] = []
    loop_thread = threading.get_ident()
    threads: set[int] = set()
    enough = asyncio.Event()

    def on_bytes(count: int) -> None:
        threads.add(threading.get_ident())
        received.append(count)
        if cancel_after and sum(received) >= cancel_after:
            enough.set()

    downloads = DownloadThread(client)
    try:
        task = asyncio.ensure_future(
            downloads.download(repo, ingest, watermark, asyncio.Semaphore(2), 2, on_bytes)
        )
        if cancel_after:
            await enough.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert await tasks_on(downloads) == 0  # the download itself ended first
            return ingest, watermark, received, downloads
        await task
        assert threads == {loop_thread}  # progress arrives on the agent's loop
        return ingest, watermark, received, downloads
    finally:
        await downloads.close()
        await client.close()


def test_a_blob_downloads_whole_and_the_agents_loop_hears_of_it(tmp_path):
    async def main():
        server = BlobServer()
        await server.start()
        try:
            ingest, watermark, received, _ = await run_download(tmp_path, server)
        finally:
            await server.stop()
        with open(ingest.data_path, "rb") as f:
            assert f.read() == BLOB
        assert watermark.finished and watermark.value == len(BLOB)
        assert sum(received) == len(BLOB)
        assert ingest.complete

    asyncio.run(main())


def test_a_cancelled_download_has_stopped_when_the_cancellation_returns(tmp_path):
    async def main():
        server = BlobServer(delay=0.02)
        await server.start()
        try:
            ingest, watermark, _, _ = await run_download(tmp_path, server, cancel_after=256 << 10)
            sent = server.sent
            with open(ingest.data_path, "rb") as f:
                written = f.read()
            await asyncio.sleep(0.3)
            with open(ingest.data_path, "rb") as f:
                assert f.read() == written  # nothing written after the cancellation
            assert server.sent - sent <= 2 * (1 << 16)  # the connections were dropped
            assert server.open_streams == 0
        finally:
            await server.stop()
        assert not watermark.finished
        assert not ingest.complete

    asyncio.run(main())


def ignore(count: int) -> None:
    pass


def test_a_download_cancelled_as_it_starts_returns_at_once(tmp_path):
    async def main():
        server = BlobServer(delay=0.02)
        await server.start()
        client = RegistryClient(ImageSection(), read_timeout=10)
        downloads = DownloadThread(client)
        repo = Repository(client, reference.parse(f"127.0.0.1:{server.port}/t/b"), None, {})
        store = ContentStore(str(tmp_path / "content"))
        try:
            for _ in range(20):  # before, during and after the download loop starts it
                ingest = store.open_ingest(DIGEST, len(BLOB), PART)
                task = asyncio.ensure_future(
                    downloads.download(
                        repo, ingest, Watermark(len(BLOB)), asyncio.Semaphore(2), 2, ignore
                    )
                )
                await asyncio.sleep(0)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await asyncio.wait_for(task, 5)
                assert await tasks_on(downloads) == 0
        finally:
            await downloads.close()
            await client.close()
            await server.stop()

    asyncio.run(main())


def test_the_bridge_batches_progress_and_the_watermark(tmp_path):
    async def main():
        loop = asyncio.get_running_loop()
        watermark = Watermark(10 << 20)
        received: list[int] = []
        bridge = _Bridge(loop, watermark, received.append)

        def on_download_side() -> None:
            for _ in range(3):
                bridge.add_bytes(300 << 10)  # 900 KiB: held back
            bridge.advance(1 << 20)  # under the 4 MiB step: held back
            bridge.add_bytes(200 << 10)  # 1.1 MiB: sent
            bridge.advance(5 << 20)  # sent
            bridge.add_bytes(10)
            bridge.advance(6 << 20)
            bridge.flush()  # the rest

        await asyncio.to_thread(on_download_side)
        await asyncio.sleep(0.05)
        assert received == [1100 << 10, 10]
        assert watermark.value == 6 << 20 and not watermark.finished
        await asyncio.to_thread(bridge.finish)
        await asyncio.sleep(0.05)
        assert watermark.finished

    asyncio.run(main())
