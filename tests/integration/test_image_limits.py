"""Layers over the node's limits are refused before they fill the disk (issue 11).

``image.max_layer_entries``, ``image.max_layer_unpacked_gb`` and ``image.disk_reserve_mb``:
each refusal is RESOURCE_EXHAUSTED naming its key, and leaves no snapshot, ingest or trash.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
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
from tests.support.layers import File, layer

pytestmark = pytest.mark.integration


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


async def refused(agent: Agent, image: str) -> str:
    async with CriClient(agent.socket_path) as cri:
        request = pb.PullImageRequest(image=pb.ImageSpec(image=image))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await cri.images.PullImage(request, timeout=60)
        status = pb.ImageStatusRequest(image=pb.ImageSpec(image=image))
        assert not (await cri.images.ImageStatus(status)).HasField("image")
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, info.value.details()
    return info.value.details() or ""


async def nothing_left(agent: Agent) -> None:
    """No snapshot, temporary dir, ingest or blob, once the trash is emptied."""
    assert agent.images is not None
    deadline = time.monotonic() + 30
    while agent.images.trash_entries and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    assert agent.images.trash_entries == 0
    snapshots = agent.images.snapshots.root
    assert [n for n in os.listdir(snapshots) if n != ".trash"] == []
    assert os.listdir(f"{snapshots}/.trash") == []
    assert os.listdir(agent.images.content.ingests) == []


async def test_a_layer_with_too_many_entries_is_refused(start_agent, pusher, registry):
    agent = await start_agent(**{"image.max_layer_entries": 50})
    name = unique("entries")
    pusher.push_image(name, build_image([layer([File(f"f{i}", b"x") for i in range(80)])]))
    details = await refused(agent, f"{registry.host}/{name}")
    assert "image.max_layer_entries" in details
    await nothing_left(agent)


async def test_a_layer_that_unpacks_too_big_is_refused(start_agent, pusher, registry):
    agent = await start_agent(**{"image.max_layer_unpacked_gb": 0.002})  # 2 MB
    name = unique("unpacked")
    # 8 MB of zeros: a 8 KB blob, so only the uncompressed size can tell.
    pusher.push_image(name, build_image([layer([File("zeros", bytes(8 << 20))], "gzip")]))
    details = await refused(agent, f"{registry.host}/{name}")
    assert "image.max_layer_unpacked_gb" in details
    await nothing_left(agent)


async def test_a_pull_that_would_eat_the_disk_reserve_is_refused_first(
    start_agent, pusher, registry
):
    free = os.statvfs("/tmp")
    agent = await start_agent(
        **{"image.disk_reserve_mb": (free.f_bavail * free.f_frsize >> 20) + 1024}
    )
    name = unique("reserve")
    pusher.push_image(name, build_image([layer([File("w", os.urandom(1 << 20))])]))
    details = await refused(agent, f"{registry.host}/{name}")
    assert "image.disk_reserve_mb" in details
    await nothing_left(agent)


@contextlib.contextmanager
def small_filesystem(path: str, megabytes: int):
    os.makedirs(path)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", path], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", path], check=True)


async def test_a_decompression_bomb_stops_at_the_reserve_and_never_fills_the_disk(
    short_dir, pusher, registry
):
    name = unique("bomb")
    # 256 MB of zeros in a ~250 KB blob, for a 96 MB filesystem with a 48 MB reserve.
    pusher.push_image(name, build_image([layer([File("zeros", bytes(256 << 20))], "gzip")]))
    with small_filesystem(f"{short_dir}/disk", 96) as disk:
        config = make_config(short_dir, **{"agent.root_dir": disk, "image.disk_reserve_mb": 48})
        agent = Agent(config)
        await agent.start()
        try:
            lowest = os.statvfs(disk).f_bavail
            pulling = asyncio.ensure_future(refused(agent, f"{registry.host}/{name}"))
            while not pulling.done():
                lowest = min(lowest, os.statvfs(disk).f_bavail)
                await asyncio.sleep(0.005)
            details = await pulling
            assert "image.disk_reserve_mb" in details  # refused by the reserve, not ENOSPC
            block = os.statvfs(disk).f_frsize
            assert lowest * block > 16 << 20  # the disk never came close to full
            await nothing_left(agent)
        finally:
            await agent.stop(grace=0)
