"""Field and label selectors as the Kubernetes API server parses and applies them.

A field selector may name only the fields a resource registers (for ResourceSlices
``metadata.name``, ``spec.nodeName``, ``spec.driver``; anything else is a 400 ``field label
not supported``) with ``=``, ``==`` or ``!=``. A label selector has the full set-based
syntax: ``k``, ``!k``, ``k=v``, ``k==v``, ``k!=v``, ``k in (a,b)``, ``k notin (a,b)``,
comma-separated. Imports nothing of agent/.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["SelectorError", "field_matcher", "label_matcher"]

Matcher = Callable[[dict[str, Any]], bool]
_SET_REQUIREMENT = re.compile(r"^\s*(\S+)\s+(in|notin)\s+\(([^)]*)\)\s*$")
_EQUALITY = re.compile(r"^\s*([^!=\s]+)\s*(==|=|!=)\s*([^=\s]*)\s*$")
_EXISTS = re.compile(r"^\s*(!?)\s*([^!=\s(),]+)\s*$")


class SelectorError(ValueError):
    """A selector the server answers 400 BadRequest for."""


def _lookup(obj: dict[str, Any], dotted: str) -> str:
    value: Any = obj
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return "" if value is None else str(value)


def field_matcher(selector: str, supported: tuple[str, ...]) -> Matcher:
    """A predicate for ``fieldSelector``; only the ``supported`` field paths may appear."""
    checks: list[tuple[str, bool, str]] = []
    for requirement in filter(None, (r.strip() for r in selector.split(","))):
        match = _EQUALITY.match(requirement)
        if match is None:
            raise SelectorError(f"invalid selector: '{selector}'; can't understand '{requirement}'")
        field, operator, value = match.groups()
        if field not in supported:
            raise SelectorError(f"field label not supported: {field}")
        checks.append((field, operator != "!=", value))
    return lambda obj: all((_lookup(obj, f) == v) is equal for f, equal, v in checks)


def _split(selector: str) -> list[str]:
    """Split on the commas that are not inside ``( )``."""
    parts, depth, current = [], 0, ""
    for char in selector:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [p for p in parts if p.strip()]


def label_matcher(selector: str) -> Matcher:
    """A predicate for ``labelSelector`` on ``metadata.labels``."""
    checks: list[Callable[[Mapping[str, str]], bool]] = []
    for requirement in _split(selector):
        if match := _SET_REQUIREMENT.match(requirement):
            key, operator, values = match.groups()
            allowed = {v.strip() for v in values.split(",") if v.strip()}
            if operator == "in":
                checks.append(lambda labels, k=key, a=allowed: labels.get(k) in a)  # type: ignore[misc]
            else:
                checks.append(lambda labels, k=key, a=allowed: labels.get(k) not in a)  # type: ignore[misc]
        elif match := _EQUALITY.match(requirement):
            key, operator, value = match.groups()
            if operator == "!=":
                checks.append(lambda labels, k=key, v=value: labels.get(k) != v)  # type: ignore[misc]
            else:
                checks.append(lambda labels, k=key, v=value: labels.get(k) == v)  # type: ignore[misc]
        elif match := _EXISTS.match(requirement):
            negated, key = match.groups()
            checks.append(lambda labels, k=key, n=bool(negated): (k in labels) is not n)  # type: ignore[misc]
        else:
            raise SelectorError(f"unable to parse requirement: {requirement!r}")

    def matches(obj: dict[str, Any]) -> bool:
        labels = obj.get("metadata", {}).get("labels") or {}
        return all(check(labels) for check in checks)

    return matches
