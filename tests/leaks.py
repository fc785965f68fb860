"""What a test run may leave behind on the host, captured before and after.

The integration suite snapshots the host at its start and compares at its
end; anything new *that this run made* (a mount, a network namespace, a veth,
a conmon/runc/registry process, an iptables rule, a cgroup) fails the run.
What this run made is told by its marks (``tests.support.run``): paths under
its temp dirs, names that carry its run id, the bridges and subnets it handed
out. Pods of another runtime or another agent on the same node, coming and
going during the run, carry none of them and are not counted.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Collection
from dataclasses import dataclass

#: Processes a test may start and must stop.
WATCHED_COMMANDS = {
    "conmon",
    "runc",
    "crun",
    "catatonit",
    "docker-registry",
    "registry",
    "skopeo",
    "prometheus",
}
#: cgroup directories the agent creates (under any controller).
CGROUP_ROOT = "/sys/fs/cgroup"
CGROUP_MARKERS = ("model-agent", "ma-test")
_POD_CHAIN = re.compile(r"CNI-(DN-)?[0-9a-f]{16,}")


@dataclass(frozen=True)
class RunMarks:
    """How to recognise what this run created."""

    run_id: str
    #: path prefixes of the run's directories (its /tmp/ma-<run>- dirs, pytest's basetemp)
    paths: tuple[str, ...]
    bridges: Collection[str] = ()
    #: textual prefixes of the run's IPv4 subnets ("10.252.7.")
    subnets: Collection[str] = ()

    def path(self, text: str) -> bool:
        return any(p in text for p in self.paths)

    def name(self, text: str) -> bool:
        return self.run_id in text


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


def _read(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _processes(marks: RunMarks) -> frozenset[str]:
    found = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        comm = _read(f"/proc/{pid}/comm").strip()
        if comm not in WATCHED_COMMANDS:
            continue
        stat = _read(f"/proc/{pid}/stat")
        # A zombie has already exited; reaping it is its parent's (often init's) job.
        if not stat or stat.rsplit(")", 1)[1].split()[0] == "Z":
            continue
        try:
            where = os.readlink(f"/proc/{pid}/root") + " " + os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            where = ""
        # conmon/runc name the run's paths on their command line; a pod's infra
        # process (catatonit) has its rootfs under them.
        if marks.path(_read(f"/proc/{pid}/cmdline")) or marks.path(where):
            found.add(f"{pid} {comm}")
    return frozenset(found)


def _iptables(marks: RunMarks) -> frozenset[str]:
    lines = []
    for table in ("nat", "filter"):
        for line in _run(["iptables-save", "-t", table]).splitlines():
            if line.startswith(("-A", ":")) and not line.startswith(":INPUT"):
                lines.append((table, re.sub(r"\[\d+:\d+\]", "", line).strip()))
    return attribute_rules(lines, marks)


def attribute_rules(lines: list[tuple[str, str]], marks: RunMarks) -> frozenset[str]:
    """Rules that name the run (its networks, subnets) and the chains they live in or jump to."""

    def ours(line: str) -> bool:
        return marks.name(line) or any(s in line for s in marks.subnets)

    # A pod's own chains (bridge's CNI-<hash>, portmap's CNI-DN-<hash>); never the
    # built-in or shared ones (POSTROUTING, CNI-HOSTPORT-DNAT, ...) other pods use too.
    chains = set()
    for table, line in lines:
        words = line.split()
        if line.startswith("-A") and ours(line):
            for chain in (words[1], words[words.index("-j") + 1] if "-j" in words[:-1] else ""):
                if _POD_CHAIN.fullmatch(chain):
                    chains.add((table, chain))
    rules = set()
    for table, line in lines:
        words = line.split()
        jumps = words[words.index("-j") + 1] if "-j" in words[:-1] else ""
        if line.startswith(":"):
            if (table, words[0][1:]) in chains:
                rules.add(f"{table} {line}")
        elif ours(line) or (table, words[1]) in chains or (table, jumps) in chains:
            rules.add(f"{table} {line}")
    return frozenset(rules)


def _cgroups(marks: RunMarks) -> frozenset[str]:
    found = set()
    if not os.path.isdir(CGROUP_ROOT):
        return frozenset()
    for dirpath, dirnames, _ in os.walk(CGROUP_ROOT):
        for name in list(dirnames):
            if any(marker in name for marker in CGROUP_MARKERS) and marks.name(name):
                found.add(os.path.join(dirpath, name))
                dirnames.remove(name)  # its children are covered by the parent
    return frozenset(found)


def _veths(marks: RunMarks) -> frozenset[str]:
    """Host-side veths on the run's bridges (a pod's veth dies with its namespace)."""
    found = set()
    for line in _run(["ip", "-o", "link", "show", "type", "veth"]).splitlines():
        if ":" not in line:
            continue
        name = line.split(":")[1].strip().split("@")[0]
        master = re.search(r" master (\S+)", line)
        if marks.name(name) or (master and master.group(1) in marks.bridges):
            found.add(name)
    return frozenset(found)


def snapshot(marks: RunMarks) -> HostSnapshot:
    with open("/proc/self/mountinfo") as f:
        mounts = frozenset(m for line in f if marks.path(m := line.split()[4]))
    netns = frozenset(
        name
        for line in _run(["ip", "netns", "list"]).splitlines()
        if line.strip() and marks.name(name := line.split()[0])
    )
    return HostSnapshot(
        mounts, netns, _veths(marks), _processes(marks), _iptables(marks), _cgroups(marks)
    )
