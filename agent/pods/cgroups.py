"""Read a container's or pod's cgroup: CPU, memory, swap, pids — v1 and v2 alike.

runc places a container at its ``cgroupsPath``; this module finds the
directories that path maps to (per controller on v1, one on v2; systemd
slices expanded) and reads the counters the kubelet's stats need. Every
read is a handful of small files, cheap enough for the kubelet's 10-second
polls of every container. A cgroup that is gone reads as ``None``.
"""

from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass, replace
from typing import Any

from agent._util.fs import read_kernel_file

__all__ = ["CgroupReading", "cgroup_dirs", "cgroup_processes", "read_cgroup", "unified"]

ROOT = "/sys/fs/cgroup"


@functools.cache
def unified() -> bool:
    """Whether the host mounts cgroup v2 alone (fixed for the agent's life)."""
    return os.path.exists(os.path.join(ROOT, "cgroup.controllers"))


def _expand_systemd(path: str) -> str:
    """``slice:prefix:name`` → ``a.slice/a-b.slice/prefix-name.scope``."""
    slice_name, prefix, name = path.split(":", 2)
    parts = []
    if slice_name not in ("", "-.slice"):
        stem = slice_name.removesuffix(".slice")
        pieces = stem.split("-")
        parts = ["-".join(pieces[: i + 1]) + ".slice" for i in range(len(pieces))]
    return "/".join([*parts, f"{prefix}-{name}.scope"])


def cgroup_dirs(cgroups_path: str) -> dict[str, str]:
    """Controller (``""`` on v2) → directory for a runc ``cgroupsPath``."""
    relative = _expand_systemd(cgroups_path) if ":" in cgroups_path else cgroups_path.strip("/")
    if unified():
        return {"": os.path.join(ROOT, relative)}
    controllers = ("cpuacct", "cpu", "memory", "pids", "blkio")
    return {c: os.path.join(ROOT, c, relative) for c in controllers}


@dataclass(frozen=True, slots=True)
class CgroupReading:
    cpu_usage_ns: int
    cpu_user_ns: int = 0
    cpu_system_ns: int = 0
    throttled_periods: int = 0
    throttled_ns: int = 0
    periods: int = 0
    memory_usage: int = 0
    memory_working_set: int = 0
    memory_rss: int = 0
    memory_cache: int = 0
    memory_limit: int = 0  # 0: none
    page_faults: int = 0
    major_page_faults: int = 0
    swap_usage: int | None = None
    oom_events: int = 0
    pids: int = 0
    # For the cAdvisor-named metrics (ListPodSandboxMetrics); 0 where the kernel has none.
    memory_failcnt: int = 0
    memory_kernel: int = 0
    memory_mapped_file: int = 0
    memory_max_usage: int = 0
    memory_swap_limit: int = 0  # memory + swap (v1 memsw) or swap alone (v2); 0: none
    cpu_period: int = 0  # microseconds
    cpu_quota: int = 0  # microseconds per period; 0: none
    cpu_shares: int = 0
    threads_max: int = 0  # 0: none
    #: (major, minor, operation, bytes, ios) per block device and operation
    block_io: tuple[tuple[int, int, str, int, int], ...] = ()


def _read_int(path: str) -> int:
    text = read_kernel_file(path).strip()
    return 0 if text == "max" else int(text)


def _read_keyed(path: str) -> dict[str, int]:
    """A ``key value`` file (``memory.stat``, ``cpu.stat``) as a dict of its integers."""
    try:
        text = read_kernel_file(path)
    except FileNotFoundError:
        return {}
    words = text.split()
    try:  # every line "key <int>": the common case, parsed in C (a scrape reads hundreds)
        if len(words) % 2 == 0:
            return dict(zip(words[::2], map(int, words[1::2]), strict=True))
    except ValueError:
        pass
    result: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if value.strip().lstrip("-").isdigit():
            result[key] = int(value)
    return result


def _optional(path: str) -> int | None:
    try:
        return _read_int(path)
    except (FileNotFoundError, ValueError, OSError):
        return None


#: One USER_HZ tick (cpuacct.stat's unit) in nanoseconds.
_TICK_NS = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
#: v1 reports "no limit" as a huge number near 2^63.
_UNLIMITED = 1 << 60


