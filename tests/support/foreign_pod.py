"""A pod of another runtime on the test host, made without the agent.

The suite must pass on a node where another runtime runs pods, and never touch
what it did not make. ``ForeignPod`` sets one up the way such a runtime would
(a named network namespace with a veth, a runc container with its own ``--root``
and cgroup, an iptables chain with a jump from FORWARD), all named with an id of
its own and none of this run's marks (``tests.support.run``), so the leak check
must not count it and no test or agent may remove it. ``problems`` says what of
it is gone; ``remove`` takes it all down.

Traffic stays local: the pod's only link is the veth to the host, on a /30 of
10.253.0.0/16 (no test hands out that range), and nothing is sent over it.
"""

from __future__ import annotations

import contextlib
import io
import ipaddress
import json
import os
import random
import secrets
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Iterable

from tests.leaks import HostSnapshot
from tests.support import run
from tests.support.images import busybox_image

TOOLS = ("runc", "ip", "iptables", "iptables-save")
#: A range no test uses (they take /24s of 10.250-10.252 and 10.254).
SUPERNET = ipaddress.IPv4Network("10.253.0.0/16")


def _sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip()}")
    return done


def _foreign_id() -> str:
    """Six hex digits that never contain this run's id (the leak check would take them)."""
    while run.RUN_ID in (fid := secrets.token_hex(3)):
        pass
    return fid


