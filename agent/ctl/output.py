"""How ctl prints: crictl's tables, its protojson-shaped JSON, and YAML.

The formatting rules crictl users read every day live here so every verb
prints the same way: ``text/tabwriter`` columns (minimum width 20, padding 3),
``go-units`` sizes and durations, 13-character ids, and JSON as crictl's
``protojson`` writes it (lowerCamelCase names, zero values included, 64-bit
integers as strings). YAML is PyYAML's ``safe_dump`` with sorted keys, which
matches ``sigs.k8s.io/yaml``'s output. Imports protobuf and PyYAML; no RPCs.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TextIO

import yaml
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from agent.errors import InvalidArgument

__all__ = [
    "FORMATS",
    "Table",
    "ago",
    "emit",
    "human_duration",
    "human_size",
    "info_values",
    "message_dict",
    "status_document",
    "truncate",
    "write_json",
    "write_yaml",
]

#: The ``-o`` values; each verb allows the subset crictl allows for it.
FORMATS = ("table", "json", "yaml")
TRUNCATED_ID_LENGTH = 13


def message_dict(message: Message) -> dict[str, Any]:
    """A message as crictl's ``protojson`` (``EmitDefaultValues``) shapes it."""
    return MessageToDict(message, always_print_fields_with_no_presence=True)


def _plain(obj: Any) -> Any:
    return message_dict(obj) if isinstance(obj, Message) else obj


def write_json(obj: Any, out: TextIO | None = None, *, sort_keys: bool = False) -> None:
    stream = out or sys.stdout
    stream.write(json.dumps(_plain(obj), indent=2, sort_keys=sort_keys, ensure_ascii=False))
    stream.write("\n")
    stream.flush()


def write_yaml(obj: Any, out: TextIO | None = None) -> None:
    stream = out or sys.stdout
    text = yaml.safe_dump(_plain(obj), sort_keys=True, default_flow_style=False, allow_unicode=True)
    stream.write(text + "\n")  # crictl prints the document and then a newline
    stream.flush()


def emit(obj: Any, fmt: str, out: TextIO | None = None, *, sort_keys: bool = False) -> None:
    """Print a message or plain document as ``json`` or ``yaml``."""
    if fmt == "json":
        write_json(obj, out, sort_keys=sort_keys)
    elif fmt == "yaml":
        write_yaml(obj, out)
    else:
        raise InvalidArgument(f"output format {fmt!r} is not supported here")


def info_values(info: Mapping[str, str]) -> dict[str, Any]:
    """The verbose ``info`` map as crictl shows it: JSON objects parsed, other values unquoted."""
    values: dict[str, Any] = {}
    for key in sorted(info):
        value = info[key]
        if value.startswith("{"):
            try:
                values[key] = json.loads(value)
                continue
            except ValueError:
                pass
        values[key] = value.strip('"')
    return values


def status_document(
    status: dict[str, Any] | None, info: Mapping[str, str], **extra: Any
) -> dict[str, Any]:
    """crictl's ``inspect*``/``info`` shape: ``{"status": …, <info keys>…}``."""
    document: dict[str, Any] = {}
    if status is not None:
        document["status"] = status
    document.update({k: v for k, v in extra.items() if v is not None})
    document.update(info_values(info))
    return document


def truncate(identifier: str, prefix: str = "") -> str:
    return identifier.removeprefix(prefix)[:TRUNCATED_ID_LENGTH]


_SIZE_UNITS = ("B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB")


def human_size(size: float, precision: int = 4) -> str:
    """``go-units.HumanSizeWithPrecision`` (decimal units): ``1.5MB``, ``42B``."""
    value = float(size)
    unit = 0
    while value >= 1000 and unit < len(_SIZE_UNITS) - 1:
        value /= 1000
        unit += 1
    return f"{value:.{precision}g}{_SIZE_UNITS[unit]}"


def human_duration(seconds: float) -> str:
    """``go-units.HumanDuration``: ``Less than a second``, ``About a minute``, ``3 days``."""
    whole = int(seconds)
    if whole < 1:
        return "Less than a second"
    if whole == 1:
        return "1 second"
    if whole < 60:
        return f"{whole} seconds"
    minutes = int(seconds / 60)
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = int(seconds / 3600 + 0.5)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{int(seconds / 3600) // 24 // 365} years"


def ago(ns: int, now: float | None = None) -> str:
    """A CRI nanosecond timestamp as crictl's ``CREATED`` column shows it."""
    elapsed = (time.time() if now is None else now) - ns / 1e9
    return human_duration(max(0.0, elapsed)) + " ago"


class Table:
    """Rows laid out like Go's ``tabwriter.NewWriter(out, 20, 1, 3, ' ', 0)``.

    Every column but the last is padded to its widest cell plus 3, and to at
    least 20 characters; the last column is written as is.
    """

    MIN_WIDTH = 20
    PADDING = 3

    def __init__(self, header: Sequence[str] | None = None) -> None:
        self.rows: list[list[str]] = []
        if header is not None:
            self.add(header)

    def add(self, row: Iterable[object]) -> None:
        self.rows.append([str(cell) for cell in row])

    def render(self) -> str:
        if not self.rows:
            return ""
        columns = max(len(row) for row in self.rows)
        widths = [
            max(
                [
                    self.MIN_WIDTH,
                    *(len(row[i]) + self.PADDING for row in self.rows if i < len(row) - 1),
                ]
            )
            for i in range(columns)
        ]
        lines = []
        for row in self.rows:
            cells = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])]
            lines.append("".join([*cells, row[-1] if row else ""]) + "\n")
        return "".join(lines)

    def write(self, out: TextIO | None = None) -> None:
        stream = out or sys.stdout
        stream.write(self.render())
        stream.flush()
