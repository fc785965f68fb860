"""Cutting a long answer of the Stream* RPCs into messages.

The Stream* variants exist because a node's full list can pass gRPC's 16 MiB
message limit; each message carries at most :data:`STREAM_BATCH` items.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TypeVar

__all__ = ["STREAM_BATCH", "batches"]

T = TypeVar("T")

#: Items per message of the Stream* RPCs; keeps each message far below 16 MiB.
STREAM_BATCH = 100


def batches(items: Sequence[T], size: int = STREAM_BATCH) -> Iterator[Sequence[T]]:
    """``items`` in consecutive slices of at most ``size`` (nothing for no items)."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
