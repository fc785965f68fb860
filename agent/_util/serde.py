"""Frozen dataclasses to JSON-able dicts and back, for records kept in SQLite.

Only the shapes the domain uses are supported: dataclasses, ``list``/``tuple``
of them or of scalars, ``dict[str, ...]``, ``X | None``, and scalars. Unknown
keys in stored data are ignored and missing ones take the field default, so
a record written by an older agent still loads.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from functools import cache
from typing import Any, TypeVar

__all__ = ["from_dict", "to_dict"]

T = TypeVar("T")


def to_dict(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list | tuple):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, enum.Enum):
        return obj.value
    return obj


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def from_dict(cls: type[T], data: Any) -> T:
    return typing.cast(T, _convert(cls, data))


def _convert(hint: Any, data: Any) -> Any:
    if data is None:
        return None
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        return _convert(options[0], data) if len(options) == 1 else data
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return hint(data)
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        hints = _hints(hint)
        kwargs = {
            f.name: _convert(hints[f.name], data[f.name])
            for f in dataclasses.fields(hint)
            if f.name in data and f.init
        }
        return hint(**kwargs)
    if origin in (list, tuple):
        args = typing.get_args(hint)
        item = args[0] if args else Any
        values = [_convert(item, v) for v in data]
        return tuple(values) if origin is tuple else values
    if origin is dict:
        _, value_type = typing.get_args(hint)
        return {k: _convert(value_type, v) for k, v in data.items()}
    return data
