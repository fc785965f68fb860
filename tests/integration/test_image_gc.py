"""Removal, garbage collection and restarts against pulls and disk (issue 10).

Removal renames into a trash that one background thread empties: a removal cut short
by a client deadline still completes, a pull right after never meets the old
directories, a restart after a crash reports ready before deleting what no record
names, and ImageFsInfo counts the trash until it is gone. Image content is 0700.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import subprocess
import time
import uuid

import grpc
import pytest

from agent.api.cri.runtime.v1 import api_pb2 as pb
from agent.app import Agent
from agent.ctl.client import CriClient
from tests.conftest import make_config
from tests.support.images import build_image
from tests.support.layers import Device, File, layer

pytestmark = pytest.mark.integration

#: files per layer: enough that deleting a layer takes far longer than a rename
#: (creating and deleting a file costs 0.1-1 ms on this VM's disk)
MANY = 600


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def many_files(tag: str, count: int = MANY):
    return layer([File(f"{tag}/d{i // 500}/f{i}", b"x") for i in range(count)])


async def pull(cri: CriClient, image: str) -> str:
    request = pb.PullImageRequest(image=pb.ImageSpec(image=image))
    return (await cri.images.PullImage(request, timeout=120)).image_ref


async def fs_inodes(cri: CriClient) -> int:
    resp = await cri.images.ImageFsInfo(pb.ImageFsInfoRequest())
    return int(resp.image_filesystems[0].inodes_used.value)


def files_under(path: str) -> int:
    return sum(len(dirs) + len(files) for _, dirs, files in os.walk(path))


def trash_entries(agent: Agent) -> int:
    """What the trash still holds (0 for an agent without one: it deleted in place)."""
    assert agent.images is not None
    return int(getattr(agent.images, "trash_entries", 0))


async def trash_drained(agent: Agent, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while trash_entries(agent) and time.monotonic() < deadline:  # noqa: ASYNC110 (a thread's state)
        await asyncio.sleep(0.05)
    assert trash_entries(agent) == 0, "the trash was not emptied"


def live_names(agent: Agent) -> tuple[set[str], set[str]]:
    """(snapshot directories on disk, directories the records name)."""
    assert agent.images is not None
    on_disk = {
        n
        for n in os.listdir(agent.images.snapshots.root)
        if not n.startswith((".", "tmp-")) and os.path.isdir(f"{agent.images.snapshots.root}/{n}")
    }
    return on_disk, {s.name for s in agent.images.store.snapshots()}


async def test_a_pull_never_depends_on_leftover_snapshot_directories(agent, cri, pusher, registry):
    image = build_image([layer([File("a", b"fresh")])])
    name = unique("leftovers")
    pusher.push_image(name, image)
    assert agent.images is not None
    root = agent.images.snapshots.root
    # A crash (or an unfinished deletion) left directories under every name the layer's
    # snapshot could take, and no record names them.
    hex_id = image.diff_ids[0].split(":", 1)[1]
    for length in (16, 24, 32, 64):
        os.makedirs(f"{root}/{hex_id[:length]}/fs/stale")
    assert await pull(cri, f"{registry.host}/{name}") == image.config_digest
    snapshot = agent.images.store.snapshot(image.diff_ids[0])
    assert snapshot is not None
    assert os.listdir(agent.images.snapshots.fs_path(snapshot.name)) == ["a"]
    await trash_drained(agent)
    on_disk, named = live_names(agent)
    assert on_disk == named  # the stale directories went, none is left under a live name


async def test_a_removal_cut_short_by_its_deadline_completes_and_a_pull_right_after_works(
    agent, cri, pusher, registry, monkeypatch
):
    image = build_image([many_files("one"), many_files("two"), many_files("three")])
    name = unique("cancelled")
    pusher.push_image(name, image)
    ref = f"{registry.host}/{name}"
    await pull(cri, ref)
    assert agent.images is not None
    remove_locked = agent.images._remove_locked

    def slow_remove_locked(image_id: str, protected: set[str]) -> bool:
        time.sleep(0.5)  # a removal slower than the client's deadline, on any machine
        return remove_locked(image_id, protected)

    monkeypatch.setattr(agent.images, "_remove_locked", slow_remove_locked)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await cri.images.RemoveImage(
            pb.RemoveImageRequest(image=pb.ImageSpec(image=ref)), timeout=0.05
        )
    assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert await pull(cri, ref) == image.config_digest  # right away, not after the deletion
    resp = await cri.images.ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(image=ref)))
    assert resp.image.id == image.config_digest
    await asyncio.sleep(0.5)  # let a removal the deadline cut short show what it left
    await trash_drained(agent)
    on_disk, named = live_names(agent)
    assert on_disk == named  # nothing that no record names (the old layers are gone)
    assert agent.images is not None
    counted = await fs_inodes(cri)
    actual = files_under(agent.images.snapshots.root) + files_under(agent.images.content.root)
    assert actual <= counted + 20  # no disk use ImageFsInfo does not see (dirs aside)


async def test_removal_returns_at_once_and_image_fs_info_counts_the_trash(
    agent, cri, pusher, registry
):
    image = build_image([many_files("big", 2 * MANY)])
    name = unique("counted")
    pusher.push_image(name, image)
    ref = f"{registry.host}/{name}"
    before = await fs_inodes(cri)
    await pull(cri, ref)
    pulled = await fs_inodes(cri)
    assert pulled - before >= 2 * MANY
    await cri.images.RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image=ref)))
    # Gone from the records at once; its files stay on disk, and counted, until deleted
    # (the janitor may delete all 1,200 within a few ms here: what is counted must cover
    # whatever is still there, not a fixed share of it).
    assert not (
        await cri.images.ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(image=ref)))
    ).HasField("image")
    assert agent.images is not None
    counted = await fs_inodes(cri)
    on_disk = files_under(agent.images.snapshots.root) + files_under(agent.images.content.root)
    assert on_disk <= counted + 20  # (directories aside), the trash's remains included
    await trash_drained(agent)
    assert await fs_inodes(cri) <= before + 10


async def test_restart_is_ready_before_orphaned_data_is_deleted_and_deletion_resumes(
    short_dir, caplog
):
    caplog.set_level(logging.INFO, logger="agent.images")
    config = make_config(short_dir)
    first = Agent(config)
    await first.start()
    await first.stop(grace=0)
    # What a crash mid-removal leaves: a snapshot directory no record names.
    snapshots = f"{config.agent.root_dir}/snapshots"
    orphan = f"{snapshots}/0123456789abcdef/fs"
    # Big enough that stopping the agent interrupts its deletion (~10 us a file here;
    # with 4,000 files a fast machine had deleted them all before the stop took effect).
    for d in range(20):
        os.makedirs(f"{orphan}/d{d}")
        for i in range(1000):
            os.close(os.open(f"{orphan}/d{d}/f{i}", os.O_WRONLY | os.O_CREAT, 0o644))
    total = files_under(snapshots)

    second = Agent(config)
    await second.start()  # ready now; the deletion starts only now
    try:
        assert trash_entries(second) == 1, "the orphan was not moved to the trash"
        assert files_under(snapshots) == total, "recovery waited for the deletion"
        deadline = time.monotonic() + 30
        while files_under(snapshots) == total and time.monotonic() < deadline:  # noqa: ASYNC110 (a thread deletes)
            await asyncio.sleep(0.005)
    finally:
        await second.stop(grace=0)  # stops the deletion part way
    assert files_under(snapshots) > 0
    # One file of what is left (now in the trash) cannot be deleted for a while.
    stuck = next(
        (os.path.join(d, files[0]) for d, _, files in os.walk(f"{snapshots}/.trash") if files),
        None,
    )
    assert stuck is not None, "the stop did not interrupt the deletion: every file went"
    subprocess.run(["chattr", "+i", stuck], check=True)
    try:
        third = Agent(config)
        await third.start()
        try:
            async with CriClient(third.socket_path) as cri:
                await trash_drained(third)  # all it could: everything but the stuck file
                left = files_under(snapshots)
                assert 0 < left < 20
                # What could not be deleted still takes the disk, and is counted.
                assert await fs_inodes(cri) >= left - 2
        finally:
            await third.stop(grace=0)
    finally:
        subprocess.run(["chattr", "-i", stuck], check=True)

    fourth = Agent(config)  # the next start finishes the job
    await fourth.start()
    try:
        await trash_drained(fourth)
        async with CriClient(fourth.socket_path) as cri:
            assert await fs_inodes(cri) < 10
    finally:
        await fourth.stop(grace=0)
    assert files_under(snapshots) <= 2  # .trash itself
    messages = [r.getMessage() for r in caplog.records]
    assert any("cannot delete" in m for m in messages)
    assert any(m.startswith("deleted") and "removed image entries" in m for m in messages)


async def test_image_content_is_reachable_by_root_only(short_dir, pusher, registry):
    config = make_config(short_dir)
    os.makedirs(f"{config.agent.root_dir}/snapshots", mode=0o711)  # as an older agent made it
    image = build_image([layer([Device("dev/exposed", "char", 1, 3, mode=0o666), File("f")])])
    name = unique("private")
    pusher.push_image(name, image)
    agent = Agent(config)
    await agent.start()
    try:
        async with CriClient(agent.socket_path) as cri:
            await pull(cri, f"{registry.host}/{name}")
        assert agent.images is not None
        root = agent.images.snapshots.root
        assert stat.S_IMODE(os.stat(root).st_mode) == 0o700
        snapshot = agent.images.store.snapshot(image.diff_ids[0])
        assert snapshot is not None
        device = f"{agent.images.snapshots.fs_path(snapshot.name)}/dev/exposed"
        if not stat.S_ISCHR(os.lstat(device).st_mode):
            pytest.skip("mknod is not allowed here, so the layer carries no device")
        as_nobody = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "cat", device],
            capture_output=True,
            text=True,
            timeout=10,
        )
        assert as_nobody.returncode != 0
        assert "Permission denied" in as_nobody.stderr
        content = agent.images.content.root
        assert stat.S_IMODE(os.stat(content).st_mode) == 0o700
    finally:
        await agent.stop(grace=0)