def _free_slash30() -> ipaddress.IPv4Network:
    used = run.used_networks()
    for _ in range(100):
        net = ipaddress.IPv4Network(
            (int(SUPERNET.network_address) + 4 * random.randrange(SUPERNET.num_addresses // 4), 30)
        )
        if not any(net.overlaps(u) for u in used):
            return net
    raise AssertionError(f"no free /30 in {SUPERNET}")


class ForeignPod:
    """Another runtime's pod: netns, veth, runc container, iptables chain."""

    def __init__(self) -> None:
        self.id = _foreign_id()
        self.netns = f"foreign-{self.id}"
        self.netns_path = f"/run/netns/{self.netns}"
        self.veth = f"fx{self.id}"
        self.chain = f"FOREIGN-{self.id}"
        self.cgroup = f"/foreign-{self.id}"
        self.container = f"foreign-{self.id}"
        self.subnet = _free_slash30()
        self.host_ip, self.pod_ip = (str(a) for a in self.subnet.hosts())
        self.dir = ""
        self.pid = 0
        self._undo: list[Callable[[], object]] = []

    @property
    def jump(self) -> tuple[str, ...]:
        return ("FORWARD", "-m", "comment", "--comment", "foreign", "-j", self.chain)

    def _runc(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _sh("runc", "--root", f"{self.dir}/runc", *args, check=check)

    def start(self) -> None:
        """Set it all up; on any failure take down what was made and raise."""
        missing = [tool for tool in TOOLS if shutil.which(tool) is None]
        if missing:
            raise AssertionError(f"the foreign pod needs {', '.join(missing)} on the host")
        try:
            self._start()
        except BaseException:
            self.remove()
            raise

    def _start(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="foreign-", dir="/tmp")
        self._undo.append(lambda: shutil.rmtree(self.dir, ignore_errors=True))
        _sh("ip", "netns", "add", self.netns)
        self._undo.append(lambda: _sh("ip", "netns", "del", self.netns, check=False))
        _sh("ip", "link", "add", self.veth, "type", "veth", "peer", "name", "eth0",
            "netns", self.netns)  # fmt: skip
        self._undo.append(lambda: _sh("ip", "link", "del", self.veth, check=False))
        prefix = self.subnet.prefixlen
        _sh("ip", "addr", "add", f"{self.host_ip}/{prefix}", "dev", self.veth)
        _sh("ip", "link", "set", self.veth, "up")
        for argv in (
            ("addr", "add", f"{self.pod_ip}/{prefix}", "dev", "eth0"),
            ("link", "set", "eth0", "up"),
            ("link", "set", "lo", "up"),
        ):
            _sh("ip", "-n", self.netns, *argv)

        _sh("iptables", "-t", "filter", "-N", self.chain)
        self._undo.append(lambda: _sh("iptables", "-t", "filter", "-X", self.chain, check=False))
        self._undo.append(lambda: _sh("iptables", "-t", "filter", "-F", self.chain, check=False))
        _sh("iptables", "-t", "filter", "-A", self.chain, "-s", str(self.subnet), "-j", "ACCEPT")
        _sh("iptables", "-t", "filter", "-A", *self.jump)
        self._undo.append(lambda: _sh("iptables", "-t", "filter", "-D", *self.jump, check=False))

        self._start_container()

    def _start_container(self) -> None:
        bundle = f"{self.dir}/bundle"
        rootfs = f"{bundle}/rootfs"
        os.makedirs(rootfs)
        for layer in busybox_image(compression="none").layers:
            with tarfile.open(fileobj=io.BytesIO(layer.tar)) as tar:
                tar.extractall(rootfs, filter="tar")
        _sh("runc", "spec", "--bundle", bundle)
        with open(f"{bundle}/config.json") as f:
            spec = json.load(f)
        # Longer than any run, short enough that a hard-killed run's pod does not linger.
        spec["process"].update(terminal=False, args=["sleep", "10800"])
        spec["hostname"] = "foreign"
        spec["linux"]["cgroupsPath"] = self.cgroup
        namespaces = [ns for ns in spec["linux"]["namespaces"] if ns["type"] != "network"]
        spec["linux"]["namespaces"] = [*namespaces, {"type": "network", "path": self.netns_path}]
        with open(f"{bundle}/config.json", "w") as f:
            json.dump(spec, f)
        # Before the run: a run that times out may still have made the container.
        self._undo.append(lambda: self._runc("delete", "--force", self.container, check=False))
        # A file, not a pipe, for the container's stdio: it holds it open while it runs.
        with open(f"{self.dir}/stdio.log", "w") as log:
            done = subprocess.run(
                ["runc", "--root", f"{self.dir}/runc", "run", "--detach", "--bundle", bundle,
                 "--pid-file", f"{self.dir}/pid", self.container],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, timeout=30, check=False,
            )  # fmt: skip
        if done.returncode != 0:
            with open(f"{self.dir}/stdio.log") as f:
                raise AssertionError(f"runc run exited {done.returncode}: {f.read().strip()}")
        with open(f"{self.dir}/pid") as f:
            self.pid = int(f.read())

    def problems(self) -> list[str]:
        """What of the pod is gone or changed (empty while it is all there and running)."""
        found = []
        state = self._runc("state", self.container, check=False)
        status = json.loads(state.stdout).get("status") if state.returncode == 0 else None
        if status != "running":
            found.append(f"runc container {self.container}: {status or state.stderr.strip()}")
        if not _alive(self.pid, "sleep"):
            found.append(f"the container's sleep (pid {self.pid}) is gone")
        elif not _same_file(f"/proc/{self.pid}/ns/net", self.netns_path):
            found.append(f"pid {self.pid} is no longer in {self.netns_path}")
        elif self.cgroup not in _read(f"/proc/{self.pid}/cgroup"):
            found.append(f"pid {self.pid} is no longer in cgroup {self.cgroup}")
        if not os.path.exists(self.netns_path):
            found.append(f"netns {self.netns} is gone")
        addr = _sh("ip", "-o", "-4", "addr", "show", "dev", self.veth, check=False)
        if addr.returncode != 0:
            found.append(f"veth {self.veth} is gone")
        elif f"{self.host_ip}/{self.subnet.prefixlen}" not in addr.stdout:
            found.append(f"veth {self.veth} lost {self.host_ip}/{self.subnet.prefixlen}")
        peer = _sh("ip", "-n", self.netns, "-o", "-4", "addr", "show", "dev", "eth0", check=False)
        if self.pod_ip not in peer.stdout:
            found.append(f"eth0 in {self.netns} lost {self.pod_ip}")
        rules = _sh("iptables", "-t", "filter", "-S", self.chain, check=False)
        if rules.returncode != 0:
            found.append(f"iptables chain {self.chain} is gone")
        elif f"-A {self.chain} -s {self.subnet} -j ACCEPT" not in rules.stdout:
            found.append(f"iptables chain {self.chain} lost its ACCEPT rule: {rules.stdout!r}")
        if _sh("iptables", "-t", "filter", "-C", *self.jump, check=False).returncode != 0:
            found.append(f"the jump from FORWARD to {self.chain} is gone")
        return found

    def attributed(self, snapshot: HostSnapshot) -> list[str]:
        """The items of a leak-check snapshot that are this pod's (there must be none)."""
        marks = (self.id, self.dir, str(self.subnet.network_address), self.host_ip, self.pod_ip)
        items: Iterable[str] = (
            item
            for kind in ("mounts", "netns", "veths", "processes", "iptables", "cgroups")
            for item in getattr(snapshot, kind)
        )
        found = [item for item in items if any(mark in item for mark in marks)]
        if self.pid and any(item.split()[0] == str(self.pid) for item in snapshot.processes):
            found.append(f"{self.pid} (the container's sleep)")
        return found

    def leftovers(self) -> list[str]:
        """What of the pod ``remove`` left on the host."""
        found = [path for path in (self.dir, self.netns_path, f"/sys/class/net/{self.veth}")
                 if path and os.path.exists(path)]  # fmt: skip
        if _sh("iptables", "-t", "filter", "-S", self.chain, check=False).returncode == 0:
            found.append(f"iptables chain {self.chain}")
        cgroups = "/sys/fs/cgroup"
        found += [
            f"{cgroups}/{c}{self.cgroup}"
            for c in os.listdir(cgroups)
            if os.path.isdir(f"{cgroups}/{c}{self.cgroup}")
        ]
        if os.path.isdir(f"{cgroups}{self.cgroup}"):
            found.append(f"{cgroups}{self.cgroup}")
        return found

    def remove(self) -> None:
        """Kill the container and remove everything made, newest first; never raises."""
        if self.pid:
            self._runc("kill", self.container, "KILL", check=False)
        while self._undo:
            with contextlib.suppress(Exception):  # best effort: the rest still goes
                self._undo.pop()()


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def _alive(pid: int, comm: str) -> bool:
    """``pid`` runs ``comm`` and has not exited (a zombie has)."""
    stat = _read(f"/proc/{pid}/stat")
    return _read(f"/proc/{pid}/comm") == comm and stat.rsplit(")", 1)[-1].split()[:1] != ["Z"]


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False
