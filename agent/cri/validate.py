"""Request validation shared by every servicer: presence, enum values, paths.

Python protobuf hands back silent defaults for absent sub-messages, so
required ones are checked with ``HasField``; every failure is
``INVALID_ARGUMENT`` naming the field.
"""

from __future__ import annotations

import re
from typing import Any

from google.protobuf.message import Message

from agent.errors import InvalidArgument

__all__ = [
    "absolute",
    "cgroup_parent",
    "container_target",
    "enum_name",
    "object_name",
    "require",
    "require_id",
    "require_image",
]


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


def container_target(path: str, field: str) -> str:
    """A path inside the container (a mount or device target): absolute, and not the root
    filesystem itself (``/``, ``/.``, ``//``, ``/a/..``), which a mount would replace."""
    absolute(path, field)
    depth = 0
    for part in path.split("/"):
        if part == "..":
            depth = max(0, depth - 1)
        elif part not in ("", "."):
            depth += 1
    if depth == 0:
        raise InvalidArgument(f"{field}: '{path}' is the container's root filesystem")
    return path


def cgroup_parent(path: str, field: str) -> str:
    """The kubelet's pod cgroup: a cgroupfs path (``/kubepods/burstable/pod<uid>``) or a
    systemd slice (``kubepods-burstable-pod<uid>.slice``); empty means the default. The
    agent reads stats and ``cgroup.procs`` under it, so it never climbs out of the
    cgroup root."""
    if "\x00" in path:
        raise InvalidArgument(f"{field}: contains a NUL byte")
    if any(part in (".", "..") for part in path.split("/")):
        raise InvalidArgument(f"{field}: '{path[:200]}' has a '.' or '..' component")
    if len(path) > 4096:
        raise InvalidArgument(f"{field}: longer than 4096 bytes")
    return path


#: What an object name may be: the kubelet sends DNS-1123 labels (containers) and
#: subdomains (pods, with dots), critest sends upper case too; never a path separator,
#: never "." or "..", never a leading dot or dash.
_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,251}[A-Za-z0-9])?")


def object_name(value: str, field: str) -> str:
    """A metadata name, namespace or uid: required, and safe wherever it is used."""
    if not value:
        raise InvalidArgument(f"{field} is required")
    if not _NAME.fullmatch(value) or ".." in value:
        raise InvalidArgument(
            f"{field}: {value[:80]!r} is not a valid name (letters, digits, '-', '_' and '.', "
            "at most 253, starting and ending with a letter or digit)"
        )
    return value


def require_id(value: str, field: str) -> None:
    if not value:
        raise InvalidArgument(f"{field} is required")
