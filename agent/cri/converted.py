"""The protobuf form of each record, kept until the record changes.

The kubelet lists every pod and container every second and most have not
changed since the last list: records are immutable, so a record that is the
same object as last time converts to the same message. Each list replaces the
kept set with what it returned, so removed objects are forgotten at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

from google.protobuf.message import Message

__all__ = ["Converted"]

R = TypeVar("R")
M = TypeVar("M", bound=Message)


class Converted(Generic[R, M]):
    def __init__(self, convert: Callable[[R], M], key: Callable[[R], str]) -> None:
        self._convert = convert
        self._key = key
        self._kept: dict[str, tuple[R, M]] = {}

    def all(self, records: Iterable[R]) -> list[M]:
        """The messages of ``records``, in order; converts only what changed."""
        kept: dict[str, tuple[R, M]] = {}
        out = []
        for record in records:
            key = self._key(record)
            hit = self._kept.get(key)
            message = hit[1] if hit is not None and hit[0] is record else self._convert(record)
            kept[key] = (record, message)
            out.append(message)
        self._kept = kept
        return out