def read_cgroup(cgroups_path: str, *, detail: bool = False) -> CgroupReading | None:
    """The counters the stats RPCs need; ``detail`` adds what only metrics use (a dozen
    more files per container, so the kubelet's 10-second stats polls do not pay for it)."""
    dirs = cgroup_dirs(cgroups_path)
    try:
        if "" in dirs:
            reading = _read_v2(dirs[""])
            extra = _detail_v2(dirs[""]) if detail else {}
        else:
            reading = _read_v1(dirs)
            extra = _detail_v1(dirs) if detail else {}
    except FileNotFoundError:
        return None
    return replace(reading, **extra) if extra else reading


def _read_v2(path: str) -> CgroupReading:
    cpu = _read_keyed(os.path.join(path, "cpu.stat"))
    memory = _read_keyed(os.path.join(path, "memory.stat"))
    usage = _read_int(os.path.join(path, "memory.current"))
    inactive = memory.get("inactive_file", 0)
    limit = _optional(os.path.join(path, "memory.max")) or 0
    events = _read_keyed(os.path.join(path, "memory.events"))
    return CgroupReading(
        cpu_usage_ns=cpu.get("usage_usec", 0) * 1000,
        cpu_user_ns=cpu.get("user_usec", 0) * 1000,
        cpu_system_ns=cpu.get("system_usec", 0) * 1000,
        throttled_periods=cpu.get("nr_throttled", 0),
        throttled_ns=cpu.get("throttled_usec", 0) * 1000,
        periods=cpu.get("nr_periods", 0),
        memory_usage=usage,
        memory_working_set=max(0, usage - inactive),
        memory_rss=memory.get("anon", 0),
        memory_cache=memory.get("file", 0),
        memory_limit=limit if limit < _UNLIMITED else 0,
        page_faults=memory.get("pgfault", 0),
        major_page_faults=memory.get("pgmajfault", 0),
        swap_usage=_optional(os.path.join(path, "memory.swap.current")),
        oom_events=events.get("oom_kill", 0),
        pids=_optional(os.path.join(path, "pids.current")) or 0,
    )


def _detail_v2(path: str) -> dict[str, Any]:
    quota, period = 0, 100_000
    with contextlib.suppress(OSError, ValueError):
        max_text, period_text = read_kernel_file(os.path.join(path, "cpu.max")).split()
        period = int(period_text)
        quota = 0 if max_text == "max" else int(max_text)
    memory = _read_keyed(os.path.join(path, "memory.stat"))
    events = _read_keyed(os.path.join(path, "memory.events"))
    return {
        "memory_failcnt": events.get("max", 0),
        "memory_kernel": memory.get("kernel", 0),
        "memory_mapped_file": memory.get("file_mapped", 0),
        "memory_max_usage": _optional(os.path.join(path, "memory.peak")) or 0,
        "memory_swap_limit": _limit(_optional(os.path.join(path, "memory.swap.max"))),
        "cpu_period": period,
        "cpu_quota": quota,
        "cpu_shares": _weight_to_shares(_optional(os.path.join(path, "cpu.weight")) or 100),
        "threads_max": _limit(_optional(os.path.join(path, "pids.max"))),
        "block_io": _io_stat_v2(os.path.join(path, "io.stat")),
    }


def _read_v1(dirs: dict[str, str]) -> CgroupReading:
    acct = dirs["cpuacct"]
    usage_ns = _read_int(os.path.join(acct, "cpuacct.usage"))
    ticks = _read_keyed(os.path.join(acct, "cpuacct.stat"))
    tick_ns = _TICK_NS
    throttle = _read_keyed(os.path.join(dirs["cpu"], "cpu.stat"))
    mem = dirs["memory"]
    stat = _read_keyed(os.path.join(mem, "memory.stat"))
    usage = _read_int(os.path.join(mem, "memory.usage_in_bytes"))
    limit = _read_int(os.path.join(mem, "memory.limit_in_bytes"))
    memsw = _optional(os.path.join(mem, "memory.memsw.usage_in_bytes"))
    oom = _read_keyed(os.path.join(mem, "memory.oom_control"))
    return CgroupReading(
        cpu_usage_ns=usage_ns,
        cpu_user_ns=ticks.get("user", 0) * tick_ns,
        cpu_system_ns=ticks.get("system", 0) * tick_ns,
        throttled_periods=throttle.get("nr_throttled", 0),
        throttled_ns=throttle.get("throttled_time", 0),
        periods=throttle.get("nr_periods", 0),
        memory_usage=usage,
        memory_working_set=max(0, usage - stat.get("total_inactive_file", 0)),
        memory_rss=stat.get("total_rss", 0),
        memory_cache=stat.get("total_cache", 0),
        memory_limit=limit if limit < _UNLIMITED else 0,
        page_faults=stat.get("total_pgfault", 0),
        major_page_faults=stat.get("total_pgmajfault", 0),
        swap_usage=(memsw - usage) if memsw is not None else None,
        oom_events=oom.get("oom_kill", 0),
        pids=_optional(os.path.join(dirs["pids"], "pids.current")) or 0,
        memory_mapped_file=stat.get("total_mapped_file", 0),
    )


