"""Logging setup: stdlib ``logging`` with the RPC name and request id on each line.

``cri.rpc`` stores the current RPC in :data:`current_rpc`; a filter copies it
into every record logged while that RPC runs, whatever module logs it.

Two formats (``agent.log_format``): ``text``, one line a record for people
and journald, and ``json``, one JSON object a line for log shippers (keys
``time``, ``level``, ``logger``, ``msg``, and ``rpc``/``request_id`` inside
an RPC, ``exc`` with the traceback). Timestamps are UTC with the zone written
out (``2026-12-01T12:00:00.123Z``) in both, so lines from nodes in different
zones sort together. Imports nothing from the agent.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from dataclasses import dataclass

__all__ = ["LOG_FORMATS", "RpcContext", "configure", "current_rpc", "utc_timestamp"]

LOG_FORMATS = ("text", "json")


@dataclass(frozen=True, slots=True)
class RpcContext:
    operation: str
    request_id: str


current_rpc: contextvars.ContextVar[RpcContext | None] = contextvars.ContextVar(
    "current_rpc", default=None
)


class _RpcFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        ctx = current_rpc.get()
        record.rpc = f" [{ctx.operation} {ctx.request_id}]" if ctx else ""
        return True


def utc_timestamp(created: float) -> str:
    """``created`` (seconds since the epoch) as RFC 3339 UTC with milliseconds and ``Z``."""
    seconds = int(created)
    millis = int((created - seconds) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


class _TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s%(rpc)s: %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return utc_timestamp(record.created)


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": utc_timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        ctx = current_rpc.get()
        if ctx is not None:
            entry["rpc"] = ctx.operation
            entry["request_id"] = ctx.request_id
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False)


def configure(level: str, fmt: str = "text") -> None:
    """Send agent logs to stderr, one line each, at ``level``, as ``fmt`` (text or json)."""
    if fmt not in LOG_FORMATS:
        raise ValueError(f"unknown log format {fmt!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_RpcFilter())
    handler.setFormatter(_JsonFormatter() if fmt == "json" else _TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # grpc and aiohttp are chatty at INFO about things the agent already reports.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
