"""Image volumes (KEP-4639): an image's content mounted read-only into a container.

The weights image of ``test_pods`` has two layers (busybox and a weights file),
so it is an overlay of its snapshots with no upper dir; nothing is copied. While a
container mounts it the image is in use; an agent restart keeps knowing that. The
busybox image has one layer, so mounted as a volume it is a read-only bind of its snapshot.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import AsyncIterator, Iterator

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


@contextlib.contextmanager
def shared_mount(path: str) -> Iterator[None]:
    """``path`` bind-mounted on itself and made shared, as a systemd host's ``/`` is: the
    agent's staged image volumes under it are then shared too, so propagation can work."""
    subprocess.run(["mount", "--bind", path, path], check=True)
    try:
        subprocess.run(["mount", "--make-shared", path], check=True)
        yield
    finally:
        subprocess.run(["umount", path], check=True)


@pytest.fixture
async def shared_env(short_dir, images) -> AsyncIterator[Env]:  # noqa: F811
    with shared_mount(short_dir):
        async with environment(short_dir, images) as env:
            await env.cri.images.PullImage(
                pb.PullImageRequest(image=pb.ImageSpec(image=images["model"]))
            )
            yield env


def image_mount(
    env: Env,
    sub_path: str = "",
    *,
    image: str = "model",
    path: str = "/models",
    propagation: pb.MountPropagation.ValueType = pb.PROPAGATION_PRIVATE,
) -> pb.Mount:
    return pb.Mount(
        container_path=path,
        readonly=True,
        image=pb.ImageSpec(image=env.images[image]),
        image_sub_path=sub_path,
        propagation=propagation,
    )


async def mount_in_container(env: Env, cid: str, path: str) -> tuple[set[str], list[str]]:
    """The per-mount options and the propagation tags (``shared:N``, ``master:N``) of the
    top-most mount at ``path`` as the container's own /proc/self/mountinfo shows it."""
    mountinfo = await env.exec(cid, "cat", "/proc/self/mountinfo")
    found = [line.split() for line in mountinfo.stdout.decode().splitlines()]
    at_path = [fields for fields in found if fields[4] == path]
    assert at_path, f"{path} is not a mount point in {cid}"
    top = at_path[-1]
    return set(top[5].split(",")), top[6 : top.index("-")]


async def test_a_model_image_mounted_read_only_and_kept_in_use(env):
    sid = await env.run_pod()
    cid = await env.run(sid, "server", "sleep", "1000", mounts=[image_mount(env, "model")])
    weights = await env.exec(cid, "cat", "/models/weights.bin")
    assert weights.stdout == b"w" * 4096
    options, tags = await mount_in_container(env, cid, "/models")
    assert {"ro", "nosuid", "nodev"} <= options and tags == []  # private by default
    write = await env.exec(cid, "sh", "-c", "echo x > /models/new")
    assert write.exit_code != 0 and b"Read-only file system" in write.stderr
    status = await env.status(cid)
    mounts = [m for m in status.mounts if m.container_path == "/models"]
    assert [(m.image.image, m.image_sub_path, m.readonly, m.propagation) for m in mounts] == [
        (env.images["model"], "model", True, pb.PROPAGATION_PRIVATE)
    ]
    image_id = mounts[0].image.image_ref
    remove = pb.RemoveImageRequest(image=pb.ImageSpec(image=image_id))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await env.cri.images.RemoveImage(remove)
    assert info.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    await env.restart_agent()  # the mount stays; the agent still knows it
    after = [m for m in (await env.status(cid)).mounts if m.container_path == "/models"]
    assert after == mounts  # reloaded from the record, image_ref included
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


def assert_nothing_left(env: Env) -> None:
    """No staged image mount and no container dir (but the trash) survives a refusal."""
    state_dir = env.agent.config.agent.state_dir
    with open("/proc/self/mountinfo") as f:
        assert not [line for line in f if f"{state_dir}/containers/" in line]
    containers = f"{state_dir}/containers"
    left = os.listdir(containers) if os.path.isdir(containers) else []
    assert all(n.startswith(".trash-") for n in left), left


@pytest.mark.parametrize("sub_path", ["/model", "../model", "model/../../etc"])
async def test_an_image_sub_path_leaving_the_image_is_refused(env, sub_path):
    sid = await env.run_pod()
    config = env.container_config("x", "true", mounts=[image_mount(env, sub_path)])
    await env.create_refused(sid, config, "must be a path inside the image")
    assert_nothing_left(env)
    await env.remove_pod(sid)


async def test_a_missing_image_sub_path_is_refused_and_unstaged(env):
    sid = await env.run_pod()
    config = env.container_config("x", "true", mounts=[image_mount(env, "not-there")])
    await env.create_refused(sid, config, "image_sub_path 'not-there' does not exist")
    assert_nothing_left(env)  # the image was staged before the check: it is undone
    await env.remove_pod(sid)


async def test_a_single_layer_image_volume_is_read_only_nosuid_and_nodev(env):
    sid = await env.run_pod()
    mount = image_mount(env, image="busybox", path="/tools")
    cid = await env.run(sid, "server", "sleep", "1000", mounts=[mount])
    options, _ = await mount_in_container(env, cid, "/tools")
    assert {"ro", "nosuid", "nodev"} <= options
    assert (await env.exec(cid, "/tools/bin/busybox", "true")).exit_code == 0
    # The staged bind on the host too: the image's device nodes and setuid files must not
    # work through a host path (the state dirs are 0711 for user namespaces).
    staged = f"{env.agent.config.agent.state_dir}/containers/{cid}/images/0"
    with open("/proc/self/mountinfo") as f:
        (host_options,) = [set(ln.split()[5].split(",")) for ln in f if ln.split()[4] == staged]
    assert {"ro", "nosuid", "nodev"} <= host_options
    await env.remove_pod(sid)


async def test_host_to_container_propagation_of_an_image_volume(shared_env):
    """Reported, applied (the container's mount is a slave: a mount the host makes inside
    the volume appears in the container), and still reported after an agent restart."""
    env = shared_env
    sid = await env.run_pod()
    mount = image_mount(env, propagation=pb.PROPAGATION_HOST_TO_CONTAINER)
    cid = await env.run(sid, "server", "sleep", "1000", mounts=[mount])

    async def reported() -> list[pb.MountPropagation.ValueType]:
        status = await env.status(cid)
        return [m.propagation for m in status.mounts if m.container_path == "/models"]

    assert await reported() == [pb.PROPAGATION_HOST_TO_CONTAINER]
    options, tags = await mount_in_container(env, cid, "/models")
    assert {"ro", "nosuid", "nodev"} <= options
    assert any(t.startswith("master:") for t in tags), tags
    staged = f"{env.agent.config.agent.state_dir}/containers/{cid}/images/0/model"
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "from-host", staged], check=True)
    try:
        seen, _ = await mount_in_container(env, cid, "/models/model")
        assert "rw" in seen  # the host's tmpfs, not the read-only image below it
    finally:
        subprocess.run(["umount", staged], check=True)
    await env.restart_agent()
    assert await reported() == [pb.PROPAGATION_HOST_TO_CONTAINER]
    await env.remove_pod(sid)
