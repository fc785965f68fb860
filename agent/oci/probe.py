"""Is the OCI runtime usable? Finds runc/crun and conmon and asks their versions.

``Status`` calls this every few seconds (the kubelet polls it), so the cheap
part (resolving and stat-ing the binaries) runs each time and reflects a binary
removed or replaced at once, while the version subprocess runs only when a
binary's identity (path, inode, mtime) changed.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field

from agent._util.proc import run
from agent.errors import AgentError

__all__ = ["BinaryProbe", "ProbeResult", "resolve_binary"]

_VERSION_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class ProbeResult:
    ok: bool
    #: CamelCase reason for a Status condition when not ok.
    reason: str = ""
    message: str = ""
    #: name -> first line of ``<binary> --version``
    versions: dict[str, str] = field(default_factory=dict)


def resolve_binary(name_or_path: str) -> str | None:
    """An absolute path to an executable, or None if there is none."""
    if os.sep in name_or_path:
        ok = os.path.isfile(name_or_path) and os.access(name_or_path, os.X_OK)
        return os.path.abspath(name_or_path) if ok else None
    return shutil.which(name_or_path)


class BinaryProbe:
    """Checks a set of named binaries; remembers versions per binary identity."""

    def __init__(self, binaries: dict[str, str]) -> None:
        self._binaries = binaries
        self._cache: dict[tuple[str, int, int], str] = {}

    async def check(self) -> ProbeResult:
        versions: dict[str, str] = {}
        problems: list[str] = []
        for name, configured in self._binaries.items():
            path = resolve_binary(configured)
            if path is None:
                problems.append(f"{name} binary '{configured}' not found or not executable")
                continue
            try:
                versions[name] = await self._version(path)
            except (AgentError, OSError) as exc:
                problems.append(f"{name} at {path} does not run: {exc}")
        if problems:
            return ProbeResult(False, "RuntimeBinaryUnusable", "; ".join(problems), versions)
        return ProbeResult(True, versions=versions)

    async def _version(self, path: str) -> str:
        st = os.stat(path)
        key = (path, st.st_ino, st.st_mtime_ns)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        done = await run([path, "--version"], timeout=_VERSION_TIMEOUT)
        text = (done.stdout or done.stderr).decode(errors="replace").strip()
        version = text.splitlines()[0] if text else "unknown"
        self._cache = {k: v for k, v in self._cache.items() if k[0] != path}
        self._cache[key] = version
        return version
