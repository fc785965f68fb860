"""CDI device names: ``vendor/class=name``, and the ``cdi.k8s.io/*`` annotations carrying them.

The syntax rules are the CDI parser's (``pkg/parser``): vendor and class start
with a letter, end with a letter or digit, and hold letters, digits, ``_-.``;
a device name starts and ends with a letter or digit and may also hold ``:``.
Device plugins put names in annotations keyed ``cdi.k8s.io/<plugin>_<device>``
whose value is a comma-separated list; the CRI also sends them in
``ContainerConfig.CDI_devices``. Imports only ``errors``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from agent.errors import InvalidArgument

__all__ = [
    "ANNOTATION_PREFIX",
    "check_class",
    "check_device_name",
    "check_vendor",
    "merge_requests",
    "parse_annotations",
    "parse_kind",
    "parse_qualified",
    "qualified",
]

ANNOTATION_PREFIX = "cdi.k8s.io/"


def _alnum(c: str) -> bool:
    return c.isascii() and c.isalnum()


def _check_vendor_or_class(what: str, value: str) -> None:
    if not value:
        raise ValueError(f"empty {what}")
    if not (value[0].isascii() and value[0].isalpha()):
        raise ValueError(f"{what} '{value}' should start with a letter")
    for c in value[1:-1]:
        if not (_alnum(c) or c in "_-."):
            raise ValueError(f"invalid character '{c}' in {what} '{value}'")
    if not _alnum(value[-1]):
        raise ValueError(f"{what} '{value}' should end with a letter or digit")


def check_vendor(vendor: str) -> None:
    _check_vendor_or_class("vendor", vendor)


def check_class(cls: str) -> None:
    _check_vendor_or_class("class", cls)


def check_device_name(name: str) -> None:
    if not name:
        raise ValueError("empty device name")
    if not _alnum(name[0]):
        raise ValueError(f"device name '{name}' should start with a letter or digit")
    for c in name[1:-1]:
        if not (_alnum(c) or c in "_-.:"):
            raise ValueError(f"invalid character '{c}' in device name '{name}'")
    if not _alnum(name[-1]):
        raise ValueError(f"device name '{name}' should end with a letter or digit")


def parse_kind(kind: str) -> tuple[str, str]:
    """``"nvidia.com/gpu"`` → ``("nvidia.com", "gpu")``; ValueError when malformed."""
    vendor, sep, cls = kind.partition("/")
    if not sep or not vendor or not cls:
        raise ValueError(f"kind '{kind}' is not vendor/class")
    check_vendor(vendor)
    check_class(cls)
    return vendor, cls


def parse_qualified(name: str) -> tuple[str, str, str]:
    """``"nvidia.com/gpu=0"`` → ``("nvidia.com", "gpu", "0")``; ValueError says what is wrong."""
    kind, sep, device = name.partition("=")
    if not sep or not kind or not device or name.startswith("/"):
        raise ValueError(f"'{name}' is not a qualified CDI device name (vendor/class=name)")
    try:
        vendor, cls = parse_kind(kind)
        check_device_name(device)
    except ValueError as exc:
        raise ValueError(f"'{name}' is not a valid CDI device name: {exc}") from None
    return vendor, cls, device


def qualified(kind: str, name: str) -> str:
    return f"{kind}={name}"


def parse_annotations(annotations: Mapping[str, str]) -> list[str]:
    """CDI names requested through ``cdi.k8s.io/*`` annotations, in key order.

    A malformed name is an ``InvalidArgument`` naming the annotation, so the
    container is not created with fewer devices than were asked for.
    """
    names: list[str] = []
    for key in sorted(annotations):
        if not key.startswith(ANNOTATION_PREFIX):
            continue
        for item in annotations[key].split(","):
            device = item.strip()
            try:
                parse_qualified(device)
            except ValueError as exc:
                raise InvalidArgument(f"annotation {key}: {exc}") from None
            names.append(device)
    return names


def merge_requests(cdi_devices: Iterable[str], annotations: Mapping[str, str]) -> list[str]:
    """containerd's merge: the CRI field first, then the annotations; each name once."""
    merged: list[str] = []
    for name in cdi_devices:
        try:
            parse_qualified(name)
        except ValueError as exc:
            raise InvalidArgument(f"CDI device: {exc}") from None
        if name not in merged:
            merged.append(name)
    for name in parse_annotations(annotations):
        if name not in merged:
            merged.append(name)
    return merged
