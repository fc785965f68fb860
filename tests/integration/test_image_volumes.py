"""Image volumes (KEP-4639): an image's content mounted read-only into a container.

The weights image of ``test_pods`` has two layers (busybox and a weights file),
so it is an overlay of its snapshots with no upper dir; nothing is copied. While a
container mounts it the image is in use; an agent restart keeps knowing that.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import grpc
import pytest

from agent.api.cri.runtime.v1 import api_pb2 as pb
from tests.integration.test_pods import Env, environment, images  # noqa: F401

pytestmark = pytest.mark.integration


@pytest.fixture
async def env(short_dir, images) -> AsyncIterator[Env]:  # noqa: F811
    async with environment(short_dir, images) as env:
        await env.cri.images.PullImage(
            pb.PullImageRequest(image=pb.ImageSpec(image=images["model"]))
        )
        yield env


def image_mount(env: Env, sub_path: str = "") -> pb.Mount:
    image = pb.ImageSpec(image=env.images["model"])
    return pb.Mount(container_path="/models", readonly=True, image=image, image_sub_path=sub_path)


async def test_a_model_image_mounted_read_only_and_kept_in_use(env):
    sid = await env.run_pod()
    cid = await env.run(sid, "server", "sleep", "1000", mounts=[image_mount(env, "model")])
    weights = await env.exec(cid, "cat", "/models/weights.bin")
    assert weights.stdout == b"w" * 4096
    write = await env.exec(cid, "sh", "-c", "echo x > /models/new")
    assert write.exit_code != 0 and b"Read-only file system" in write.stderr
    status = await env.status(cid)
    mounts = [m for m in status.mounts if m.container_path == "/models"]
    assert [(m.image.image, m.image_sub_path, m.readonly) for m in mounts] == [
        (env.images["model"], "model", True)
    ]
    image_id = mounts[0].image.image_ref
    remove = pb.RemoveImageRequest(image=pb.ImageSpec(image=image_id))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await env.cri.images.RemoveImage(remove)
    assert info.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    await env.restart_agent()  # the mount stays; the agent still knows it
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await env.cri.images.RemoveImage(remove)
    assert info.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    again = await env.exec(cid, "cat", "/models/weights.bin")
    assert again.stdout == weights.stdout
    await env.remove_pod(sid)
    assert await env.cri.images.RemoveImage(remove) == pb.RemoveImageResponse()
    state_dir = env.agent.config.agent.state_dir
    with open("/proc/self/mountinfo") as f:
        assert not [line for line in f if f"{state_dir}/containers/" in line]
    left = os.listdir(f"{state_dir}/containers")
    assert all(n.startswith(".trash-") for n in left), left  # deleted in the background


async def test_an_image_volume_of_an_image_not_pulled_is_not_found(env):
    sid = await env.run_pod()
    mount = pb.Mount(
        container_path="/models", readonly=True, image=pb.ImageSpec(image="127.0.0.1:1/none:v1")
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await env.create(sid, env.container_config("x", "true", mounts=[mount]))
    assert info.value.code() is grpc.StatusCode.NOT_FOUND
    assert "pull it first" in (info.value.details() or "")
