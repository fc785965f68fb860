"""Read the dynamic linker's cache (``/etc/ld.so.cache``) without running ldconfig.

glibc writes the "new" format (``glibc-ld.so.cache1.1``), alone or appended to
the old ``ld.so-1.7.0`` table. Each entry maps a library name (its soname, e.g.
``libcuda.so.1``) to a path; flags say whether it is a 64-bit x86-64 / AArch64
/ ... library. ``parse_ldconfig_p`` reads ``ldconfig -p`` output instead, for
hosts whose cache is unreadable. Imports nothing from the agent.
"""

from __future__ import annotations

import platform
import struct
from dataclasses import dataclass

__all__ = ["LdCacheEntry", "parse_ld_so_cache", "parse_ldconfig_p", "read_ld_so_cache"]

_OLD_MAGIC = b"ld.so-1.7.0"
_NEW_MAGIC = b"glibc-ld.so.cache1.1"
_NEW_HEADER = struct.Struct("<20sII4xI12x")  # magic+version, nlibs, len_strings, flags, ext
_NEW_ENTRY = struct.Struct("<iIIIQ")  # flags, key, value, osversion, hwcap
_OLD_HEADER = struct.Struct("<11s1xI")
_OLD_ENTRY = struct.Struct("<iII")

_FLAG_TYPE_MASK = 0x00FF
_FLAG_ELF_LIBC6 = 0x0003
_FLAG_REQUIRED_MASK = 0xFF00
#: machine -> the flag bits glibc sets for its native libraries (sysdeps/generic/ldconfig.h)
_ARCH_FLAGS = {
    "x86_64": 0x0300,  # FLAG_X8664_LIB64
    "aarch64": 0x0A00,  # FLAG_AARCH64_LIB64
    "ppc64le": 0x0500,  # FLAG_POWERPC_LIB64
    "s390x": 0x0400,  # FLAG_S390_LIB64
    "riscv64": 0x1000,  # FLAG_RISCV_FLOAT_ABI_DOUBLE (lp64d)
}
_LDCONFIG_ARCH = {
    "x86_64": "x86-64",
    "aarch64": "AArch64",
    "ppc64le": "64bit",
    "s390x": "64bit",
}


@dataclass(frozen=True, slots=True)
class LdCacheEntry:
    name: str  # "libcuda.so.1"
    path: str  # "/usr/lib/x86_64-linux-gnu/libcuda.so.1"
    native: bool  # built for this machine's 64-bit ABI (not compat32)


def _cstr(data: bytes, offset: int) -> str:
    end = data.find(b"\0", offset)
    if offset < 0 or offset >= len(data) or end < 0:
        raise ValueError("string offset outside the cache")
    return data[offset:end].decode("utf-8", "surrogateescape")


def parse_ld_so_cache(data: bytes, machine: str | None = None) -> list[LdCacheEntry]:
    """The entries of an ``ld.so.cache`` image; ``ValueError`` when it is not one."""
    arch = _ARCH_FLAGS.get(machine or platform.machine(), 0)
    base = 0
    if data.startswith(_OLD_MAGIC):
        _, nlibs = _OLD_HEADER.unpack_from(data, 0)
        base = _OLD_HEADER.size + nlibs * _OLD_ENTRY.size
        base = (base + 7) & ~7  # the new table is aligned after the old one
        if not data[base:].startswith(_NEW_MAGIC):
            return _parse_old(data, nlibs, arch)
    if not data[base:].startswith(_NEW_MAGIC):
        raise ValueError("not an ld.so.cache file")
    _, nlibs, _len_strings, _ext = _NEW_HEADER.unpack_from(data, base)
    table = data[base:]
    entries = []
    for i in range(nlibs):
        offset = _NEW_HEADER.size + i * _NEW_ENTRY.size
        if offset + _NEW_ENTRY.size > len(table):
            raise ValueError("truncated ld.so.cache")
        flags, key, value, _os, _hwcap = _NEW_ENTRY.unpack_from(table, offset)
        if flags & _FLAG_TYPE_MASK != _FLAG_ELF_LIBC6:
            continue
        entries.append(
            LdCacheEntry(
                _cstr(table, key), _cstr(table, value), (flags & _FLAG_REQUIRED_MASK) == arch
            )
        )
    return entries


def _parse_old(data: bytes, nlibs: int, arch: int) -> list[LdCacheEntry]:
    strings = _OLD_HEADER.size + nlibs * _OLD_ENTRY.size
    entries = []
    for i in range(nlibs):
        flags, key, value = _OLD_ENTRY.unpack_from(data, _OLD_HEADER.size + i * _OLD_ENTRY.size)
        if flags & _FLAG_TYPE_MASK != _FLAG_ELF_LIBC6:
            continue
        entries.append(
            LdCacheEntry(
                _cstr(data, strings + key),
                _cstr(data, strings + value),
                (flags & _FLAG_REQUIRED_MASK) == arch,
            )
        )
    return entries


def read_ld_so_cache(path: str, machine: str | None = None) -> list[LdCacheEntry]:
    """``parse_ld_so_cache`` of a file; OSError/ValueError when missing or not a cache."""
    with open(path, "rb") as f:
        return parse_ld_so_cache(f.read(), machine)


def parse_ldconfig_p(text: str, machine: str | None = None) -> list[LdCacheEntry]:
    """Entries from ``ldconfig -p`` output (``\\tlibcuda.so.1 (libc6,x86-64) => /usr/...``)."""
    tag = _LDCONFIG_ARCH.get(machine or platform.machine(), "")
    entries = []
    for line in text.splitlines():
        name, sep, path = line.strip().partition(" => ")
        if not sep or "(" not in name:
            continue
        lib, _, info = name.partition(" (")
        attrs = info.rstrip(")").split(",")
        if not attrs or not attrs[0].startswith("libc6"):
            continue
        native = (tag in attrs[1:]) if tag else len(attrs) == 1
        entries.append(LdCacheEntry(lib.strip(), path.strip(), native))
    return entries