def _detail_v1(dirs: dict[str, str]) -> dict[str, Any]:
    mem, cpu = dirs["memory"], dirs["cpu"]
    return {
        "memory_failcnt": _optional(os.path.join(mem, "memory.failcnt")) or 0,
        "memory_kernel": _optional(os.path.join(mem, "memory.kmem.usage_in_bytes")) or 0,
        "memory_max_usage": _optional(os.path.join(mem, "memory.max_usage_in_bytes")) or 0,
        "memory_swap_limit": _limit(_optional(os.path.join(mem, "memory.memsw.limit_in_bytes"))),
        "cpu_period": _optional(os.path.join(cpu, "cpu.cfs_period_us")) or 0,
        "cpu_quota": max(0, _optional(os.path.join(cpu, "cpu.cfs_quota_us")) or 0),
        "cpu_shares": _optional(os.path.join(cpu, "cpu.shares")) or 0,
        "threads_max": _limit(_optional(os.path.join(dirs["pids"], "pids.max"))),
        "block_io": _blkio_v1(dirs["blkio"]),
    }


def _limit(value: int | None) -> int:
    """A limit as a number, 0 for none ("max", absent, or v1's near-2^63)."""
    return value if value is not None and 0 < value < _UNLIMITED else 0


def _weight_to_shares(weight: int) -> int:
    """cgroup v2 cpu.weight back to v1 shares (the inverse of runc's conversion)."""
    return 2 + ((weight - 1) * 262142) // 9999


def _blkio_v1(path: str) -> tuple[tuple[int, int, str, int, int], ...]:
    """Bytes and operations per device from the throttle files (always accounted)."""
    totals: dict[tuple[int, int, str], list[int]] = {}
    for index, name in enumerate(
        ("blkio.throttle.io_service_bytes_recursive", "blkio.throttle.io_serviced_recursive")
    ):
        with contextlib.suppress(OSError):
            text = read_kernel_file(os.path.join(path, name))
            for line in text.splitlines():
                fields = line.split()
                if len(fields) != 3 or ":" not in fields[0]:
                    continue
                major, minor = (int(x) for x in fields[0].split(":"))
                key = (major, minor, fields[1])
                totals.setdefault(key, [0, 0])[index] += int(fields[2])
    return tuple((k[0], k[1], k[2], v[0], v[1]) for k, v in sorted(totals.items()))


def _io_stat_v2(path: str) -> tuple[tuple[int, int, str, int, int], ...]:
    result = []
    with contextlib.suppress(OSError):
        for line in read_kernel_file(path).splitlines():
            device, *pairs = line.split()
            values = dict(p.split("=", 1) for p in pairs if "=" in p)
            major, minor = (int(x) for x in device.split(":"))
            for op, key in (("Read", "r"), ("Write", "w")):
                result.append(
                    (
                        major,
                        minor,
                        op,
                        int(values.get(key + "bytes", 0)),
                        int(values.get(key + "ios", 0)),
                    )
                )
    return tuple(result)


def cgroup_processes(cgroups_path: str) -> list[int]:
    """The pids in the cgroup (for per-process counts: file descriptors, sockets)."""
    dirs = cgroup_dirs(cgroups_path)
    path = dirs.get("", dirs.get("pids", ""))
    try:
        return [int(line) for line in read_kernel_file(os.path.join(path, "cgroup.procs")).split()]
    except (OSError, ValueError):
        return []
