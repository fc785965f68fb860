"""Find the NVIDIA driver's user-space files on the host: libraries and binaries by capability.

The driver may be installed at ``/`` (a distribution package: libraries in the
host's ld cache) or under a driver root (``/usr/local/nvidia`` with ``lib64/``
and ``bin/``, as on GKE). A library is looked up, in order, in
``<driver_root>/etc/ld.so.cache``, then (for driver root ``/``) the host's cache
or the configured one, then in the library directories under the driver root;
its symlinks are resolved inside the driver root to the real, versioned file
(``libcuda.so.550.54.15``), which is what a container gets, mounted read-only at
``<container_driver_root>/<path inside the driver root>``.

The library and binary lists per ``NVIDIA_DRIVER_CAPABILITIES`` class follow
libnvidia-container's (``nvc_info.c``); ``capability_of`` classifies a path for
the capability filter (``restrict_mounts``). Imports ``cdi.ldcache``, ``cdi.spec``
and ``_util.securejoin``.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from agent._util.securejoin import resolve_in_root
from agent.gpu.cdi.ldcache import LdCacheEntry, read_ld_so_cache
from agent.gpu.cdi.spec import Mount

__all__ = [
    "BINARIES",
    "CAPABILITIES",
    "LIBRARIES",
    "DriverFile",
    "DriverFiles",
    "DriverLayout",
    "capability_of",
    "discover",
    "find_library",
    "restrict_mounts",
]

log = logging.getLogger(__name__)

#: Every capability NVIDIA_DRIVER_CAPABILITIES names ("all" means these).
CAPABILITIES = ("compute", "compat32", "display", "graphics", "ngx", "utility", "video")

LIBRARIES: dict[str, tuple[str, ...]] = {
    "utility": ("libnvidia-ml", "libnvidia-cfg"),
    "compute": (
        "libcuda",
        "libcudadebugger",
        "libnvidia-opencl",
        "libnvidia-gpucomp",
        "libnvidia-ptxjitcompiler",
        "libnvidia-fatbinaryloader",
        "libnvidia-allocator",
        "libnvidia-compiler",
        "libnvidia-nvvm",
        "libnvidia-pkcs11",
        "libnvidia-pkcs11-openssl3",
    ),
    "video": ("libvdpau_nvidia", "libnvidia-encode", "libnvidia-opticalflow", "libnvcuvid"),
    "graphics": (
        "libnvidia-eglcore",
        "libnvidia-glcore",
        "libnvidia-tls",
        "libnvidia-glsi",
        "libnvidia-fbc",
        "libnvidia-ifr",
        "libnvidia-rtcore",
        "libnvoptix",
        "libGLX_nvidia",
        "libEGL_nvidia",
        "libGLESv2_nvidia",
        "libGLESv1_CM_nvidia",
        "libnvidia-glvkspirv",
        "libnvidia-egl-gbm",
        "libnvidia-egl-wayland",
        "libnvidia-vulkan-producer",
        "libnvidia-api",
    ),
    "ngx": ("libnvidia-ngx",),
}
BINARIES: dict[str, tuple[str, ...]] = {
    "utility": ("nvidia-smi", "nvidia-debugdump", "nvidia-persistenced"),
    "compute": ("nvidia-cuda-mps-control", "nvidia-cuda-mps-server"),
}
#: Without these a GPU container cannot run CUDA or nvidia-smi: their absence is reported.
ESSENTIAL = ("libcuda", "libnvidia-ml")

_LIB_DIRS = (
    "lib64",
    "lib",
    "usr/lib/x86_64-linux-gnu",
    "usr/lib/aarch64-linux-gnu",
    "lib/x86_64-linux-gnu",
    "lib/aarch64-linux-gnu",
    "usr/lib64",
    "usr/lib",
    "usr/local/lib",
)
_BIN_DIRS = ("bin", "usr/bin", "usr/local/bin", "sbin", "usr/sbin")
_SONAME = re.compile(r"^(?P<base>.+?)\.so(?:\.[0-9][0-9.]*)?$")


@dataclass(frozen=True, slots=True)
class DriverLayout:
    driver_root: str = "/"
    container_driver_root: str = "/"
    ld_cache: str = ""  # "" = <driver_root>/etc/ld.so.cache, else the host's
    library_dirs: tuple[str, ...] = ()  # host paths; () = the usual ones under driver_root

    def container_path(self, host_path: str) -> str:
        rel = os.path.relpath(host_path, self.driver_root)
        return os.path.normpath(os.path.join(self.container_driver_root, rel))


@dataclass(frozen=True, slots=True)
class DriverFile:
    host_path: str  # the real file
    container_path: str
    capability: str
    kind: str  # "library", "binary", "socket"
    name: str  # the library base (libcuda) or binary name


@dataclass(frozen=True, slots=True)
class DriverFiles:
    files: tuple[DriverFile, ...] = ()
    problems: tuple[str, ...] = ()

    def of(self, kind: str) -> tuple[DriverFile, ...]:
        return tuple(f for f in self.files if f.kind == kind)

    def library(self, name: str) -> DriverFile | None:
        return next((f for f in self.files if f.kind == "library" and f.name == name), None)


def capability_of(path: str) -> str | None:
    """The capability class of a driver library or binary by its file name, if it is one."""
    name = os.path.basename(path)
    match = _SONAME.match(name)
    base = match.group("base") if match else name
    for capability, names in LIBRARIES.items():
        if base in names:
            return capability
    for capability, names in BINARIES.items():
        if name in names:
            return capability
    return None


class _Lookup:
    def __init__(self, layout: DriverLayout) -> None:
        self.layout = layout
        self.root = layout.driver_root
        self.cache: list[LdCacheEntry] = []
        self.cache_path = ""
        candidates = []
        if layout.ld_cache:
            candidates.append(layout.ld_cache)
        candidates.append(os.path.join(self.root, "etc/ld.so.cache"))
        for path in candidates:
            try:
                self.cache = [e for e in read_ld_so_cache(path) if e.native]
            except (OSError, ValueError) as exc:
                log.debug("ld cache %s: %s", path, exc)
                continue
            self.cache_path = path
            break
        dirs = layout.library_dirs or tuple(os.path.join(self.root, d) for d in _LIB_DIRS)
        self.dirs = tuple(d for d in dirs if os.path.isdir(d))

    def _real(self, path_in_root: str) -> str | None:
        """A path from the cache (relative to the driver root) → the real file on the host."""
        real = resolve_in_root(self.root, path_in_root)
        return real if os.path.isfile(real) else None

    def library(self, base: str, version: str) -> str | None:
        for entry in self.cache:
            match = _SONAME.match(entry.name)
            if match and match.group("base") == base:
                real = self._real(entry.path)
                if real:
                    return real
        for directory in self.dirs:
            found = self._in_dir(directory, base, version)
            if found:
                return found
        return None

    def _in_dir(self, directory: str, base: str, version: str) -> str | None:
        try:
            names = sorted(os.listdir(directory))
        except OSError:
            return None
        preferred = f"{base}.so.{version}" if version else ""
        matches = [n for n in names if (m := _SONAME.match(n)) and m.group("base") == base]
        ordered = sorted(matches, key=lambda n: (n != preferred, -len(n)))
        for name in ordered:
            rel = os.path.relpath(os.path.join(directory, name), self.root)
            real = self._real("/" + rel) if not rel.startswith("..") else None
            if real is None and rel.startswith(".."):  # a library dir outside the driver root
                real = os.path.realpath(os.path.join(directory, name))
                real = real if os.path.isfile(real) else None
            if real:
                return real
        return None

    def binary(self, name: str) -> tuple[str, str] | None:
        """(the path it is known by, the real file) of a driver binary under the root."""
        for directory in _BIN_DIRS:
            known = os.path.join(self.root, directory, name)
            if os.path.lexists(known):
                real = self._real("/" + os.path.join(directory, name))
                if real and os.access(real, os.X_OK):
                    return known, real
        return None


def find_library(layout: DriverLayout, base: str, version: str = "") -> str | None:
    """The real host file of a driver library (``libnvidia-ml``), or None."""
    return _Lookup(layout).library(base, version)


def discover(layout: DriverLayout, driver_version: str = "") -> DriverFiles:
    """Every driver library and binary found, by capability, with what was not found."""
    lookup = _Lookup(layout)
    files: list[DriverFile] = []
    problems: list[str] = []
    seen: set[str] = set()
    for capability, names in LIBRARIES.items():
        for base in names:
            real = lookup.library(base, driver_version)
            if real is None:
                if base in ESSENTIAL:
                    where = lookup.cache_path or "no ld cache"
                    dirs = ", ".join(lookup.dirs) or "no library dir"
                    problems.append(f"{base}.so not found ({where}; {dirs})")
                continue
            if real in seen:
                continue
            seen.add(real)
            files.append(DriverFile(real, layout.container_path(real), capability, "library", base))
    for capability, names in BINARIES.items():
        for name in names:
            found = lookup.binary(name)
            if found is None:
                continue
            known, real = found
            files.append(DriverFile(real, layout.container_path(known), capability, "binary", name))
    socket = os.path.join(layout.driver_root, "run/nvidia-persistenced/socket")
    if os.path.exists(socket):
        files.append(
            DriverFile(
                socket, "/run/nvidia-persistenced/socket", "utility", "socket", "persistenced"
            )
        )
    return DriverFiles(tuple(files), tuple(problems))


def restrict_mounts(mounts: Sequence[Mount], capabilities: Collection[str]) -> tuple[Mount, ...]:
    """The mounts a capability set keeps: driver files of other classes are dropped.

    Files that are not driver libraries or binaries (sockets, anything unknown)
    are kept; ``display`` counts as ``graphics``.
    """
    wanted = set(capabilities)
    if "display" in wanted:
        wanted.add("graphics")
    kept = []
    for mount in mounts:
        capability = capability_of(mount.container_path)
        if capability is None or capability in wanted:
            kept.append(mount)
    return tuple(kept)
