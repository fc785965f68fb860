"""Time as crictl reads and writes it: Go durations, RFC 3339 with nanoseconds, ``--since``.

Nanoseconds since the epoch are the one currency here: CRI timestamps and log
lines carry nanoseconds, which ``datetime`` cannot hold. ``format_rfc3339nano``
prints what Go's ``time.RFC3339Nano`` prints (trailing zeros of the fraction
dropped, ``Z`` for a zero offset), so ``logs --timestamps`` and ``inspect``
read as crictl's. Imports only the standard library.
"""

from __future__ import annotations

import calendar
import re
import time

__all__ = [
    "ZERO_TIME",
    "format_rfc3339nano",
    "parse_duration_ns",
    "parse_rfc3339",
    "parse_since",
]

#: Go's zero ``time.Time`` as crictl prints it for a container that never started.
ZERO_TIME = "0001-01-01T00:00:00Z"

_SECOND = 1_000_000_000
_UNIT_NS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,  # Go accepts both micro signs
    "μs": 1_000,
    "ms": 1_000_000,
    "s": _SECOND,
    "m": 60 * _SECOND,
    "h": 3600 * _SECOND,
}
_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})"
    r"(?:[Tt](\d{2})(?::(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?)?)?"
    r"(Z|z|[+-]\d{2}:?\d{2})?"
)
_UNIX = re.compile(r"(\d+)(?:\.(\d{1,9}))?")


def parse_duration_ns(text: str) -> int:
    """Go's ``time.ParseDuration``: ``1h30m``, ``42m``, ``1.5s``, ``-2m``, ``0``."""
    body = text
    sign = 1
    if body and body[0] in "+-":
        sign = -1 if body[0] == "-" else 1
        body = body[1:]
    if body == "0":
        return 0
    if not body:
        raise ValueError(f"invalid duration {text!r}")
    total = 0.0
    pos = 0
    while pos < len(body):
        match = _DURATION_PART.match(body, pos)
        if match is None:
            raise ValueError(f"invalid duration {text!r}")
        total += float(match[1]) * _UNIT_NS[match[2]]
        pos = match.end()
    return sign * round(total)


def _offset_seconds(zone: str | None) -> int | None:
    if zone is None:
        return None
    if zone in ("Z", "z"):
        return 0
    digits = zone[1:].replace(":", "")
    seconds = int(digits[:2]) * 3600 + int(digits[2:]) * 60
    return -seconds if zone[0] == "-" else seconds


def parse_rfc3339(text: str) -> tuple[int, int | None]:
    """``(nanoseconds since the epoch, offset seconds or None)`` of an RFC 3339 time.

    Like docker's ``GetTimestamp`` (which crictl uses), the time of day may be
    cut short (``2013-01-02``, ``2013-01-02T13``, ``…T13:23``); without a zone
    the time is local.
    """
    match = _RFC3339.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not an RFC 3339 time")
    year, month, day = int(match[1]), int(match[2]), int(match[3])
    hour, minute, second = (int(match[i] or 0) for i in (4, 5, 6))
    nanos = int((match[7] or "0").ljust(9, "0"))
    offset = _offset_seconds(match[8])
    fields = (year, month, day, hour, minute, second)
    if offset is None:
        seconds = int(time.mktime((*fields, 0, 0, -1)))
    else:
        seconds = calendar.timegm((*fields, 0, 0, 0)) - offset
    return seconds * _SECOND + nanos, offset


def parse_since(text: str, now_ns: int | None = None) -> int:
    """``logs --since``: a duration before now (``42m``), an RFC 3339 time or Unix seconds."""
    now = time.time_ns() if now_ns is None else now_ns
    if text != "0":
        try:
            return now - parse_duration_ns(text)
        except ValueError:
            pass
    try:
        return parse_rfc3339(text)[0]
    except ValueError:
        pass
    unix = _UNIX.fullmatch(text)
    if unix is None:
        raise ValueError(
            f"--since {text!r} is neither a duration (42m), an RFC 3339 time "
            "(2013-01-02T13:23:37Z) nor Unix seconds"
        )
    return int(unix[1]) * _SECOND + int((unix[2] or "0").ljust(9, "0"))


def format_rfc3339nano(ns: int, offset_seconds: int | None = None) -> str:
    """Go's ``t.Format(time.RFC3339Nano)``; the local zone unless an offset is given."""
    seconds, fraction = divmod(ns, _SECOND)
    offset = time.localtime(seconds).tm_gmtoff if offset_seconds is None else offset_seconds
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds + offset))
    if fraction:
        text += "." + f"{fraction:09d}".rstrip("0")
    if offset == 0:
        return text + "Z"
    sign = "-" if offset < 0 else "+"
    hours, minutes = divmod(abs(offset) // 60, 60)
    return f"{text}{sign}{hours:02d}:{minutes:02d}"
