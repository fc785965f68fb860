"""Blob downloads in the download process, against a small registry stand-in on
127.0.0.1 that answers ranged blob requests (optionally slowly): the blob arrives whole,
the watermark and progress reach the agent's loop, a cancelled download has stopped
writing by the time the cancellation returns, a child that dies fails its downloads
and is replaced by the next one, and the child's log records reach the agent's log."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import signal
import sys
import threading
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from agent.config import ImageSection
from agent.errors import RegistryUnavailable
from agent.images import reference
from agent.images.content import ContentStore
from agent.images.download import Watermark
from agent.images.download_process import (
    DownloadProcess,
    _ChildBridge,
    _frame,
    _parse_record,
    _RecordLine,
)
from agent.images.registry import RegistryClient
from agent.images.repository import Repository

BLOB = os.urandom(3 * 2**20 + 12345)
DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()
PART = 1 << 20


class BlobServer:
    """``GET /v2/<repo>/blobs/<digest>`` with ``Range``, ``delay`` seconds per 64 KiB."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        #: blob requests still to answer ``503`` (what makes a client retry and log it)
        self.unavailable = 0
        self.sent = 0
        self.open_streams = 0
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def _blob(self, request: web.Request) -> web.StreamResponse:
        if self.unavailable:
            self.unavailable -= 1
            return web.Response(status=503)
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


def in_flight(downloads: DownloadProcess) -> int:
    """Downloads the child has not reported ended (it reports once its task finished)."""
    running = downloads._running
    return len(running.jobs) if running is not None else 0


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

    downloads = DownloadProcess(client)
    try:
        task = asyncio.ensure_future(
            downloads.download(repo, ingest, watermark, asyncio.Semaphore(2), 2, on_bytes)
        )
        if cancel_after:
            await enough.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert in_flight(downloads) == 0  # the child's download itself ended first
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


@contextlib.asynccontextmanager
async def slow_node(
    tmp_path,
) -> AsyncIterator[tuple[BlobServer, DownloadProcess, Repository, ContentStore]]:
    """A slow blob server, a download process, the repository and a content store."""
    server = BlobServer(delay=0.02)
    await server.start()
    client = RegistryClient(ImageSection(), read_timeout=10)
    downloads = DownloadProcess(client)
    repo = Repository(client, reference.parse(f"127.0.0.1:{server.port}/t/b"), None, {})
    store = ContentStore(str(tmp_path / "content"))
    os.makedirs(store.ingests, exist_ok=True)
    try:
        yield server, downloads, repo, store
    finally:
        await downloads.close()
        await client.close()
        await server.stop()


def test_a_download_cancelled_as_it_starts_returns_at_once(tmp_path):
    async def main():
        async with slow_node(tmp_path) as (_, downloads, repo, store):
            for _ in range(20):  # before, during and after the child starts it
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
                assert in_flight(downloads) == 0

    asyncio.run(main())


async def a_download_under_way(
    downloads: DownloadProcess, repo: Repository, store: ContentStore
) -> asyncio.Task[None]:
    """A download of the slow node's blob, once its first bytes have arrived."""
    started = asyncio.Event()
    ingest = store.open_ingest(DIGEST, len(BLOB), PART)
    task = asyncio.ensure_future(
        downloads.download(
            repo, ingest, Watermark(len(BLOB)), asyncio.Semaphore(2), 2, lambda _: started.set()
        )
    )
    await asyncio.wait_for(started.wait(), 30)
    return task


def test_a_child_that_dies_fails_its_downloads_and_the_next_one_starts_another(tmp_path):
    async def main():
        async with slow_node(tmp_path) as (server, downloads, repo, store):
            task = await a_download_under_way(downloads, repo, store)
            assert downloads._running is not None
            first = downloads._running.child.pid
            os.kill(first, signal.SIGKILL)
            with pytest.raises(RegistryUnavailable, match="download process ended"):
                await asyncio.wait_for(task, 10)
            server.delay = 0.0
            again = store.open_ingest(DIGEST, len(BLOB), PART)
            watermark = Watermark(len(BLOB))
            await downloads.download(repo, again, watermark, asyncio.Semaphore(2), 2, ignore)
            assert watermark.finished and again.complete
            assert downloads._running is not None and downloads._running.child.pid != first

    asyncio.run(main())


def test_a_download_the_child_stops_on_its_own_fails_rather_than_looks_cancelled(tmp_path):
    """Only the pull cancels its download: when the child's loop ends under a download
    (it stops, or fails), the pull gets an error, never a CancelledError it did not ask for."""

    async def main():
        async with slow_node(tmp_path) as (_server, downloads, repo, store):
            task = await a_download_under_way(downloads, repo, store)
            assert downloads._running is not None
            downloads._running.child.stdin.write(_frame(("stop", 0)))  # not from this pull
            with pytest.raises(RegistryUnavailable, match="stopped this download"):
                await asyncio.wait_for(task, 10)

    asyncio.run(main())


