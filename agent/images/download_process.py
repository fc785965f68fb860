"""Blob bytes move in a process of their own, not in the agent's.

During a multi-GB pull the agent's interpreter used to receive every chunk of
every blob: on its own loop first (a third of its time), then on a second loop
in a thread, where the chunks still held the agent's GIL about a fifth of the
time and a kubelet's ``ListContainers`` waited for it. Here
:func:`download_blob` runs in a long-lived child process (started with the first
download, again after a crash) with a registry client of its own: the same
settings, so the same trust, mirror and redirect rules, its own connections and
token cache. The agent's loop sees only the watermark the unpack worker follows
and the pull's progress, both in batches over a pipe. Cancelling
:meth:`DownloadProcess.download` cancels the download there and returns only once
the child stopped writing into the ingest.

The child's log records reach the agent's log: it writes each as one line on its
stderr (:class:`_RecordLine`), at the level the agent's ``agent`` logger has, and
the agent re-logs each line under the same logger and level, marked as from the
download process; other lines (a traceback when it crashes) are logged as
warnings. The raw tail of its stderr goes into the error of a child that died.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import os
import pickle
import struct
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from agent._util.proc import Child, spawn
from agent.errors import RegistryUnavailable
from agent.images.auth import Credentials
from agent.images.content import Ingest
from agent.images.download import Watermark, download_blob
from agent.images.reference import Reference
from agent.images.registry import RegistryClient
from agent.images.repository import Repository

__all__ = ["DownloadProcess"]

#: Not ``__name__``: in the child this module is ``__main__``.
log = logging.getLogger("agent.images.download_process")

#: Progress (bytes received) is sent to the agent at least this often.
_PROGRESS_BYTES = 1 << 20
#: The watermark is sent when it moved this far (what wakes the unpack worker).
_WATERMARK_BYTES = 4 << 20

_CHILD = [sys.executable, "-m", "agent.images.download_process"]
_FRAME = struct.Struct(">I")  # each message: its length, then its pickle
_STDERR_KEEP = 4000
#: The level the child logs at (the agent's), a number, in its environment.
_LOG_LEVEL_ENV = "MODEL_AGENT_DOWNLOAD_LOG_LEVEL"
#: A line of the child's stderr longer than this is re-logged in pieces.
_LINE_MAX = 64 << 10


def _frame(message: tuple[Any, ...]) -> bytes:
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _FRAME.pack(len(body)) + body


async def _read_frame(reader: asyncio.StreamReader) -> tuple[Any, ...]:
    (length,) = _FRAME.unpack(await reader.readexactly(_FRAME.size))
    message: tuple[Any, ...] = pickle.loads(await reader.readexactly(length))
    return message


@dataclass(frozen=True, slots=True)
class _Job:
    """One blob download, as the child needs it (everything picklable)."""

    ref: Reference
    credentials: Credentials | None
    node_credentials: Mapping[str, Credentials]
    digest: str
    size: int
    directory: str
    part_size: int
    done_parts: frozenset[int]
    parallel: int
    reserve: int
    #: the pull whose connection budget this download shares, and that budget
    budget_key: int
    budget: int
    #: the agent's live tokens for this repository (no second token exchange a pull)
    tokens: list[tuple[tuple[str, ...], str, float]] = field(default_factory=list)


@dataclass(slots=True)
class _Waiting:
    """A download the agent waits on: where the child's messages go."""

    watermark: Watermark
    on_bytes: Callable[[int], None]
    done: asyncio.Future[None]
    #: the parts the child finished (it records them in the ingest's parts.json too)
    done_parts: list[int] = field(default_factory=list)
    #: the agent asked the child to cancel it (else a cancellation there is a failure)
    cancel_asked: bool = False


