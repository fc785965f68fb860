"""Request validation shared by every servicer: presence, enum values, paths.

Python protobuf hands back silent defaults for absent sub-messages, so
required ones are checked with ``HasField``; every failure is
``INVALID_ARGUMENT`` naming the field.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.message import Message

from agent.errors import InvalidArgument

__all__ = ["absolute", "enum_name", "require", "require_id", "require_image"]


def require(message: Message, *fields: str) -> None:
    """Fail with INVALID_ARGUMENT unless each sub-message field is set."""
    for name in fields:
        if not message.HasField(name):
            raise InvalidArgument(f"{name} is required")


def require_image(message: Message, field: str = "image", *, label: str = "") -> str:
    """The non-empty ``<field>.image`` string of a message carrying an ImageSpec."""
    label = label or field
    if not message.HasField(field):
        raise InvalidArgument(f"{label} is required")
    value: str = getattr(message, field).image
    if not value:
        raise InvalidArgument(f"{label}.image is required")
    return value


def enum_name(enum: Any, value: int, field: str) -> str:
    """The enum value's name; an unknown number (a newer client) is INVALID_ARGUMENT."""
    try:
        return str(enum.Name(value))
    except ValueError:
        raise InvalidArgument(f"{field}: unknown value {value}") from None


def absolute(path: str, field: str, *, required: bool = True) -> str:
    if not path:
        if required:
            raise InvalidArgument(f"{field} is required")
        return path
    if not path.startswith("/"):
        raise InvalidArgument(f"{field}: '{path}' is not an absolute path")
    if "\x00" in path:
        raise InvalidArgument(f"{field}: contains a NUL byte")
    return path


def require_id(value: str, field: str) -> None:
    if not value:
        raise InvalidArgument(f"{field} is required")
