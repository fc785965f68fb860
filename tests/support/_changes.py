"""Wait, with a deadline, until state that another asyncio task changes satisfies a predicate.

The kubelet and API-server stand-ins record what they saw (handshakes, ListAndWatch
updates, health reports); tests wait on those records through this instead of sleeping.
Imports nothing of agent/.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

__all__ = ["Changes"]

T = TypeVar("T")


class Changes:
    """A wake-up signal for waiters; the owner calls ``notify()`` after every change."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait_for(self, predicate: Callable[[], T | None], timeout: float, what: str) -> T:
        """The predicate's first truthy result, or ``TimeoutError`` naming ``what``."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    event = self._event
                    result = predicate()
                    if result:
                        return result
                    await event.wait()
        except TimeoutError:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}") from None
