"""A dynamic batcher: concurrent requests are run through the model together.

Owns the queue between request handlers and the model. The first waiting item opens a
batch; the batch closes when it holds ``max_batch_size`` rows or ``max_wait_s`` has passed
since it opened, whichever comes first, and runs in a worker thread (the event loop keeps
answering health checks meanwhile). One batch runs at a time, so while the model is busy
new requests pile up and the next batch takes them all: throughput rises with load
instead of latency. An item bigger than ``max_batch_size`` runs alone.

Must not import ``app`` or any model module.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = ["BatcherStopped", "DynamicBatcher", "QueueFull"]

Item = TypeVar("Item")
Result = TypeVar("Result")
log = logging.getLogger(__name__)


class QueueFull(Exception):
    """More items wait than ``max_queue``: the caller should answer 503 and shed load."""


class BatcherStopped(Exception):
    pass


@dataclass
class _Pending(Generic[Item, Result]):
    item: Item
    rows: int
    future: asyncio.Future[Result] = field(repr=False)


class DynamicBatcher(Generic[Item, Result]):
    """Runs ``run_batch(items) -> results`` (same length, same order) on batches of items.

    ``on_queue_length(n)`` is called whenever the number of waiting items changes and
    ``on_batch(rows)`` once per batch run (both for metrics).
    """

    def __init__(
        self,
        run_batch: Callable[[list[Item]], Sequence[Result]],
        *,
        max_batch_size: int = 32,
        max_wait_s: float = 0.005,
        max_queue: int = 1024,
        on_queue_length: Callable[[int], None] = lambda n: None,
        on_batch: Callable[[int], None] = lambda rows: None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        if max_wait_s < 0:
            raise ValueError("max_wait_s must not be negative")
        self._run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self._on_queue_length = on_queue_length
        self._on_batch = on_batch
        self._queue: asyncio.Queue[_Pending[Item, Result]] = asyncio.Queue()
        self._carry: _Pending[Item, Result] | None = None
        self._worker: asyncio.Task[None] | None = None

    @property
    def queue_length(self) -> int:
        return self._queue.qsize() + (1 if self._carry is not None else 0)

    def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._work())

    async def stop(self) -> None:
        """Stop the worker; items still waiting fail with ``BatcherStopped``."""
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
        waiting = [self._carry] if self._carry is not None else []
        self._carry = None
        while not self._queue.empty():
            waiting.append(self._queue.get_nowait())
        for pending in waiting:
            if not pending.future.done():
                pending.future.set_exception(BatcherStopped("the server is stopping"))
        self._on_queue_length(0)

    async def submit(self, item: Item, rows: int = 1) -> Result:
        """Queue ``item`` (``rows`` rows of the batch) and wait for its result."""
        if self._worker is None:
            raise BatcherStopped("the batcher is not running")
        if self.queue_length >= self.max_queue:
            raise QueueFull(f"{self.queue_length} requests are already waiting")
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(item, rows, future))
        self._on_queue_length(self.queue_length)
        return await future

    async def _next(self, timeout: float | None) -> _Pending[Item, Result] | None:
        if self._carry is not None:
            pending, self._carry = self._carry, None
            return pending
        if timeout is None:
            return await self._queue.get()
        if not self._queue.empty():
            return self._queue.get_nowait()
        if timeout <= 0:
            return None
        try:
            return await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError:
            return None

    async def _collect(self) -> list[_Pending[Item, Result]]:
        loop = asyncio.get_running_loop()
        first = await self._next(None)
        assert first is not None
        batch, rows = [first], first.rows
        deadline = loop.time() + self.max_wait_s
        while rows < self.max_batch_size:
            pending = await self._next(deadline - loop.time())
            if pending is None:
                break
            if rows + pending.rows > self.max_batch_size:
                self._carry = pending  # opens the next batch
                break
            batch.append(pending)
            rows += pending.rows
        self._on_queue_length(self.queue_length)
        return [p for p in batch if not p.future.done()]  # a cancelled caller is skipped

    @staticmethod
    def _fail(batch: list[_Pending[Item, Result]], exc: Exception) -> None:
        log.error("a batch of %d items failed: %r", len(batch), exc, exc_info=exc)
        for pending in batch:
            if not pending.future.done():
                pending.future.set_exception(exc)

    async def _work(self) -> None:
        while True:
            batch = await self._collect()
            if not batch:
                continue
            self._on_batch(sum(p.rows for p in batch))
            try:
                results = await asyncio.to_thread(self._run_batch, [p.item for p in batch])
            except asyncio.CancelledError:  # stop() while the model runs this batch
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(BatcherStopped("the server is stopping"))
                raise
            except Exception as exc:
                self._fail(batch, exc)
                continue
            if len(results) != len(batch):
                message = f"the model returned {len(results)} results for {len(batch)} items"
                self._fail(batch, RuntimeError(message))
                continue
            for pending, result in zip(batch, results, strict=True):
                if not pending.future.done():
                    pending.future.set_result(result)