@dataclass(slots=True)
class _Running:
    """The child process, what the agent waits on from it, and its readers."""

    child: Child
    jobs: dict[int, _Waiting] = field(default_factory=dict)
    next_id: int = 0
    stderr: bytearray = field(default_factory=bytearray)
    readers: list[asyncio.Task[None]] = field(default_factory=list)
    #: the reader of its stderr (one of ``readers``), done once the child closed it
    drain: asyncio.Task[None] | None = None


class DownloadProcess:
    """The process blob downloads run in, started with the first one."""

    def __init__(self, client: RegistryClient) -> None:
        self._client = client
        self._running: _Running | None = None
        self._starting = asyncio.Lock()
        self._prestarted: asyncio.Task[_Running] | None = None

    def prestart(self) -> None:
        """Start the child now, in the background: the first pull then finds it running
        (starting Python and importing the download code takes a few hundred ms)."""
        if self._running is None and self._prestarted is None:
            self._prestarted = asyncio.ensure_future(self._start())
            self._prestarted.add_done_callback(_prestarted)

    async def _start(self) -> _Running:
        async with self._starting:
            if self._running is None:
                level = logging.getLogger("agent").getEffectiveLevel()
                env = {**os.environ, _LOG_LEVEL_ENV: str(level)}
                child = await spawn(_CHILD, stdin="pipe", env=env)
                running = self._running = _Running(child)
                child.stdin.write(_frame(self._client.child_settings()))
                # A context of their own: the RPC that happened to start the child
                # (``agent.log.current_rpc``) must not tag every line it logs later.
                loop, context = asyncio.get_running_loop(), contextvars.Context()
                running.drain = loop.create_task(_drain_stderr(running), context=context)
                running.readers = [
                    loop.create_task(self._receive(running), context=context),
                    running.drain,
                ]
            return self._running

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
        """:func:`download_blob` in the child. ``connections`` is the pull's own budget;
        this side never acquires it, the child keeps one semaphore of its size a pull."""
        running = await self._start()
        job_id, running.next_id = running.next_id, running.next_id + 1
        credentials, node_credentials = repo.credentials_for_child()
        job = _Job(
            ref=repo.ref,
            credentials=credentials,
            node_credentials=node_credentials,
            digest=ingest.digest,
            size=ingest.size,
            directory=ingest.directory,
            part_size=ingest.part_size,
            done_parts=frozenset(ingest.done_parts),
            parallel=parallel,
            reserve=reserve,
            budget_key=id(connections),
            budget=connections._value,  # its size: nothing on this side acquires it
            tokens=self._client.tokens_for(repo.scope),
        )
        waiting = _Waiting(watermark, on_bytes, asyncio.get_running_loop().create_future())
        running.jobs[job_id] = waiting
        running.child.stdin.write(_frame(("download", job_id, job)))
        try:
            await asyncio.shield(waiting.done)
        except asyncio.CancelledError:
            waiting.cancel_asked = True
            with contextlib.suppress(ConnectionError):
                running.child.stdin.write(_frame(("cancel", job_id)))
            await _until_done(waiting.done)  # never return while it may still write
            raise
        finally:
            ingest.done_parts.update(waiting.done_parts)

    async def _receive(self, running: _Running) -> None:
        """The child's messages, on the agent's loop, until it ends."""
        try:
            while True:
                kind, job_id, *rest = await _read_frame(running.child.stdout)
                waiting = running.jobs.get(job_id)
                if waiting is None:
                    continue
                if kind == "bytes":
                    waiting.on_bytes(rest[0])
                elif kind == "advance":
                    waiting.watermark.advance(rest[0])
                elif kind == "finish":
                    waiting.watermark.finish()
                elif kind == "done":
                    running.jobs.pop(job_id, None)
                    outcome, waiting.done_parts = rest
                    if outcome == "cancelled" and not waiting.cancel_asked:
                        # The child stopped it (it is stopping): the pull did not ask.
                        outcome = RegistryUnavailable(
                            "the download process stopped this download before it finished"
                        )
                    _settle(waiting.done, outcome)
        except (asyncio.IncompleteReadError, ConnectionError, pickle.UnpicklingError):
            await self._lost(running)

    async def _lost(self, running: _Running) -> None:
        """Every download of a child that died fails; the next one starts a new child."""
        closing = self._running is not running  # close() let go of it first
        if not closing:
            self._running = None
        await running.child.kill_and_reap()
        await _stderr_read(running)  # a crash's traceback may still be in the pipe
        tail = running.stderr.decode(errors="replace").strip()[-2000:] or "(no output)"
        why = f"the download process ended ({running.child.returncode}): {tail}"
        for waiting in running.jobs.values():
            if not waiting.done.done():
                waiting.done.set_exception(RegistryUnavailable(why))
        running.jobs.clear()
        if not closing:
            log.warning("images: %s; the next download starts another", why)

    async def close(self) -> None:
        if self._prestarted is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await self._prestarted
        running, self._running = self._running, None
        if running is None:
            return
        with contextlib.suppress(ConnectionError):
            running.child.stdin.write(_frame(("stop", -1)))
            running.child.stdin.close()
        with contextlib.suppress(Exception):
            await running.child.wait(timeout=10)
        await running.child.kill_and_reap()
        await _stderr_read(running)  # its last records reach the log
        for task in running.readers:
            task.cancel()
        await asyncio.gather(*running.readers, return_exceptions=True)


