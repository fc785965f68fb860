"""CDI spec directories: load, keep current, and resolve qualified device names.

``CdiRegistry.snapshot()`` returns an immutable view of every loaded spec,
refreshed first when a directory or file changed. The check is a stat scan
(each directory's ``*.json``/``*.yaml`` names with inode, size and mtime): a few
stat calls per container creation, and it works on every filesystem. Only files
that changed are read again.

Rules, as the CDI reference library (``pkg/cdi/cache.go``):

* directories are listed lowest priority first (``/etc/cdi``, ``/var/run/cdi``);
  a device name defined in a later directory overrides an earlier one;
* two specs in the same directory defining the same name conflict: the name is
  then unresolvable and the conflict is reported (``problems``, the log) — except
  where one of them is the agent's own node spec (``own``): that one wins, and the
  conflict is still reported. NVIDIA's toolkit may write ``nvidia.com/gpu`` specs
  into ``/var/run/cdi`` beside the agent's, and every GPU name becoming
  unresolvable would take the node's GPUs away over a duplicate;
* a file that does not parse is skipped with its reason; the others load.

A spec replaced while containers are being created never yields a half-written
file: a reader resolves against one snapshot; a file is re-stat-ed after it is
read and read again later if it changed meanwhile; and a file that fails to
parse within a few seconds of its last change (a writer still writing, not an
atomic rename) keeps its previous good version until it settles. Hidden files
(``.name``, the temp files of atomic writes) are ignored. Thread-safe; the
scan is blocking file I/O (cheap, but callers on the event loop use a thread).
Imports only ``cdi.spec``, ``cdi.names`` and ``errors``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from agent.errors import InvalidArgument
from agent.gpu.cdi.names import parse_qualified
from agent.gpu.cdi.spec import Device, Spec, SpecError, parse_spec

__all__ = ["CdiRegistry", "CdiSnapshot", "LoadedSpec", "ResolvedDevice"]

log = logging.getLogger(__name__)

#: A file that changed less than this long ago and does not parse may still be being written.
SETTLE_SECONDS = 2.0
SPEC_SUFFIXES = (".json", ".yaml")

_Stamp = tuple[int, int, int, int]  # dev, ino, size, mtime_ns


@dataclass(frozen=True, slots=True)
class LoadedSpec:
    path: str
    priority: int  # the index of its directory
    spec: Spec


@dataclass(frozen=True, slots=True)
class ResolvedDevice:
    name: str  # qualified
    spec: LoadedSpec
    device: Device


@dataclass(frozen=True, slots=True)
class CdiSnapshot:
    dirs: tuple[str, ...]
    specs: tuple[LoadedSpec, ...] = ()
    devices: dict[str, ResolvedDevice] = field(default_factory=dict)
    #: qualified name -> the files that define it in the same directory
    conflicts: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: qualified name -> (the winning file, the lower-priority files it overrides)
    overridden: dict[str, tuple[str, tuple[str, ...]]] = field(default_factory=dict)
    #: file or directory -> why it was not (fully) used
    problems: dict[str, str] = field(default_factory=dict)
    generation: int = 0

    def resolve(self, names: Iterable[str]) -> list[ResolvedDevice]:
        """The devices for ``names``, in order; unresolvable ones in one ``InvalidArgument``."""
        found: list[ResolvedDevice] = []
        missing: list[str] = []
        for name in names:
            try:
                parse_qualified(name)
            except ValueError as exc:
                raise InvalidArgument(f"CDI device: {exc}") from None
            device = self.devices.get(name)
            if device is None:
                missing.append(self._why_missing(name))
            else:
                found.append(device)
        if missing:
            raise InvalidArgument(f"unresolvable CDI devices: {'; '.join(missing)}")
        return found

    def _why_missing(self, name: str) -> str:
        if name in self.conflicts:
            files = ", ".join(self.conflicts[name])
            return f"{name} (defined by more than one spec in the same directory: {files})"
        kind = name.partition("=")[0]
        if not any(s.spec.kind == kind for s in self.specs):
            return f"{name} (no CDI spec for {kind} in {', '.join(self.dirs)})"
        return f"{name} (not defined by the {kind} specs)"

    def names(self, kind: str | None = None) -> list[str]:
        return sorted(n for n in self.devices if kind is None or n.startswith(kind + "="))


@dataclass(slots=True)
class _FileState:
    stamp: _Stamp
    spec: Spec | None
    error: str = ""
    #: the previous version stands in while the file may still be being written
    provisional: bool = False


class CdiRegistry:
    def __init__(self, dirs: Sequence[str], *, own: str = "") -> None:
        unique: list[str] = []
        for d in dirs:
            norm = os.path.normpath(d)
            if norm not in unique:
                unique.append(norm)
        self._dirs = tuple(unique)
        #: the agent's own spec file: it wins a same-directory conflict
        self._own = os.path.normpath(own) if own else ""
        self._lock = threading.Lock()
        self._files: dict[str, _FileState] = {}
        self._listing: dict[str, _Stamp] | None = None
        self._snapshot = CdiSnapshot(self._dirs)
        self._pending = False  # a file must be looked at again on the next scan

    @property
    def dirs(self) -> tuple[str, ...]:
        return self._dirs

    def snapshot(self) -> CdiSnapshot:
        """The current specs, re-read first if anything on disk changed."""
        with self._lock:
            listing, dir_problems = self._scan()
            if listing != self._listing or self._pending:
                self._rebuild(listing, dir_problems)
            return self._snapshot

    def invalidate(self) -> None:
        """Force the next ``snapshot`` to re-check every file (after the agent wrote one)."""
        with self._lock:
            self._listing = None

    # -- scanning -------------------------------------------------------

    def _scan(self) -> tuple[dict[str, _Stamp], dict[str, str]]:
        listing: dict[str, _Stamp] = {}
        problems: dict[str, str] = {}
        for directory in self._dirs:
            try:
                entries = sorted(os.scandir(directory), key=lambda e: e.name)
            except FileNotFoundError:
                continue  # a missing directory is normal (created later)
            except OSError as exc:
                problems[directory] = f"cannot list: {exc.strerror}"
                continue
            for entry in entries:
                if entry.name.startswith(".") or not entry.name.endswith(SPEC_SUFFIXES):
                    continue
                try:
                    st = entry.stat()  # follows symlinks
                except OSError:
                    continue  # removed meanwhile
                if not os.path.isfile(entry.path):
                    continue
                listing[entry.path] = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        return listing, problems

    def _read(self, path: str, stamp: _Stamp) -> _FileState:
        previous = self._files.get(path)
        if previous is not None and previous.stamp == stamp:
            if not previous.provisional or _fresh(stamp):
                return previous
            # It stopped changing and still does not parse: a malformed file after all.
            return _FileState(stamp, None, previous.error.split(" (just changed")[0])
        try:
            with open(path, "rb") as f:
                before = os.fstat(f.fileno())
                data = f.read()
                after = os.fstat(f.fileno())
        except OSError as exc:
            return _FileState(stamp, None, f"cannot read: {exc.strerror}")
        if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns):
            # Written to in place while we read it: use what we had and look again next time.
            self._pending = True
            if previous is not None:
                return _FileState(stamp, previous.spec, "changed while being read")
            return _FileState(stamp, None, "changed while being read")
        # What was read is one consistent version (an atomic replace may have swapped the
        # file since the listing: then this is the newer one, and is recorded as such).
        stamp = (after.st_dev, after.st_ino, after.st_size, after.st_mtime_ns)
        try:
            return _FileState(stamp, parse_spec(data, path))
        except (SpecError, UnicodeDecodeError) as exc:
            reason = str(exc)
        if _fresh(stamp):
            self._pending = True
            if previous is not None and previous.spec is not None:
                return _FileState(
                    stamp,
                    previous.spec,
                    f"{reason} (just changed; using its previous version)",
                    provisional=True,
                )
        return _FileState(stamp, None, reason)

    def _rebuild(self, listing: dict[str, _Stamp], problems: dict[str, str]) -> None:
        self._pending = False
        files = {path: self._read(path, stamp) for path, stamp in listing.items()}
        self._pending = self._pending or any(f.provisional for f in files.values())
        for path, state in files.items():
            old = self._files.get(path)
            if state.error and (old is None or old.error != state.error):
                log.warning("CDI spec %s skipped: %s", path, state.error)
        self._files = files
        self._listing = listing
        loaded: list[LoadedSpec] = []
        for path, state in files.items():
            if state.error:
                problems[path] = state.error
            if state.spec is not None:
                priority = self._dirs.index(os.path.dirname(path))
                loaded.append(LoadedSpec(path, priority, state.spec))
        self._snapshot = _index(
            self._dirs, loaded, problems, self._snapshot.generation + 1, own=self._own
        )
        for name, paths in self._snapshot.conflicts.items():
            outcome = (
                "the agent's own spec wins" if name in self._snapshot.devices else "unresolvable"
            )
            log.warning("CDI device %s is defined by %s: %s", name, " and ".join(paths), outcome)


def _fresh(stamp: _Stamp) -> bool:
    return time.time() - stamp[3] / 1e9 < SETTLE_SECONDS


def _index(
    dirs: tuple[str, ...],
    loaded: list[LoadedSpec],
    problems: dict[str, str],
    generation: int,
    *,
    own: str = "",
) -> CdiSnapshot:
    """Device names → devices, higher-priority directories winning, conflicts removed
    (but for the agent's ``own`` spec, which keeps its names)."""
    devices: dict[str, ResolvedDevice] = {}
    conflicts: dict[str, list[str]] = {}
    overridden: dict[str, tuple[str, list[str]]] = {}
    kept: dict[str, ResolvedDevice] = {}  # the own spec's devices in a conflict
    for spec in sorted(loaded, key=lambda s: (s.priority, s.path)):
        for device in spec.spec.devices:
            name = f"{spec.spec.kind}={device.name}"
            other = devices.get(name)
            if other is not None and other.spec.priority == spec.priority:
                conflicts.setdefault(name, [other.spec.path]).append(spec.path)
                if own and spec.path == own:
                    kept[name] = ResolvedDevice(name, spec, device)
                elif own and other.spec.path == own:
                    kept[name] = other
                continue
            if other is not None:  # a later directory overrides an earlier one
                losers = overridden.get(name, ("", []))[1] + [other.spec.path]
                overridden[name] = (spec.path, losers)
                conflicts.pop(name, None)
                kept.pop(name, None)
            devices[name] = ResolvedDevice(name, spec, device)
    for name, paths in conflicts.items():
        devices.pop(name, None)
        if name in kept:
            devices[name] = kept[name]
        for path in paths:
            if path != own:
                problems.setdefault(path, f"conflicting definition of {name}")
    return CdiSnapshot(
        dirs,
        tuple(loaded),
        devices,
        {k: tuple(v) for k, v in conflicts.items()},
        {k: (w, tuple(v)) for k, (w, v) in overridden.items()},
        problems,
        generation,
    )
