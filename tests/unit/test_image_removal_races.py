"""RemoveImage racing CreateContainer: the layers a create mounts never go to the trash.

A real ``ImageManager`` (one seeded image, its snapshot directory on disk) under a
real ``ContainerManager``, whose mounter can pause a create at the rootfs overlay:
the window between the image lookup and the container record that the
container-only ``in_use`` check missed.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import pytest
from prometheus_client import CollectorRegistry

from agent.errors import FailedPrecondition, NotFound
from agent.images import ImageManager
from agent.images.store import SnapshotRecord
from agent.metrics.images import PullMetrics
from agent.pods import model
from agent.pods.containers import ContainerManager
from agent.pods.oom import OomPolicy
from agent.pods.podfiles import PodDirs
from agent.pods.seccomp_profiles import SeccompProfiles
from tests.fakes.pods import IMAGE, FakeMounter, FakePods, build

DIFF_ID = "sha256:" + "d" * 64
IMAGE_ID = "sha256:" + "e" * 64


class PausingMounter(FakeMounter):
    """Its rootfs overlay waits for ``release`` once ``pause`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.pause = False
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def overlay(
        self, target: str, *, lower_root: str, lowers: Sequence[str], upper: str, work: str
    ) -> None:
        self.mounted.add(target)
        if self.pause:
            self.entered.set()
            await self.release.wait()


@dataclass
class Node:
    pods: FakePods
    images: ImageManager
    containers: ContainerManager
    mounter: PausingMounter
    layer: str  # the image's one snapshot directory

    async def create(self, sandbox_id: str, name: str = "app") -> str:
        config = model.ContainerConfig(name=name, attempt=0, image=IMAGE, command=("sleep",))
        return await self.containers.create(sandbox_id, config)


@pytest.fixture
async def node(config) -> AsyncIterator[Node]:
    pods = build(config, watch=False)
    images = ImageManager(config, pods.db, PullMetrics(CollectorRegistry()))
    images.in_use = pods.store.image_in_use  # as pods.service wires it
    images.store.add_snapshot(SnapshotRecord(DIFF_ID, "d" * 16, DIFF_ID, 0, 0))
    layer = os.path.join(images.snapshots.root, "d" * 16)
    os.makedirs(os.path.join(layer, "fs"))
    images.store.save_image(
        image_id=IMAGE_ID,
        manifest_digest="sha256:" + "f" * 64,
        manifest_media_type="application/vnd.oci.image.manifest.v1+json",
        config={"rootfs": {"type": "layers", "diff_ids": [DIFF_ID]}},
        size_bytes=0,
        layers=[DIFF_ID],
        blobs=[],
        names=[IMAGE],
    )
    mounter = PausingMounter()
    root, state = config.agent.root_dir, config.agent.state_dir
    containers = ContainerManager(
        config,
        store=pods.store,
        images=images,
        runtimes={"runc": pods.runtime},
        mounter=mounter,
        oom=OomPolicy(False),
        seccomp=SeccompProfiles(),
        pod_dirs=PodDirs(root, state),
        kill_wait=1.0,
    )
    yield Node(pods, images, containers, mounter, layer)
    mounter.release.set()
    await containers.close()
    await images.close()
    pods.close()


async def test_a_removal_during_a_create_is_refused_and_keeps_the_layers(node):
    sid = await node.pods.run_pod()
    node.mounter.pause = True
    create = asyncio.ensure_future(node.create(sid))
    await asyncio.wait_for(node.mounter.entered.wait(), 5)
    # The rootfs is mounted, no record names the image yet.
    assert node.pods.store.containers() == []
    with pytest.raises(FailedPrecondition, match="in use by a container"):
        await node.images.remove(IMAGE)
    assert os.path.isdir(os.path.join(node.layer, "fs"))
    assert node.images.find(IMAGE) is not None
    node.mounter.release.set()
    cid = await asyncio.wait_for(create, 5)
    with pytest.raises(FailedPrecondition, match="in use by a container"):
        await node.images.remove(IMAGE)  # the record holds it now
    await node.containers.remove(cid)
    assert await node.images.remove(IMAGE) is True
    assert node.images.find(IMAGE) is None
    assert not os.path.exists(node.layer)  # in the trash


async def test_a_create_after_the_removal_began_does_not_find_the_image(node, monkeypatch):
    sid = await node.pods.run_pod()
    entered, release = threading.Event(), threading.Event()
    forget = node.images.store.remove_image

    def slow_forget(image_id: str) -> None:
        entered.set()
        release.wait(5)
        forget(image_id)

    monkeypatch.setattr(node.images.store, "remove_image", slow_forget)
    removal = asyncio.ensure_future(node.images.remove(IMAGE))
    assert await asyncio.to_thread(entered.wait, 5)
    # The record is still in SQLite, but the removal has begun: not found, nothing made.
    with pytest.raises(NotFound, match="not found; pull it first"):
        await node.create(sid)
    release.set()
    assert await asyncio.wait_for(removal, 5) is True
    assert node.pods.store.containers() == []
    assert os.listdir(node.containers.root) == []
    assert not os.path.exists(node.layer)


async def test_a_failed_create_stops_holding_its_image(node):
    sid = await node.pods.run_pod()
    node.pods.runtime.fail_create = "boom"
    with pytest.raises(Exception, match="boom"):
        await node.create(sid)
    assert not node.pods.store.image_in_use(IMAGE_ID)
    assert await node.images.remove(IMAGE) is True


async def test_two_creates_hold_the_image_until_both_are_done(node):
    with node.pods.store.holding_images({IMAGE_ID}):
        with node.pods.store.holding_images({IMAGE_ID}):
            assert node.pods.store.image_in_use(IMAGE_ID)
        assert node.pods.store.image_in_use(IMAGE_ID)
    assert not node.pods.store.image_in_use(IMAGE_ID)
