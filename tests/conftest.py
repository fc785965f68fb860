"""Fixtures shared by every test tier: short temp dirs and agent configs.

Unix socket paths are limited to 107 bytes, so agent dirs live under a short
``/tmp/ma-XXXX`` instead of pytest's long ``tmp_path``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

from agent.config import Config, load
from tests import leaks
from tests.support import run

#: The agent's own fallback network, one per run (created lazily by the first agent).
_RUN_BRIDGE = run.bridge("ma-")
_RUN_SUBNET = str(run.subnet("10.251.0.0/16"))


@pytest.fixture
def short_dir() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix=run.dir_prefix(), dir="/tmp")
    # Like /var/lib and /run above a node's agent dirs: traversable, so a user-namespaced
    # container's runtime (root of its namespace, not of the host) reaches its rootfs.
    os.chmod(path, 0o711)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def make_config(base: str, **overrides: Any) -> Config:
    """A config rooted in ``base`` with metrics on a free port; dotted-key overrides.

    The agent's own network and the cgroup of parentless pods are the run's
    (``tests.support.run``), never the host's ``ma-br0`` or ``/model-agent``.
    """
    values = {
        "agent.root_dir": f"{base}/root",
        "agent.state_dir": f"{base}/state",
        "metrics.address": "127.0.0.1:0",
        "network.cni_conf_dir": f"{base}/cni",
        "network.bridge": _RUN_BRIDGE,
        "network.pod_cidr": _RUN_SUBNET,
        "runtime.default_cgroup_parent": f"/ma-test-{run.RUN_ID}",
        # CDI specs (and the node's own) in the test's dirs, never the host's /etc/cdi.
        "gpu.cdi_spec_dirs": [f"{base}/cdi/etc", f"{base}/cdi/run"],
        "gpu.node_spec_dir": f"{base}/cdi/run",
        # The kubelet's plugin dirs in the test's dir, never the host's /var/lib/kubelet.
        "gpu.kubelet.dir": f"{base}/kubelet",
    }
    values.update(overrides)
    path = f"{base}/config.toml"  # explicit and empty: the host's /etc file never leaks in
    with open(path, "a"):
        pass
    return load(path, environ={}, overrides=values)


@pytest.fixture
def config(short_dir: str) -> Config:
    return make_config(short_dir)


def run_marks(tmp_path_factory: pytest.TempPathFactory) -> leaks.RunMarks:
    return leaks.RunMarks(
        run_id=run.RUN_ID,
        paths=(f"/tmp/{run.dir_prefix()}", str(tmp_path_factory.getbasetemp())),
        bridges=frozenset(run.BRIDGES),
        subnets=frozenset(str(net.network_address).rsplit(".", 1)[0] + "." for net in run.SUBNETS),
    )


@pytest.fixture(scope="session", autouse=True)
def no_leaks_on_the_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Fail the run if the tests left mounts, namespaces, processes, rules or cgroups.

    Only what carries this run's marks counts (``tests.leaks``), so other pods on
    the node may come and go meanwhile. The run's bridges are deleted at the end.
    """
    before = leaks.snapshot(run_marks(tmp_path_factory))
    yield
    leaked = leaks.snapshot(run_marks(tmp_path_factory)).leaked_since(before)
    for name in sorted(run.BRIDGES):
        subprocess.run(["ip", "link", "del", name], capture_output=True, check=False)
    if leaked:
        lines = [f"  {kind}: {', '.join(items)}" for kind, items in leaked.items()]
        pytest.fail("the test run leaked host resources:\n" + "\n".join(lines), pytrace=False)
