"""Blob bytes move on an event loop of their own, in a thread, not on the agent's.

During a multi-GB pull the agent's loop used to receive every chunk of every
blob (thousands of callbacks a second, about a third of its time), and a
kubelet's ``ListContainers`` waited behind them. Here :func:`download_blob`
runs on a second loop in a dedicated thread, with a registry client of its own
(its own connections; the token cache and every trust rule shared with the
agent's client). The agent's loop sees only what it needs: the watermark the
unpack worker follows and the pull's progress, both forwarded in batches.
Cancelling :meth:`DownloadThread.download` cancels the download and returns
only once it stopped writing into the ingest.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable

from agent.images.content import Ingest
from agent.images.download import Watermark, download_blob
from agent.images.registry import RegistryClient
from agent.images.repository import Repository

__all__ = ["DownloadThread"]

#: Progress (bytes received) is forwarded to the agent's loop at least this often.
_PROGRESS_BYTES = 1 << 20
#: The watermark is forwarded when it moved this far (what wakes the unpack worker).
_WATERMARK_BYTES = 4 << 20


class DownloadThread:
    """The thread and loop blob downloads run on, started with the first one."""

    def __init__(self, client: RegistryClient) -> None:
        self._agent_client = client
        self._client: RegistryClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def _start(self) -> tuple[asyncio.AbstractEventLoop, RegistryClient]:
        if self._loop is None or self._client is None:
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, name="blob-downloads", daemon=True)
            thread.start()
            self._loop, self._thread = loop, thread
            self._client = self._agent_client.sibling()
        return self._loop, self._client

    async def download(
        self,
        repo: Repository,
        ingest: Ingest,
        watermark: Watermark,
        connections: asyncio.Semaphore,
        parallel: int,
        on_bytes: Callable[[int], None],
        reserve: int = 0,
    ) -> None:
        """:func:`download_blob` on the download loop. ``connections`` is the pull's own
        semaphore and is only ever used there."""
        agent_loop = asyncio.get_running_loop()
        loop, client = self._start()
        bridge = _Bridge(agent_loop, watermark, on_bytes)
        done: asyncio.Future[None] = agent_loop.create_future()
        tasks: list[asyncio.Task[None]] = []

        def start() -> None:  # on the download loop
            task = loop.create_task(
                download_blob(
                    repo.with_client(client),
                    ingest,
                    bridge,
                    connections,
                    parallel,
                    bridge.add_bytes,
                    reserve,
                )
            )
            tasks.append(task)
            task.add_done_callback(finished)

        def finished(task: asyncio.Task[None]) -> None:  # on the download loop
            bridge.flush()  # queued before the outcome: the watermark is current first
            agent_loop.call_soon_threadsafe(_settle, done, task)

        loop.call_soon_threadsafe(start)
        try:
            await asyncio.shield(done)
        except asyncio.CancelledError:
            loop.call_soon_threadsafe(lambda: tasks[0].cancel())  # after start(): FIFO
            await _until_done(done)  # never return while it may still write
            raise

    async def close(self) -> None:
        loop, thread, client = self._loop, self._thread, self._client
        if loop is None or thread is None or client is None:
            return
        self._loop = self._thread = self._client = None
        with contextlib.suppress(Exception):
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(client.close(), loop))
        loop.call_soon_threadsafe(loop.stop)
        await asyncio.to_thread(thread.join)
        loop.close()


class _Bridge:
    """The download's side of the watermark and the progress callback: it runs on the
    download loop and hands both to the agent's loop in batches."""

    def __init__(
        self,
        agent_loop: asyncio.AbstractEventLoop,
        watermark: Watermark,
        on_bytes: Callable[[int], None],
    ) -> None:
        self._agent_loop = agent_loop
        self._watermark = watermark
        self._on_bytes = on_bytes
        self._bytes = 0
        self._value = 0
        self._sent_value = 0

    def add_bytes(self, count: int) -> None:
        self._bytes += count
        if self._bytes >= _PROGRESS_BYTES:
            self._send_bytes()

    def advance(self, value: int) -> None:
        if value <= self._value:
            return
        self._value = value
        if value - self._sent_value >= _WATERMARK_BYTES or value >= self._watermark.size:
            self._sent_value = value
            self._agent_loop.call_soon_threadsafe(self._watermark.advance, value)

    def finish(self) -> None:
        self._send_bytes()
        self._agent_loop.call_soon_threadsafe(self._watermark.finish)

    def flush(self) -> None:
        """What is still held back (the download ended, well or not)."""
        self._send_bytes()
        if self._value > self._sent_value:
            self._sent_value = self._value
            self._agent_loop.call_soon_threadsafe(self._watermark.advance, self._value)

    def _send_bytes(self) -> None:
        count, self._bytes = self._bytes, 0
        if count:
            self._agent_loop.call_soon_threadsafe(self._on_bytes, count)


def _settle(done: asyncio.Future[None], task: asyncio.Task[None]) -> None:
    """``task``'s outcome (it ran on the download loop) onto ``done`` (on the agent's)."""
    if done.done():
        return
    if task.cancelled():
        done.cancel()
    elif (error := task.exception()) is not None:
        done.set_exception(error)
    else:
        done.set_result(None)


async def _until_done(future: asyncio.Future[None]) -> None:
    """Wait for ``future`` even if the waiting task is cancelled again meanwhile."""
    while not future.done():
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait([future])
    if not future.cancelled():
        future.exception()  # retrieved: the caller raises its own cancellation
