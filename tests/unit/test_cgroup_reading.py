"""Reading cgroup v1 counters from a tree laid out as the kernel does, and the small-file
reader under it (``os.read`` in one call, the rest when a file is bigger)."""

from __future__ import annotations

import os

import pytest

from agent._util.fs import read_kernel_file
from agent.pods import cgroups

FILES = {
    "cpuacct/cpuacct.usage": "1500000000\n",
    "cpuacct/cpuacct.stat": "user 70\nsystem 30\n",
    "cpu/cpu.stat": "nr_periods 10\nnr_throttled 2\nthrottled_time 5000\n",
    "cpu/cpu.cfs_period_us": "100000\n",
    "cpu/cpu.cfs_quota_us": "-1\n",
    "cpu/cpu.shares": "512\n",
    "memory/memory.stat": (
        "cache 100\nrss 200\ntotal_cache 4096\ntotal_rss 8192\ntotal_inactive_file 1024\n"
        "total_mapped_file 512\ntotal_pgfault 77\ntotal_pgmajfault 3\n"
    ),
    "memory/memory.usage_in_bytes": "16384\n",
    "memory/memory.limit_in_bytes": "9223372036854771712\n",
    "memory/memory.memsw.usage_in_bytes": "20480\n",
    "memory/memory.memsw.limit_in_bytes": "1073741824\n",
    "memory/memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n",
    "memory/memory.failcnt": "4\n",
    "memory/memory.kmem.usage_in_bytes": "2048\n",
    "memory/memory.max_usage_in_bytes": "32768\n",
    "pids/pids.current": "3\n",
    "pids/pids.max": "max\n",
    "pids/cgroup.procs": "10\n11\n12\n",
    "blkio/blkio.throttle.io_service_bytes_recursive": (
        "8:0 Read 4096\n8:0 Write 8192\nTotal 12288\n"
    ),
    "blkio/blkio.throttle.io_serviced_recursive": "8:0 Read 1\n8:0 Write 2\nTotal 3\n",
}


@pytest.fixture
def v1_tree(tmp_path, monkeypatch):
    for name, text in FILES.items():
        controller, file_name = name.split("/")
        directory = tmp_path / controller / "pods" / "c1"
        directory.mkdir(parents=True, exist_ok=True)
        (directory / file_name).write_text(text)
    monkeypatch.setattr(cgroups, "ROOT", str(tmp_path))
    cgroups.unified.cache_clear()
    yield tmp_path
    cgroups.unified.cache_clear()


def test_a_v1_cgroup_reads_every_counter(v1_tree):
    reading = cgroups.read_cgroup("/pods/c1", detail=True)
    assert reading is not None
    tick_ns = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
    assert reading.cpu_usage_ns == 1_500_000_000
    assert (reading.cpu_user_ns, reading.cpu_system_ns) == (70 * tick_ns, 30 * tick_ns)
    assert (reading.periods, reading.throttled_periods, reading.throttled_ns) == (10, 2, 5000)
    assert reading.memory_usage == 16384
    assert reading.memory_working_set == 16384 - 1024
    assert (reading.memory_rss, reading.memory_cache) == (8192, 4096)
    assert reading.memory_limit == 0  # v1's near-2^63 "no limit"
    assert reading.swap_usage == 20480 - 16384
    assert (reading.page_faults, reading.major_page_faults, reading.oom_events) == (77, 3, 1)
    assert reading.pids == 3
    assert (reading.memory_failcnt, reading.memory_kernel, reading.memory_max_usage) == (
        4,
        2048,
        32768,
    )
    assert reading.memory_swap_limit == 1 << 30
    assert (reading.cpu_period, reading.cpu_quota, reading.cpu_shares) == (100000, 0, 512)
    assert reading.threads_max == 0  # "max"
    assert reading.block_io == ((8, 0, "Read", 4096, 1), (8, 0, "Write", 8192, 2))
    assert cgroups.cgroup_processes("/pods/c1") == [10, 11, 12]


def test_a_cgroup_that_is_gone_reads_as_none(v1_tree):
    assert cgroups.read_cgroup("/pods/gone") is None
    assert cgroups.cgroup_processes("/pods/gone") == []


def test_without_detail_the_metrics_only_files_are_not_read(v1_tree):
    os.unlink(v1_tree / "memory" / "pods" / "c1" / "memory.failcnt")
    reading = cgroups.read_cgroup("/pods/c1")
    assert reading is not None and reading.memory_failcnt == 0 and reading.cpu_shares == 0


def test_the_small_file_reader_reads_a_big_file_whole(tmp_path):
    path = tmp_path / "big"
    text = "".join(f"8:{i} Read {i}\n" for i in range(20_000))  # ~250 KiB, several reads
    path.write_text(text)
    assert read_kernel_file(str(path)) == text


def test_the_small_file_reader_reads_kernel_files_and_reports_missing_ones(tmp_path):
    assert read_kernel_file("/proc/self/cgroup").endswith("\n")
    with pytest.raises(FileNotFoundError):
        read_kernel_file(str(tmp_path / "missing"))
