"""remotecommand: exec and attach sessions, the same over SPDY and over WebSocket.

A session joins the client's streams to a conmon console (``oci.console``):

    client stdin  ──► console stdin     (client EOF ─► stdin closed)
    console out   ──► client stdout / stderr (pipe byte 2 / 3), then FIN
    client resize ──► conmon's ctl FIFO ({"Width": w, "Height": h} JSON objects)
    process exit  ──► error stream: a metav1.Status (v4) or a text error (v1-v3)

If the client goes away before the process ends, an exec'd process is killed
(nobody could read its output or give it input); an attach simply detaches.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from agent.errors import AgentError
from agent.oci import STDERR, ConsoleConnection, ExecSession, resize_terminal

__all__ = [
    "ExpectedStreams",
    "Input",
    "Output",
    "Streams",
    "failure_status",
    "run_attach",
    "run_exec",
    "stream_kinds",
    "success_status",
]

log = logging.getLogger(__name__)

#: How long an exec with a tty waits for the client's first terminal size.
FIRST_SIZE_WAIT = 1.0
#: After an attach client's stdin ends, how long its output keeps flowing.
ATTACH_STDIN_GRACE = 1.0


class Input(Protocol):
    async def read(self) -> bytes:
        """The next chunk; b"" once the client closed it."""
        ...

    def discard(self) -> None:
        """Nobody reads on: drop what is held and what comes (it would hold memory, and
        a full input stops its connection's reader)."""


class Output(Protocol):
    async def write(self, data: bytes) -> None: ...

    async def close(self) -> None: ...


@dataclass(slots=True)
class Streams:
    """What one client opened, whatever the transport."""

    error: Output
    #: set when the client's connection ended
    gone: asyncio.Event
    stdin: Input | None = None
    stdout: Output | None = None
    stderr: Output | None = None
    resize: Input | None = None
    #: v4 and later write a JSON metav1.Status on the error stream; older, a text error
    json_status: bool = True
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)


# -- the streams a session needs (SPDY) ----------------------------------------------

#: Streams the server only writes to: whatever a client sends on them is dropped unread.
_SERVER_WRITES = frozenset({"error", "stdout", "stderr"})


class _Options(Protocol):
    @property
    def stdin(self) -> bool: ...
    @property
    def stdout(self) -> bool: ...
    @property
    def stderr(self) -> bool: ...
    @property
    def tty(self) -> bool: ...


def stream_kinds(options: _Options, *, v1_or_v2: bool) -> set[str]:
    """The ``streamtype``s one exec or attach needs (protocols.md §3.5): the error stream,
    those the request asked for, and resize with a tty from v3 on."""
    kinds = {"error"}
    if options.stdin:
        kinds.add("stdin")
    if options.stdout:
        kinds.add("stdout")
    if options.stderr and not options.tty:
        kinds.add("stderr")
    if options.tty and not v1_or_v2:
        kinds.add("resize")
    return kinds


class _OpenedStream(Protocol):
    def header(self, name: str) -> str: ...
    def discard(self) -> None: ...


class ExpectedStreams:
    """Accepts each stream a session needs once and refuses every other (the connection
    answers RST_STREAM); the kubelet library accepts any stream and leaves those it does
    not want unread, which is how they held memory."""

    def __init__(self, kinds: set[str]) -> None:
        self.kinds = frozenset(kinds)
        self._accepted: set[str] = set()

    def accept(self, stream: _OpenedStream) -> bool:
        kind = stream.header("streamtype")
        if kind not in self.kinds or kind in self._accepted:
            return False
        self._accepted.add(kind)
        if kind in _SERVER_WRITES:
            stream.discard()
        return True


# -- metav1.Status ------------------------------------------------------------------


def success_status() -> dict[str, Any]:
    return {"metadata": {}, "status": "Success"}


def exit_code_status(cmd: list[str], code: int) -> dict[str, Any]:
    return {
        "metadata": {},
        "status": "Failure",
        "message": "command terminated with non-zero exit code: "
        f"error executing command {json.dumps(cmd)}, exit code {code}",
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]},
    }


def failure_status(message: str) -> dict[str, Any]:
    return {
        "metadata": {},
        "status": "Failure",
        "message": f"Internal error occurred: {message}",
        "reason": "InternalError",
        "details": {"causes": [{"message": message}]},
        "code": 500,
    }


async def write_status(streams: Streams, status: dict[str, Any]) -> None:
    """The final word on the error stream, then close it."""
    with contextlib.suppress(ConnectionError):
        if streams.json_status:
            await streams.error.write(json.dumps(status, separators=(",", ":")).encode())
        elif status["status"] != "Success":
            await streams.error.write(status["message"].encode())
        await streams.error.close()


# -- the pumps ----------------------------------------------------------------------


async def _pump_output(console: ConsoleConnection, streams: Streams) -> None:
    """Console output to the client until conmon closes the console; then FIN both."""
    try:
        while (packet := await console.read()) is not None:
            pipe, data = packet
            target = streams.stderr if pipe == STDERR else streams.stdout
            if target is not None:
                await target.write(data)
    finally:
        for output in (streams.stdout, streams.stderr):
            if output is not None:
                with contextlib.suppress(ConnectionError):
                    await output.close()


