"""Resolve a path inside a root directory as a process chrooted there would.

Used to read files of a container's root filesystem (``/etc/passwd``) from
the host: a symlink in the image is followed relative to the root, and
``..`` or an absolute link never leads outside it, not even after a missing
component (``link -> missing/../../out``).
"""

from __future__ import annotations

import os
import stat

__all__ = ["resolve_in_root"]

_MAX_HOPS = 40


def resolve_in_root(root: str, path: str) -> str:
    """The host path of ``path`` inside ``root``, all symlinks resolved within it."""
    root = os.path.realpath(root)
    current = root
    pending = [p for p in path.split("/") if p not in ("", ".")]
    hops = 0
    while pending:
        part = pending.pop(0)
        if part == "..":
            current = root if current == root else os.path.dirname(current)
            continue
        candidate = os.path.join(current, part)
        try:
            st = os.lstat(candidate)
        except FileNotFoundError:
            # Not there (yet): a plain name, as in filepath-securejoin. The rest is still
            # walked, so a ``..`` after it stays clamped at the root (a caller may makedirs).
            current = candidate
            continue
        if stat.S_ISLNK(st.st_mode):
            hops += 1
            if hops > _MAX_HOPS:
                raise OSError(40, "too many levels of symbolic links", path)  # ELOOP
            target = os.readlink(candidate)
            if target.startswith("/"):
                current = root
            pending = [p for p in target.split("/") if p not in ("", ".")] + pending
            continue
        current = candidate
    return current
