"""``logs``: a container's CRI log file, read the way the kubelet (and so crictl) reads it.

Each line is ``TIMESTAMP STREAM TAG CONTENT`` (tag ``P`` for a partial line,
``F`` for a full one). ``--since`` drops lines older than a time or duration,
``--timestamps`` prefixes each new line with its time in RFC 3339 (as the
kubelet reformats it), ``--tail N`` keeps the last N lines of the file.
``--previous`` reads the previous attempt's file: the kubelet keeps
``<attempt>.log`` in the container's log directory, so it is the file named
``<attempt - 1>`` with the same extension next to the current one. ``-f`` keeps
reading, follows a rotation (the path now names a new file), and ends when the
container is no longer running, as ``kubectl logs -f`` does. Imports ``timefmt``,
``verb`` and the CRI types; no other family of verbs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from dataclasses import dataclass
from typing import BinaryIO, NamedTuple

import grpc

from agent.api.cri.runtime.v1 import api_pb2 as pb
from agent.ctl.client import CriClient
from agent.ctl.timefmt import format_rfc3339nano, parse_rfc3339, parse_since
from agent.ctl.verb import Verbs
from agent.errors import FailedPrecondition, InvalidArgument, NotFound

__all__ = ["LogFile", "LogLine", "LogPrinter", "parse_log_line", "previous_log_path", "register"]

_POLL_SECONDS = 0.1
_STATUS_EVERY_SECONDS = 1.0


class LogLine(NamedTuple):
    timestamp: str
    stream: str
    full: bool
    content: bytes


def parse_log_line(line: bytes) -> LogLine | None:
    """One CRI log line, or None if it is not one."""
    parts = line.rstrip(b"\n").split(b" ", 3)
    if len(parts) < 3:
        return None
    stream = parts[1].decode(errors="replace")
    tag = parts[2].split(b":")[0]
    content = parts[3] if len(parts) == 4 else b""
    return LogLine(parts[0].decode(errors="replace"), stream, tag != b"P", content)


def previous_log_path(log_path: str, attempt: int, name: str) -> str:
    """crictl's ``--previous``: ``…/app/3.log`` -> ``…/app/2.log``."""
    if attempt == 0:
        raise NotFound(f"previous terminated container {name} not found")
    directory = log_path[: log_path.rfind("/") + 1]
    dot = log_path.rfind(".")
    extension = log_path[dot:] if dot > log_path.rfind("/") else ""
    return f"{directory}{attempt - 1}{extension}"


@dataclass
class LogPrinter:
    """Writes parsed lines to stdout/stderr with crictl's ``--since``/``--timestamps``."""

    since_ns: int | None = None
    timestamps: bool = False
    stdout: BinaryIO | None = None
    stderr: BinaryIO | None = None
    #: a timestamp goes only in front of the first fragment of a line.
    _at_line_start: bool = True

    def write(self, raw: bytes) -> None:
        line = parse_log_line(raw)
        if line is None:
            return
        stamp: tuple[int, int | None] | None = None
        if self.since_ns is not None or self.timestamps:
            try:
                stamp = parse_rfc3339(line.timestamp)
            except ValueError:
                return  # as the kubelet: a line whose time cannot be read is skipped
        if self.since_ns is not None and stamp is not None and stamp[0] < self.since_ns:
            return
        prefix = b""
        if self.timestamps and stamp is not None and self._at_line_start:
            prefix = format_rfc3339nano(*stamp).encode() + b" "
        out = (
            (self.stderr or sys.stderr.buffer)
            if line.stream == "stderr"
            else (self.stdout or sys.stdout.buffer)
        )
        out.write(prefix + line.content + (b"\n" if line.full else b""))
        out.flush()
        self._at_line_start = line.full


def _tail(lines: list[bytes], tail: int | None) -> list[bytes]:
    if tail is None or tail < 0:
        return lines
    return lines[-tail:] if tail else []


async def _still_running(cri: CriClient, container_id: str) -> bool:
    try:
        resp = await cri.runtime.ContainerStatus(
            pb.ContainerStatusRequest(container_id=container_id), timeout=cri.timeout
        )
    except grpc.aio.AioRpcError as exc:
        if exc.code() is grpc.StatusCode.NOT_FOUND:
            return False
        raise
    return resp.status.state == pb.CONTAINER_RUNNING


class LogFile:
    """A log file read as it grows; a rotation (the path names a new file) reopens it."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._file = open(path, "rb")  # noqa: SIM115  (closed by close(), reopened on rotation)
        self._partial = b""

    def lines(self, tail: int | None = None) -> list[bytes]:
        """Every complete line appended since the last call (the last ``tail`` of them)."""
        complete: list[bytes] = []
        while True:
            chunk = self._file.readline()
            if not chunk:
                if not self._rotated():
                    return _tail(complete, tail)
                self._file.close()
                self._file = open(self.path, "rb")  # noqa: SIM115
                continue
            self._partial += chunk
            if self._partial.endswith(b"\n"):
                complete.append(self._partial)
                self._partial = b""

    def _rotated(self) -> bool:
        try:
            return os.stat(self.path).st_ino != os.fstat(self._file.fileno()).st_ino
        except FileNotFoundError:
            return False  # mid-rotation; look again on the next poll

    def close(self) -> None:
        self._file.close()


async def follow(
    cri: CriClient, container_id: str, log: LogFile, printer: LogPrinter, tail: int | None
) -> None:
    """Print the file (its last ``tail`` lines), then what is appended while the container runs."""
    for raw in log.lines(tail):
        printer.write(raw)
    waited = 0.0
    running = True
    while True:
        for raw in log.lines():
            printer.write(raw)
        if not running:
            return  # drained what the stopped container wrote
        await asyncio.sleep(_POLL_SECONDS)
        waited += _POLL_SECONDS
        if waited >= _STATUS_EVERY_SECONDS:
            waited = 0.0
            running = await _still_running(cri, container_id)


async def _logs(cri: CriClient, args: argparse.Namespace) -> int:
    try:
        since = parse_since(args.since) if args.since else None
    except ValueError as exc:
        raise InvalidArgument(str(exc)) from None
    resp = await cri.runtime.ContainerStatus(
        pb.ContainerStatusRequest(container_id=args.id), timeout=cri.timeout
    )
    status = resp.status
    path = status.log_path
    if not path:
        raise FailedPrecondition("the container has not set log path")
    if args.previous:
        path = previous_log_path(path, status.metadata.attempt, status.metadata.name)
    printer = LogPrinter(since_ns=since, timestamps=args.timestamps)
    try:
        log = LogFile(path)
    except FileNotFoundError:
        raise NotFound(f"no log file at {path}") from None
    try:
        if args.follow and not args.previous:
            await follow(cri, status.id, log, printer, args.tail)
        else:
            for raw in log.lines(args.tail):
                printer.write(raw)
    finally:
        log.close()
    return 0


def register(verbs: Verbs) -> None:
    p = verbs.add("logs", _logs, "print a container's log")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing while it runs")
    p.add_argument(
        "-p", "--previous", action="store_true", help="the previous attempt's log, if any"
    )
    p.add_argument("--tail", type=int, help="only the last N lines")
    p.add_argument(
        "--since", help="lines since a time (2013-01-02T13:23:37Z) or duration (42m) ago"
    )
    p.add_argument("-t", "--timestamps", action="store_true", help="prefix each line's time")
    p.add_argument("id", metavar="CONTAINER-ID")
