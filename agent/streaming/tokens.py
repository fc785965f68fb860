"""One-time tokens for streaming URLs (what the kubelet library's request cache does).

``Exec``/``Attach``/``PortForward`` validate a request and park it here under
a random token; the URL they return carries the token, and the first HTTP
request for it takes the parked request out. A token is good once, and only
for ``ttl`` seconds; at most ``capacity`` wait at a time (the oldest expired
ones are dropped first; when none has expired a new one is refused, so a
caller flooding the RPC cannot grow memory without bound).
"""

from __future__ import annotations

import base64
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from agent.errors import ResourceExhausted

__all__ = ["AttachRequest", "ExecRequest", "PortForwardRequest", "StreamRequest", "TokenCache"]


@dataclass(frozen=True, slots=True)
class ExecRequest:
    container_id: str
    cmd: tuple[str, ...]
    tty: bool
    stdin: bool
    stdout: bool
    stderr: bool


@dataclass(frozen=True, slots=True)
class AttachRequest:
    container_id: str
    tty: bool
    stdin: bool
    stdout: bool
    stderr: bool


@dataclass(frozen=True, slots=True)
class PortForwardRequest:
    sandbox_id: str
    ports: tuple[int, ...]


StreamRequest = ExecRequest | AttachRequest | PortForwardRequest


class TokenCache:
    def __init__(
        self,
        *,
        ttl: float = 60.0,
        capacity: int = 1000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl = ttl
        self._capacity = capacity
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, StreamRequest]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def insert(self, request: StreamRequest) -> str:
        self._expire()
        if len(self._entries) >= self._capacity:
            raise ResourceExhausted(
                f"too many streaming requests in flight ({self._capacity}); try again shortly"
            )
        token = base64.urlsafe_b64encode(secrets.token_bytes(12)).decode().rstrip("=")
        self._entries[token] = (self._clock() + self._ttl, request)
        return token

    def consume(self, token: str) -> StreamRequest | None:
        """The parked request, once; None for an unknown, used or expired token."""
        entry = self._entries.pop(token, None)
        if entry is None:
            return None
        expires, request = entry
        return request if self._clock() < expires else None

    def _expire(self) -> None:
        now = self._clock()
        while self._entries:
            token, (expires, _) = next(iter(self._entries.items()))
            if expires > now:
                break
            del self._entries[token]
