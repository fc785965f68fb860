"""What a pull reports while it runs: its progress, and the observer that counts pulls.

``PullProgress`` is what verbose ``Status`` lists under ``pulls`` (and ``ctl
pull`` draws); it is also the stall watchdog's clock. ``PullObserver`` is the
seam ``metrics.PullMetrics`` implements.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["PullObserver", "PullProgress"]


@dataclass
class PullProgress:
    image: str
    started: float = field(default_factory=time.monotonic)
    layers_total: int = 0
    layers_done: int = 0
    bytes_total: int = 0
    bytes_done: int = 0
    last_activity: float = field(default_factory=time.monotonic)
    downloading: int = 0

    def add_bytes(self, count: int) -> None:
        self.bytes_done += count
        self.last_activity = time.monotonic()

    @contextlib.contextmanager
    def network(self) -> Iterator[None]:
        """Mark a phase that must keep receiving bytes (the stall watchdog runs)."""
        self.downloading += 1
        self.last_activity = time.monotonic()
        try:
            yield
        finally:
            self.downloading -= 1
            self.last_activity = time.monotonic()

    def stalled_for(self) -> float:
        if self.downloading == 0:
            return 0.0
        return time.monotonic() - self.last_activity

    def as_dict(self) -> dict[str, Any]:
        return {
            "image": self.image,
            "seconds": round(time.monotonic() - self.started, 1),
            "layersTotal": self.layers_total,
            "layersDone": self.layers_done,
            "bytesTotal": self.bytes_total,
            "bytesDone": self.bytes_done,
        }


class PullObserver(Protocol):
    """Told about every pull as it happens (``metrics.images.PullMetrics`` counts them)."""

    def pull_started(self, registry: str) -> None: ...

    def bytes_received(self, registry: str, count: int) -> None: ...

    def pull_finished(self, registry: str, result: str, seconds: float) -> None:
        """``result``: success, error or stalled."""
        ...
