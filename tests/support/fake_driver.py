"""A fake NVIDIA driver for tests: tiny ELF shared objects, binaries and device nodes.

``make_shared_object`` writes the smallest ELF64 file ldconfig accepts as a
shared library: one PT_LOAD, one PT_DYNAMIC with DT_NEEDED ``libc.so.6`` and
DT_SONAME, and a string table. ``install_driver`` lays out a driver root with
versioned libraries, soname symlinks, binaries, and an ld.so.cache built by the
real ``ldconfig``; ``make_device_nodes`` mknods ``/dev/nvidia*`` under a dev
root with NVIDIA's major numbers. Independent of ``agent/``.
"""

from __future__ import annotations

import os
import platform
import struct
import subprocess
from dataclasses import dataclass

__all__ = [
    "DRIVER_VERSION",
    "FakeDriver",
    "install_driver",
    "make_device_nodes",
    "make_shared_object",
]

DRIVER_VERSION = "550.54.15"
NVIDIA_MAJOR = 195
#: A major for nvidia-uvm and nvidia-caps when /proc/devices has none (dynamic majors).
UVM_MAJOR = 235
CAPS_MAJOR = 236

_MACHINES = {"x86_64": 62, "aarch64": 183, "ppc64le": 21, "s390x": 22, "riscv64": 243}
_DT_NULL, _DT_NEEDED, _DT_STRTAB, _DT_STRSZ, _DT_SONAME = 0, 1, 5, 10, 14


def make_shared_object(path: str, soname: str) -> None:
    """Write a minimal ELF64 little-endian shared object whose DT_SONAME is ``soname``."""
    machine = _MACHINES.get(platform.machine(), 62)
    strtab = b"\0libc.so.6\0" + soname.encode() + b"\0"
    needed_off, soname_off = 1, len(b"\0libc.so.6\0")
    ehsize, phsize = 64, 56
    dyn_off = ehsize + 2 * phsize
    dyn_entries = [
        (_DT_NEEDED, needed_off),
        (_DT_SONAME, soname_off),
        (_DT_STRTAB, 0),  # patched below
        (_DT_STRSZ, len(strtab)),
        (_DT_NULL, 0),
    ]
    dyn_size = 16 * len(dyn_entries)
    str_off = dyn_off + dyn_size
    dyn_entries[2] = (_DT_STRTAB, str_off)
    total = str_off + len(strtab)
    header = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    header += struct.pack(
        "<HHIQQQIHHHHHH", 3, machine, 1, 0, ehsize, 0, 0, ehsize, phsize, 2, 64, 0, 0
    )
    load = struct.pack("<IIQQQQQQ", 1, 4, 0, 0, 0, total, total, 0x1000)
    dynamic = struct.pack("<IIQQQQQQ", 2, 4, dyn_off, dyn_off, dyn_off, dyn_size, dyn_size, 8)
    body = b"".join(struct.pack("<qQ", tag, value) for tag, value in dyn_entries)
    with open(path, "wb") as f:
        f.write(header + load + dynamic + body + strtab)
    os.chmod(path, 0o755)


#: library base -> soname major, as the NVIDIA driver ships them
LIBRARIES = {
    "libcuda": "1",
    "libnvidia-ml": "1",
    "libnvidia-ptxjitcompiler": "1",
    "libnvidia-nvvm": "4",
    "libcudadebugger": "1",
    "libnvidia-opencl": "1",
    "libnvidia-encode": "1",
    "libnvcuvid": "1",
    "libnvidia-eglcore": "",  # no soname link: ships only the versioned file
}
BINARIES = ("nvidia-smi", "nvidia-debugdump", "nvidia-persistenced")


@dataclass(frozen=True)
class FakeDriver:
    root: str
    lib_dir: str
    bin_dir: str
    ld_cache: str
    version: str = DRIVER_VERSION


def install_driver(
    root: str,
    *,
    lib_subdir: str = "usr/lib/x86_64-linux-gnu",
    bin_subdir: str = "usr/bin",
    version: str = DRIVER_VERSION,
    cache: bool = True,
) -> FakeDriver:
    """A driver root with versioned libraries, soname links, binaries and (optionally) a cache."""
    lib_dir = os.path.join(root, lib_subdir)
    bin_dir = os.path.join(root, bin_subdir)
    os.makedirs(lib_dir, exist_ok=True)
    os.makedirs(bin_dir, exist_ok=True)
    for base, major in LIBRARIES.items():
        real = f"{base}.so.{version}"
        soname = f"{base}.so.{major}" if major else real
        make_shared_object(os.path.join(lib_dir, real), soname)
        if major:
            os.symlink(real, os.path.join(lib_dir, soname))
    for name in BINARIES:
        path = os.path.join(bin_dir, name)
        with open(path, "w") as f:
            f.write("#!/bin/sh\necho fake\n")
        os.chmod(path, 0o755)
    ld_cache = os.path.join(root, "etc", "ld.so.cache")
    if cache:
        os.makedirs(os.path.dirname(ld_cache), exist_ok=True)
        conf = os.path.join(root, "etc", "ld.so.conf")
        with open(conf, "w") as f:
            f.write(f"/{lib_subdir}\n")
        subprocess.run(
            ["ldconfig", "-r", root, "-C", "/etc/ld.so.cache", "-f", "/etc/ld.so.conf"],
            check=True,
            capture_output=True,
            timeout=30,
        )
    return FakeDriver(root, lib_dir, bin_dir, ld_cache, version)


def make_device_nodes(
    dev_root: str,
    minors: list[int],
    *,
    caps: tuple[int, ...] | list[int] = (),
    uvm_major: int = UVM_MAJOR,
    caps_major: int = CAPS_MAJOR,
) -> dict[str, tuple[int, int]]:
    """mknod /dev/nvidia<minor>, nvidiactl (255), nvidia-modeset (254), nvidia-uvm(-tools), caps."""
    dev = os.path.join(dev_root, "dev")
    os.makedirs(os.path.join(dev, "nvidia-caps"), exist_ok=True)
    nodes = {f"nvidia{m}": (NVIDIA_MAJOR, m) for m in minors}
    nodes |= {
        "nvidiactl": (NVIDIA_MAJOR, 255),
        "nvidia-modeset": (NVIDIA_MAJOR, 254),
        "nvidia-uvm": (uvm_major, 0),
        "nvidia-uvm-tools": (uvm_major, 1),
    }
    nodes |= {f"nvidia-caps/nvidia-cap{c}": (caps_major, c) for c in caps}
    for name, (major, minor) in nodes.items():
        path = os.path.join(dev, name)
        os.mknod(path, 0o666 | 0o020000, os.makedev(major, minor))
        os.chmod(path, 0o666)
    return nodes
