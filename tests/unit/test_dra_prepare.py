"""Prepared claims' CDI specs follow the node spec: a driver upgrade or new device nodes
without a reboot reach a claim prepared before them (``ClaimPreparer.restore`` at agent
start, and a repeated ``prepare``), on the simulated two-GPU node."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from agent.db import MetadataDB
from agent.gpu.cdi.claimspec import CLAIM_KIND, claim_spec_path
from agent.gpu.cdi.driver import DriverLayout, discover
from agent.gpu.cdi.nodespec import NodeSpecOptions, build_node_spec
from agent.gpu.cdi.spec import Spec, parse_spec
from agent.gpu.dra.devices import dra_devices
from agent.gpu.dra.kube import ResourceApi
from agent.gpu.dra.prepare import ClaimPreparer, ClaimRef
from agent.gpu.inventory import Inventory
from agent.gpu.simulated import SimulatedBackend
from tests.support.apiserver import allocated_claim
from tests.support.fake_driver import (
    DRIVER_VERSION,
    FakeDriver,
    install_driver,
    make_device_nodes,
)
from tests.support.gpu_node import GPU0, GPU1, GpuNode, make_gpu_node

DRIVER = "gpu.model-agent.io"
POOL = "node-a"
CLAIM = ClaimRef("test", "one-gpu", "6f1c2a9e-0000-4000-8000-000000000001")
UPGRADED = "570.86.10"


class OneClaim(ResourceApi):
    """The API server as far as prepare needs it: one allocated claim, reads counted."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body
        self.reads = 0

    def read_claim(self, namespace: str, name: str) -> dict[str, Any]:
        self.reads += 1
        return self.body


class Node:
    """The simulated node and its current CDI spec, which a test changes under the driver."""

    def __init__(self, gpu_node: GpuNode) -> None:
        self.gpu = gpu_node
        backend = SimulatedBackend(gpu_node.sim_file)
        backend.open()
        self.inventory = Inventory.read(backend)
        self.spec: Spec | None = None
        self.build(gpu_node.driver, DRIVER_VERSION, gpu_node.dev_root)

    def build(self, driver: FakeDriver, version: str, dev_root: str) -> None:
        """Rebuild the node spec, as the agent does at start, from this driver and /dev."""
        files = discover(DriverLayout(driver_root=driver.root), version)
        built = build_node_spec(self.inventory, files, NodeSpecOptions(dev_root=dev_root))
        assert built.problems == ()
        self.spec = built.spec

    def preparer(self, db: MetadataDB, api: OneClaim) -> ClaimPreparer:
        """A preparer as a (re)started agent builds one."""
        devices = {d.name: d for d in dra_devices(self.inventory, {GPU0, GPU1}, 1)}
        return ClaimPreparer(
            db=db,
            api=lambda: api,
            driver=DRIVER,
            pool=POOL,
            spec_dir=self.gpu.run_cdi,
            devices=lambda: devices,
            node_spec=lambda: self.spec,
        )


@pytest.fixture
def node(tmp_path) -> Node:
    return Node(make_gpu_node(str(tmp_path / "node")))


@pytest.fixture
def db(tmp_path) -> Iterator[MetadataDB]:
    db = MetadataDB(str(tmp_path / "metadata.db"))
    yield db
    db.close()


@pytest.fixture
def api() -> OneClaim:
    body = allocated_claim("test", CLAIM.name, driver=DRIVER, pool=POOL, devices=["gpu-1"])
    body["metadata"]["uid"] = CLAIM.uid
    return OneClaim(body)


def written(node: Node) -> Spec:
    path = claim_spec_path(node.gpu.run_cdi, CLAIM.uid)
    with open(path, "rb") as f:
        return parse_spec(f.read(), path)


def host_paths(spec: Spec) -> set[str]:
    edits = [spec.edits, *(d.edits for d in spec.devices)]
    mounts = {m.host_path for e in edits for m in e.mounts}
    return mounts | {n.host_path or n.path for e in edits for n in e.device_nodes}


def test_restore_rewrites_a_prepared_claim_after_a_driver_upgrade(node, db, api, tmp_path):
    [device] = node.preparer(db, api).prepare(CLAIM)
    assert device.cdi_ids == (f"{CLAIM_KIND}={CLAIM.uid}-gpu-1",)
    before = written(node)
    old_libcuda = f"{node.gpu.driver.lib_dir}/libcuda.so.{DRIVER_VERSION}"
    assert old_libcuda in host_paths(before)

    # A driver upgrade without a reboot: its files are elsewhere now, with the new version
    # in their names; the agent starts again and rebuilds the node spec. /var/run/cdi
    # still holds the claim's old spec.
    upgraded = install_driver(str(tmp_path / "driver-570"), version=UPGRADED)
    node.build(upgraded, UPGRADED, node.gpu.dev_root)
    node.preparer(db, api).restore()
    after = written(node)
    assert f"{upgraded.lib_dir}/libcuda.so.{UPGRADED}" in host_paths(after)
    assert not any(p.startswith(node.gpu.driver.root) for p in host_paths(after))
    [gpu1] = after.devices
    assert gpu1.name == f"{CLAIM.uid}-gpu-1"
    assert [n.path for n in gpu1.edits.device_nodes] == ["/dev/nvidia1"]  # still GPU 1
    assert api.reads == 1  # restore needs no API server
    path = claim_spec_path(node.gpu.run_cdi, CLAIM.uid)
    assert os.listdir(node.gpu.run_cdi) == [os.path.basename(path)]  # no temporary file left

    # An unchanged node spec leaves the file alone (same inode: not rewritten).
    inode = os.stat(path).st_ino
    node.preparer(db, api).restore()
    assert os.stat(path).st_ino == inode


def test_a_repeated_prepare_follows_new_device_nodes(node, db, api, tmp_path):
    preparer = node.preparer(db, api)
    first = preparer.prepare(CLAIM)
    moved = str(tmp_path / "devroot-after-reload")
    make_device_nodes(moved, [0, 1])
    node.build(node.gpu.driver, DRIVER_VERSION, moved)
    assert preparer.prepare(CLAIM) == first  # answered from the checkpoint
    assert api.reads == 1
    [gpu1] = written(node).devices
    assert [n.host_path for n in gpu1.edits.device_nodes] == [f"{moved}/dev/nvidia1"]


def test_a_spec_that_cannot_be_rendered_again_is_kept(node, db, api):
    preparer = node.preparer(db, api)
    first = preparer.prepare(CLAIM)
    before = written(node)
    node.spec = None  # e.g. the driver is being replaced and no library is found yet
    preparer.restore()
    assert preparer.prepare(CLAIM) == first
    assert written(node) == before