def _prestarted(task: asyncio.Task[_Running]) -> None:
    if not task.cancelled() and (error := task.exception()) is not None:
        log.warning("images: the download process did not start (%s); pulls will retry", error)


async def _drain_stderr(running: _Running) -> None:
    """The child's stderr: its raw tail kept for an error, each line re-logged here."""
    pid = running.child.pid
    partial = b""
    with contextlib.suppress(ConnectionError):
        while chunk := await running.child.stderr.read(1 << 16):
            running.stderr += chunk
            del running.stderr[:-_STDERR_KEEP]
            *lines, partial = (partial + chunk).split(b"\n")
            if len(partial) > _LINE_MAX:
                lines.append(partial)
                partial = b""
            for line in lines:
                _relog(line, pid)
    if partial:
        _relog(partial, pid)


async def _stderr_read(running: _Running, timeout: float = 5.0) -> None:
    """Wait (a while) for the child's stderr to reach its end: the child is dead."""
    if running.drain is not None:
        await asyncio.wait([running.drain], timeout=timeout)


def _relog(line: bytes, pid: int) -> None:
    """One line of the child's stderr, into the agent's log."""
    text = line.decode(errors="replace").rstrip("\r")
    if not text.strip():
        return
    record = _parse_record(text)
    if record is None:  # not a record: a traceback, or a library's print
        log.warning("download process: %s", text, extra={"download_process": pid})
        return
    level, name, message = record
    logging.getLogger(name).log(
        level, "download process: %s", message, extra={"download_process": pid}
    )


class _RecordLine(logging.Formatter):
    """A record as one line: level name, logger name and the message (with any
    traceback) as a JSON string, tab-separated, so newlines in it stay escaped."""

    def format(self, record: logging.LogRecord) -> str:
        message = json.dumps(super().format(record), ensure_ascii=False)
        return f"{record.levelname}\t{record.name}\t{message}"


def _parse_record(line: str) -> tuple[int, str, str] | None:
    """``(level, logger name, message)`` of a :class:`_RecordLine` line, else None."""
    level_name, _, rest = line.partition("\t")
    name, _, message = rest.partition("\t")
    level = logging.getLevelNamesMapping().get(level_name)
    if level is None or not name or not message.startswith('"'):
        return None
    try:
        text = json.loads(message)
    except ValueError:
        return None
    return (level, name, text) if isinstance(text, str) else None


def _settle(done: asyncio.Future[None], outcome: Any) -> None:
    if done.done():
        return
    if outcome is None:
        done.set_result(None)
    elif outcome == "cancelled":
        done.cancel()
    else:
        done.set_exception(outcome)


