"""What every benchmark stands on: a registry holding busybox and a real ``model-agent serve``.

Each benchmark runs the agent as a process (as a node would) in a fresh temp dir with its
own bridge, pod CIDR and cgroup parent, and removes all of it afterwards, whatever happened.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.support.agent import AgentProcess  # noqa: E402
from tests.support.images import busybox_image  # noqa: E402
from tests.support.push import RegistryClient  # noqa: E402
from tests.support.registry import Registry  # noqa: E402


@dataclass(frozen=True, slots=True)
class BenchNode:
    base: str  # the temp dir: agent root under root/, logs wherever the benchmark likes
    socket: str  # the agent's CRI socket
    image: str  # busybox in the local registry
    metrics_url: str = ""  # the agent's /metrics
    agent_pid: int = 0


@contextlib.contextmanager
def bench_node(
    pod_cidr: str,
    cgroup_parent: str,
    extra_config: str = "",
    prepare: Callable[[str], str] | None = None,
) -> Iterator[BenchNode]:
    """``extra_config``: more TOML tables; ``prepare(base)``, if given, returns more TOML
    after laying out files under the node's temp dir (before the agent starts)."""
    base = tempfile.mkdtemp(prefix="ma-bench-", dir="/tmp")
    bridge = f"ma-b{uuid.uuid4().hex[:6]}"
    try:
        with Registry(os.path.join(base, "registry")) as registry:
            RegistryClient(registry.url).push_image("bench/busybox", busybox_image())
            config = f'[network]\nbridge = "{bridge}"\npod_cidr = "{pod_cidr}"\n'
            config += extra_config + (prepare(base) if prepare else "")
            with AgentProcess(base, config) as agent:
                assert agent.proc is not None
                assert agent.proc.stdout is not None
                metrics = agent.proc.stdout.readline().strip().removeprefix("metrics: ")
                image = f"{registry.host}/bench/busybox:latest"
                yield BenchNode(base, agent.socket, image, metrics, agent.pid)
    finally:
        subprocess.run(["ip", "link", "del", bridge], capture_output=True, check=False)
        for controller in os.listdir("/sys/fs/cgroup"):
            path = os.path.join("/sys/fs/cgroup", controller, cgroup_parent.strip("/"))
            if os.path.isdir(path):
                os.rmdir(path)
        shutil.rmtree(base, ignore_errors=True)
