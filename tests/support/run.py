"""This test run's identity: one id in every name, path and cgroup the run creates.

The leak check (``tests/leaks.py``) counts only what carries this run's marks,
so the suite passes on a node where another runtime, another agent or another
test run has pods coming and going meanwhile. Test code asks here for names
(:func:`tag`, :func:`bridge`, :func:`cgroup_parent`) and subnets
(:func:`subnet`), which are remembered for the check.
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import secrets
import subprocess
from typing import Any

__all__ = [
    "BRIDGES",
    "RUN_ID",
    "SUBNETS",
    "bridge",
    "cgroup_parent",
    "dir_prefix",
    "subnet",
    "tag",
    "used_networks",
]

#: Four hex digits, fixed for the run (``MA_TEST_RUN_ID`` pins it, e.g. to debug a leak).
RUN_ID = os.environ.get("MA_TEST_RUN_ID") or secrets.token_hex(2)
#: Bridges and IPv4 subnets this run handed out (the leak check attributes by them).
BRIDGES: set[str] = set()
SUBNETS: set[ipaddress.IPv4Network] = set()


def tag() -> str:
    """A fresh name part that carries the run id: 8 hex digits."""
    return RUN_ID + secrets.token_hex(2)


def dir_prefix() -> str:
    """The prefix of every temp dir of the run (``/tmp/ma-<run>-…``)."""
    return f"ma-{RUN_ID}-"


def bridge(prefix: str = "ma-t") -> str:
    """A bridge name for this run (at most 12 of the kernel's 15 characters)."""
    name = prefix[:4] + tag()
    BRIDGES.add(name)
    return name


def cgroup_parent() -> str:
    """A cgroup parent for this run's pods."""
    return f"/ma-test-{tag()}"


def subnet(supernet: str) -> ipaddress.IPv4Network:
    """A /24 of ``supernet`` that overlaps nothing on the host (random, so reruns differ)."""
    used = [*used_networks(), *SUBNETS]
    candidates = list(ipaddress.IPv4Network(supernet).subnets(new_prefix=24))
    random.shuffle(candidates)
    for net in candidates:
        if not any(net.overlaps(u) for u in used):
            SUBNETS.add(net)
            return net
    raise AssertionError(f"no free /24 left in {supernet}")


def used_networks() -> list[ipaddress.IPv4Network]:
    """Every IPv4 subnet on a host interface or in the main routing table."""

    def ip_json(*args: str) -> Any:
        done = subprocess.run(["ip", "-j", "-4", *args], capture_output=True, text=True)
        return json.loads(done.stdout or "[]")

    nets = [
        ipaddress.IPv4Network(f"{a['local']}/{a['prefixlen']}", strict=False)
        for entry in ip_json("addr")
        for a in entry.get("addr_info", ())
    ]
    nets += [
        ipaddress.IPv4Network(str(r["dst"]), strict=False)
        for r in ip_json("route")
        if r.get("dst", "default") != "default"
    ]
    return nets