async def _pump_stdin(stdin: Input, console: ConsoleConnection) -> None:
    try:
        while data := await stdin.read():
            await console.write(data)
    except OSError:
        return  # the process closed its stdin or ended
    finally:
        stdin.discard()
    console.close_stdin()


async def _read_sizes(resize: Input, sizes: asyncio.Queue[tuple[int, int]]) -> None:
    """Decode the JSON objects kubectl sends on the resize stream into (width, height).

    Only the newest size matters: one not yet applied is replaced, so a client that sends
    sizes faster than they are applied queues nothing.
    """
    decoder = json.JSONDecoder()
    buffer = ""
    try:
        while data := await resize.read():
            buffer += data.decode(errors="replace")
            while buffer.strip():
                try:
                    size, end = decoder.raw_decode(buffer.lstrip())
                except ValueError:
                    if len(buffer) > 4096:
                        return  # not JSON: stop listening rather than buffer forever
                    break
                buffer = buffer.lstrip()[end:]
                if isinstance(size, dict):
                    with contextlib.suppress(TypeError, ValueError):
                        latest = (int(size.get("Width", 0)), int(size.get("Height", 0)))
                        if sizes.full():
                            sizes.get_nowait()
                        sizes.put_nowait(latest)
    finally:
        resize.discard()


async def _apply_sizes(sizes: asyncio.Queue[tuple[int, int]], control_fifo: str) -> None:
    while True:
        width, height = await sizes.get()
        await resize_terminal(control_fifo, width, height)


def _start(streams: Streams, coro: Awaitable[None]) -> asyncio.Task[None]:
    task = asyncio.ensure_future(coro)
    streams.tasks.add(task)
    return task


async def _stop_all(streams: Streams) -> None:
    for task in streams.tasks:
        task.cancel()
    await asyncio.gather(*streams.tasks, return_exceptions=True)
    streams.tasks.clear()


async def _output_or_gone(streams: Streams, output: asyncio.Task[None]) -> bool:
    """Wait for the output to end; False if the client left first."""
    gone = asyncio.ensure_future(streams.gone.wait())
    try:
        await asyncio.wait({output, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    return output.done() and output.exception() is None


# -- sessions -----------------------------------------------------------------------


async def run_exec(
    streams: Streams,
    start: Callable[[tuple[int, int] | None], Awaitable[ExecSession]],
    cmd: list[str],
) -> None:
    """Start the process and serve it to its end; the process never outlives the client.

    With a tty, the client's first terminal size (kubectl sends it at once) is
    waited for briefly and given to ``start``, so the process starts with the
    right size instead of being resized just after it may have looked.
    """
    sizes: asyncio.Queue[tuple[int, int]] = asyncio.Queue(1)
    first_size = None
    if streams.resize is not None:
        _start(streams, _read_sizes(streams.resize, sizes))
        with contextlib.suppress(TimeoutError):
            first_size = await asyncio.wait_for(sizes.get(), FIRST_SIZE_WAIT)
    try:
        session = await start(first_size)
    except AgentError as exc:
        await write_status(streams, failure_status(str(exc)))
        await _stop_all(streams)
        return
    try:
        if streams.stdin is not None:
            _start(streams, _pump_stdin(streams.stdin, session.console))
        if streams.resize is not None:
            _start(streams, _apply_sizes(sizes, session.control_fifo))
        output = _start(streams, _pump_output(session.console, streams))
        if not await _output_or_gone(streams, output):
            log.info("exec client went away; killing %s (pid %d)", cmd[0], session.pid)
            return
        code = await session.wait()
        if code == 0:
            status = success_status()
        elif code > 0:
            status = exit_code_status(cmd, code)
        else:
            status = failure_status("the exit status of the process is unknown")
        await write_status(streams, status)
    finally:
        await _stop_all(streams)
        await session.close()


async def run_attach(
    streams: Streams,
    connect: Callable[[], Awaitable[ConsoleConnection]],
    control_fifo: str,
) -> None:
    """Serve one attach session until the container ends, the client leaves, or the
    client's stdin ends (as containerd does: then output still in flight gets
    ``ATTACH_STDIN_GRACE`` seconds, and the session ends with Success)."""
    try:
        console = await connect()
    except Exception as exc:  # the container just died, or its conmon did
        await write_status(streams, failure_status(str(exc)))
        return
    try:
        stdin_done: asyncio.Task[None] | None = None
        if streams.stdin is not None:
            stdin_done = _start(streams, _pump_stdin(streams.stdin, console))
        if streams.resize is not None:
            sizes: asyncio.Queue[tuple[int, int]] = asyncio.Queue(1)
            _start(streams, _read_sizes(streams.resize, sizes))
            _start(streams, _apply_sizes(sizes, control_fifo))
        output = _start(streams, _pump_output(console, streams))
        if stdin_done is not None:
            await asyncio.wait({output, stdin_done}, return_when=asyncio.FIRST_COMPLETED)
            if not output.done() and not streams.gone.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(output), ATTACH_STDIN_GRACE)
                if not output.done():
                    output.cancel()
                    await asyncio.gather(output, return_exceptions=True)  # its finally FINs
                await write_status(streams, success_status())
                return
        if await _output_or_gone(streams, output):
            await write_status(streams, success_status())
    finally:
        await _stop_all(streams)
        console.close()