def test_the_bridge_batches_progress_and_the_watermark():
    sent: list[tuple[Any, ...]] = []
    bridge = _ChildBridge(sent.append, 7, 10 << 20)
    for _ in range(3):
        bridge.add_bytes(300 << 10)  # 900 KiB: held back
    bridge.advance(1 << 20)  # under the 4 MiB step: held back
    assert sent == []
    bridge.add_bytes(200 << 10)  # 1.1 MiB: sent
    bridge.advance(5 << 20)  # sent
    bridge.add_bytes(10)
    bridge.advance(6 << 20)
    bridge.flush()  # the rest
    assert sent == [
        ("bytes", 7, 1100 << 10),
        ("advance", 7, 5 << 20),
        ("bytes", 7, 10),
        ("advance", 7, 6 << 20),
    ]
    bridge.finish()
    assert sent[-1] == ("finish", 7)


def test_a_record_line_keeps_level_logger_and_a_multiline_message():
    try:
        raise ValueError("inside")
    except ValueError:
        record = logging.LogRecord(
            "agent.images.registry", logging.INFO, __file__, 1, "a\tb\nc %s", ("d",), None
        )
        record.exc_info = sys.exc_info()
    line = _RecordLine().format(record)
    assert "\n" not in line  # one line a record, whatever the message holds
    parsed = _parse_record(line)
    assert parsed is not None
    level, name, message = parsed
    assert (level, name) == (logging.INFO, "agent.images.registry")
    assert message.startswith("a\tb\nc d\nTraceback (most recent call last):")
    assert message.endswith("ValueError: inside")
    assert _parse_record("Traceback (most recent call last):") is None
    assert _parse_record('  File "x.py", line 1, in <module>') is None
    assert _parse_record('NOTALEVEL\tagent\t"x"') is None


def child_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if hasattr(r, "download_process")]


def test_the_childs_records_reach_the_agents_log_at_the_agents_level(tmp_path, caplog):
    async def download_with_a_retry(downloads, server, repo, where: str) -> bytes:
        """What the child wrote on stderr for a download its first request of fails."""
        server.unavailable = 1
        store = ContentStore(str(tmp_path / where))
        os.makedirs(store.ingests, exist_ok=True)
        ingest = store.open_ingest(DIGEST, len(BLOB), PART)
        watermark = Watermark(len(BLOB))
        await downloads.download(repo, ingest, watermark, asyncio.Semaphore(1), 1, ignore)
        assert watermark.finished and server.unavailable == 0  # it did retry
        running = downloads._running
        assert running is not None
        await downloads.close()  # read its stderr to the end
        return bytes(running.stderr)

    async def main():
        async with slow_node(tmp_path) as (server, downloads, repo, _):
            server.delay = 0.0
            caplog.set_level(logging.WARNING, logger="agent")
            stderr = await download_with_a_retry(downloads, server, repo, "at-warning")
            assert b"HTTP 503" not in stderr  # at WARNING the child does not even write it
            assert child_records(caplog) == []

            caplog.set_level(logging.INFO, logger="agent")
            again = DownloadProcess(downloads._client)
            stderr = await download_with_a_retry(again, server, repo, "at-info")
            assert b"HTTP 503 (attempt 1)" in stderr  # the raw tail keeps it too
            return again

    asyncio.run(main())
    (retried,) = [r for r in child_records(caplog) if "HTTP 503" in r.getMessage()]
    assert retried.name == "agent.images.registry"
    assert retried.levelno == logging.INFO
    assert retried.getMessage().startswith("download process: GET 127.0.0.1:")
    assert retried.getMessage().endswith("/v2/t/b/blobs/" + DIGEST + ": HTTP 503 (attempt 1)")
    assert getattr(retried, "download_process", None) not in (None, os.getpid())  # its pid


class UnreadableInTheChild:
    """Pickles here; unpickling it raises, as the settings of another version might."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (int, ("settings of another version",))


def test_a_childs_crash_traceback_reaches_the_error_and_the_log(tmp_path, caplog, monkeypatch):
    async def main():
        async with slow_node(tmp_path) as (_, downloads, repo, store):
            monkeypatch.setattr(downloads._client, "child_settings", UnreadableInTheChild)
            ingest = store.open_ingest(DIGEST, len(BLOB), PART)
            with pytest.raises(RegistryUnavailable, match="download process ended") as failed:
                await asyncio.wait_for(
                    downloads.download(
                        repo, ingest, Watermark(len(BLOB)), asyncio.Semaphore(2), 2, ignore
                    ),
                    30,
                )
            return str(failed.value)

    error = asyncio.run(main())
    assert "Traceback (most recent call last):" in error
    assert error.endswith(
        "ValueError: invalid literal for int() with base 10: 'settings of another version'"
    )
    logged = [r.getMessage() for r in child_records(caplog) if r.levelno == logging.WARNING]
    assert "download process: Traceback (most recent call last):" in logged
    assert logged[-1] == (
        "download process: ValueError: invalid literal for int() with base 10: "
        "'settings of another version'"
    )
