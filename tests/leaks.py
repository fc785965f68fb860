"""What a test run may leave behind on the host, captured before and after.

The integration suite snapshots the host at its start and compares at its
end; anything new (a mount, a network namespace, a veth, a conmon/runc/
registry process, an iptables rule, a cgroup of ours) fails the run.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass

#: Processes a test may start and must stop.
WATCHED_COMMANDS = {"conmon", "runc", "crun", "catatonit", "docker-registry", "registry", "skopeo"}
#: cgroup directories the agent creates (under any controller).
CGROUP_ROOT = "/sys/fs/cgroup"
CGROUP_MARKERS = ("model-agent", "ma-test")


@dataclass(frozen=True)
class HostSnapshot:
    mounts: frozenset[str]
    netns: frozenset[str]
    veths: frozenset[str]
    processes: frozenset[str]
    iptables: frozenset[str]
    cgroups: frozenset[str]

    def leaked_since(self, before: HostSnapshot) -> dict[str, list[str]]:
        leaks = {}
        for name in ("mounts", "netns", "veths", "processes", "iptables", "cgroups"):
            new = sorted(getattr(self, name) - getattr(before, name))
            if new:
                leaks[name] = new
        return leaks


def _run(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""


def _processes() -> frozenset[str]:
    found = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/comm") as f:
                comm = f.read().strip()
            with open(f"/proc/{pid}/stat") as f:
                zombie = f.read().rsplit(")", 1)[1].split()[0] == "Z"
        except OSError:
            continue
        # A zombie has already exited; reaping it is its parent's (often init's) job.
        if comm in WATCHED_COMMANDS and not zombie:
            found.add(f"{pid} {comm}")
    return frozenset(found)


def _iptables() -> frozenset[str]:
    rules = set()
    for table in ("nat", "filter"):
        for line in _run(["iptables-save", "-t", table]).splitlines():
            if line.startswith(("-A", ":")) and not line.startswith(":INPUT"):
                rules.add(f"{table} " + re.sub(r"\[\d+:\d+\]", "", line).strip())
    return frozenset(rules)


def _cgroups() -> frozenset[str]:
    found = set()
    if not os.path.isdir(CGROUP_ROOT):
        return frozenset()
    for dirpath, dirnames, _ in os.walk(CGROUP_ROOT):
        for name in list(dirnames):
            if any(marker in name for marker in CGROUP_MARKERS):
                found.add(os.path.join(dirpath, name))
                dirnames.remove(name)  # its children are covered by the parent
    return frozenset(found)


def snapshot() -> HostSnapshot:
    with open("/proc/self/mountinfo") as f:
        mounts = frozenset(line.split()[4] for line in f)
    netns = frozenset(
        line.split()[0] for line in _run(["ip", "netns", "list"]).splitlines() if line.strip()
    )
    veths = frozenset(
        line.split(":")[1].strip().split("@")[0]
        for line in _run(["ip", "-o", "link", "show", "type", "veth"]).splitlines()
        if ":" in line
    )
    return HostSnapshot(mounts, netns, veths, _processes(), _iptables(), _cgroups())
