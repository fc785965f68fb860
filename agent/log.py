"""Logging setup: stdlib ``logging`` with the RPC name and request id on each line.

``cri.rpc`` stores the current RPC in :data:`current_rpc`; a filter copies it
into every record logged while that RPC runs, whatever module logs it.
"""

from __future__ import annotations

import contextvars
import logging
import sys
from dataclasses import dataclass

__all__ = ["RpcContext", "configure", "current_rpc"]


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


def configure(level: str) -> None:
    """Send agent logs to stderr, one line each, at ``level``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_RpcFilter())
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)-7s %(name)s%(rpc)s: %(message)s")
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # grpc and aiohttp are chatty at INFO about things the agent already reports.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