async def _until_done(future: asyncio.Future[Any]) -> None:
    """Wait for ``future`` even if the waiting task is cancelled again meanwhile."""
    while not future.done():
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait([future])
    if not future.cancelled():
        future.exception()  # retrieved: the caller raises its own cancellation


# -- the child (``python -m agent.images.download_process``) ---------------------


class _ChildBridge:
    """The download's watermark and progress, sent to the agent in batches."""

    def __init__(self, send: Callable[[tuple[Any, ...]], None], job_id: int, size: int) -> None:
        self._send = send
        self._id = job_id
        self._size = size
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
        if value - self._sent_value >= _WATERMARK_BYTES or value >= self._size:
            self._sent_value = value
            self._send(("advance", self._id, value))

    def finish(self) -> None:
        self._send_bytes()
        self._send(("finish", self._id))

    def flush(self) -> None:
        self._send_bytes()
        if self._value > self._sent_value:
            self._sent_value = self._value
            self._send(("advance", self._id, self._value))

    def _send_bytes(self) -> None:
        count, self._bytes = self._bytes, 0
        if count:
            self._send(("bytes", self._id, count))


def _log_to_stderr() -> None:
    """The child's records, as :class:`_RecordLine` lines on stderr, for the agent to
    re-log: the ``agent`` loggers at the agent's level, libraries' from warnings on."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_RecordLine())
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("agent").setLevel(int(os.environ.get(_LOG_LEVEL_ENV) or logging.WARNING))


def _send(message: tuple[Any, ...]) -> None:
    """To the agent (stdout): a few small frames a second, written whole."""
    data = memoryview(_frame(message))
    while data:
        data = data[os.write(1, data) :]


async def _serve() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin.buffer)
    settings, read_timeout, retry, connections = await _read_frame(reader)
    client = RegistryClient(
        settings, read_timeout=read_timeout, retry=retry, connections=connections
    )
    tasks: dict[int, asyncio.Task[None]] = {}
    budgets: dict[int, tuple[asyncio.Semaphore, set[int]]] = {}

    async def run(job_id: int, job: _Job) -> None:
        budget = budgets.setdefault(job.budget_key, (asyncio.Semaphore(job.budget), set()))
        semaphore, users = budget
        users.add(job_id)
        client.adopt_tokens(job.tokens)
        repo = Repository(client, job.ref, job.credentials, job.node_credentials)
        ingest = Ingest(job.digest, job.size, job.directory, job.part_size, set(job.done_parts))
        bridge = _ChildBridge(_send, job_id, job.size)
        outcome: Any = None
        try:
            await download_blob(
                repo, ingest, bridge, semaphore, job.parallel, bridge.add_bytes, job.reserve
            )
        except asyncio.CancelledError:
            outcome = "cancelled"
        except Exception as exc:
            outcome = (
                exc if _picklable(exc) else RegistryUnavailable(f"{type(exc).__name__}: {exc}")
            )
        finally:
            users.discard(job_id)
            if not users:
                budgets.pop(job.budget_key, None)
            tasks.pop(job_id, None)
            bridge.flush()
            _send(("done", job_id, outcome, sorted(ingest.done_parts)))

    try:
        while True:
            try:
                kind, job_id, *rest = await _read_frame(reader)
            except asyncio.IncompleteReadError:
                break  # the agent is gone, or closed the pipe
            if kind == "download":
                tasks[job_id] = loop.create_task(run(job_id, rest[0]))
            elif kind == "cancel" and job_id in tasks:
                tasks[job_id].cancel()
            elif kind == "stop":
                break
    finally:
        for task in list(tasks.values()):
            task.cancel()
        if tasks:
            await asyncio.wait(list(tasks.values()))
        await client.close()


def _picklable(error: BaseException) -> bool:
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:
        return False
    return True


if __name__ == "__main__":
    _log_to_stderr()
    asyncio.run(_serve())
