"""hostUsers: false — a pod in its own user namespace, through the CRI.

The kubelet's mapping (container ids 0..65535 to a host range) is what the tests
send. Image layers appear owned by the container's own ids through idmapped
mounts (nothing chowned), the pod's root is not the host's root (it cannot write a
host file root owns), the network namespace belongs to the pod's user namespace,
and everything is undone with the pod. A volume the kubelet asks to id-map
(``Mount.uidMappings``, KEP-127) shows its files with their own ids; one that cannot
be id-mapped is FAILED_PRECONDITION and leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import AsyncIterator, Iterator, Sequence

import grpc
import pytest

from agent.api.cri.runtime.v1 import api_pb2 as pb
from tests.integration.test_pods import Env, environment, images  # noqa: F401

pytestmark = pytest.mark.integration

HOST_BASE = 1_000_000  # the host range the kubelet would give this pod
SIZE = 65536


def userns_options(host_id: int = HOST_BASE, *, uids: int = 1) -> pb.NamespaceOption:
    mappings = [
        pb.IDMapping(host_id=host_id + i * SIZE, container_id=i * SIZE, length=SIZE)
        for i in range(uids)
    ]
    return pb.NamespaceOption(
        userns_options=pb.UserNamespace(
            mode=pb.POD, uids=mappings, gids=[pb.IDMapping(host_id=host_id, length=SIZE)]
        )
    )


@pytest.fixture
async def env(short_dir, images) -> AsyncIterator[Env]:  # noqa: F811
    async with environment(short_dir, images) as env:
        yield env


async def userns_pod(env: Env) -> str:
    config = env.sandbox_config()
    config.linux.security_context.namespace_options.CopyFrom(userns_options())
    return await env.run_pod(config)


async def userns_container(env: Env, sid: str, name: str, mounts: Sequence[pb.Mount] = ()) -> str:
    config = env.container_config(name, "sleep", "1000", mounts=list(mounts))
    config.linux.security_context.namespace_options.CopyFrom(userns_options())
    cid = await env.create(sid, config)
    await env.start(cid)
    return cid


def id_mapped(host_path: str, container_path: str, **mapping: list[pb.IDMapping]) -> pb.Mount:
    """A volume the kubelet asks to id-map: with the pod's own mappings unless told."""
    pod = userns_options().userns_options
    return pb.Mount(
        container_path=container_path,
        host_path=host_path,
        uidMappings=mapping.get("uids", pod.uids),
        gidMappings=mapping.get("gids", pod.gids),
    )


def left_behind(env: Env) -> list[str]:
    """Containers' dirs and mounts the agent still has (a failed create must leave none)."""
    agent = env.agent.config.agent
    dirs = [f"{agent.root_dir}/containers", f"{agent.state_dir}/containers"]
    with open("/proc/self/mountinfo") as f:
        mounts = [line.split()[4] for line in f if f"{agent.state_dir}/containers/" in line]
    return [os.path.join(d, name) for d in dirs for name in os.listdir(d)] + mounts


async def owner(env: Env, cid: str, path: str) -> tuple[int, int]:
    """The uid and gid of ``path`` as the container sees them (the image has ls, not stat)."""
    listed = await env.exec(cid, "ls", "-lnd", path)
    assert listed.exit_code == 0, listed
    uid, gid = listed.stdout.split()[2:4]
    return int(uid), int(gid)


@contextlib.contextmanager
def ramfs(path: str) -> Iterator[str]:
    """A ramfs at ``path``: a filesystem no Linux can id-map."""
    os.mkdir(path)
    subprocess.run(["mount", "-t", "ramfs", "ramfs", path], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", path], check=False)


async def test_a_pod_in_its_own_user_namespace(env, tmp_path):
    sid = await userns_pod(env)
    host_dir = tmp_path / "host"
    host_dir.mkdir()
    (host_dir / "owned-by-root").write_text("host")
    config = env.container_config(
        "app", "sleep", "1000", mounts=[pb.Mount(container_path="/host", host_path=str(host_dir))]
    )
    config.linux.security_context.namespace_options.CopyFrom(userns_options())
    cid = await env.create(sid, config)
    await env.start(cid)
    uid_map = await env.exec(cid, "cat", "/proc/self/uid_map")
    assert uid_map.stdout.split() == [b"0", str(HOST_BASE).encode(), str(SIZE).encode()]
    owner = await env.exec(cid, "ls", "-ln", "/bin/sh")
    assert owner.stdout.split()[2:4] == [b"0", b"0"], owner  # the image's files, via the idmap
    wrote = await env.exec(cid, "sh", "-c", "echo pwn > /host/owned-by-root")
    assert wrote.exit_code != 0 and b"Permission denied" in wrote.stderr
    assert (host_dir / "owned-by-root").read_text() == "host"
    layer = await env.exec(cid, "sh", "-c", "echo ok > /written && cat /written")
    assert layer.stdout == b"ok\n"  # the writable layer belongs to the container's root
    net = await env.exec(cid, "ls", "/sys/class/net")
    assert b"eth0" in net.stdout  # sysfs of the pod's own network namespace
    status = await env.cri.runtime.Status(pb.StatusRequest())
    assert all(h.features.user_namespaces for h in status.runtime_handlers)
    await env.remove_pod(sid)
    state_dir = env.agent.config.agent.state_dir
    assert os.listdir(f"{state_dir}/userns") == []


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        (userns_options(uids=2), "exactly one mapping"),
        (
            pb.NamespaceOption(
                userns_options=pb.UserNamespace(
                    mode=pb.POD,
                    uids=[pb.IDMapping(host_id=HOST_BASE, container_id=1, length=SIZE)],
                    gids=[pb.IDMapping(host_id=HOST_BASE, length=SIZE)],
                )
            ),
            "container id 0 is not mapped",
        ),
        (pb.NamespaceOption(userns_options=pb.UserNamespace(mode=pb.CONTAINER)), "CONTAINER"),
        (
            pb.NamespaceOption(
                network=pb.NODE,
                userns_options=userns_options().userns_options,
            ),
            "host's network",
        ),
    ],
)
async def test_what_a_user_namespace_refuses(env, options, fragment):
    config = env.sandbox_config()
    config.linux.security_context.namespace_options.CopyFrom(options)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await env.run_pod(config)
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in (info.value.details() or "")
    listed = await env.cri.runtime.ListPodSandbox(pb.ListPodSandboxRequest())
    assert list(listed.items) == []


async def test_an_id_mapped_volume_shows_files_with_their_own_ids(env, tmp_path):
    """Host uid 1000's file is the container's uid 1000 through the mapping (nobody through a
    plain bind of the same dir), and what the pod's root writes lands on disk as uid 0."""
    sid = await userns_pod(env)
    volume = tmp_path / "volume"
    volume.mkdir()
    (volume / "app-file").write_text("app")
    os.chown(volume / "app-file", 1000, 1000)
    mounts = [
        id_mapped(str(volume), "/mapped"),
        pb.Mount(container_path="/plain", host_path=str(volume)),
    ]
    cid = await userns_container(env, sid, "mapped", mounts)
    assert await owner(env, cid, "/mapped/app-file") == (1000, 1000)
    assert await owner(env, cid, "/plain/app-file") == (65534, 65534)  # outside the pod's range
    wrote = await env.exec(cid, "sh", "-c", "echo hi > /mapped/by-root")
    assert wrote.exit_code == 0, wrote
    made = os.stat(volume / "by-root")
    assert (made.st_uid, made.st_gid) == (0, 0)  # not HOST_BASE: mapped back on the way in
    status = await env.status(cid)
    assert {m.host_path for m in status.mounts} == {str(volume)}  # the kubelet's, not staged
    await env.remove_pod(sid)
    assert left_behind(env) == []


@pytest.mark.parametrize(
    ("mapping", "userns", "fragment"),
    [
        (
            {"uids": [pb.IDMapping(host_id=HOST_BASE + SIZE, length=SIZE)]},
            True,
            "differ from the pod's user namespace",
        ),
        ({"gids": []}, True, "needs uid and gid mappings"),
        ({"uids": [pb.IDMapping(host_id=HOST_BASE, length=0)]}, True, "a mapping of 0 ids"),
        ({}, False, "needs a pod in a user namespace"),
    ],
    ids=["other-range", "uids-only", "empty-range", "host-users-pod"],
)
async def test_what_an_id_mapped_volume_refuses(env, tmp_path, mapping, userns, fragment):
    sid = await (userns_pod(env) if userns else env.run_pod())
    config = env.container_config(
        "bad", "true", mounts=[id_mapped(str(tmp_path), "/data", **mapping)]
    )
    if userns:
        config.linux.security_context.namespace_options.CopyFrom(userns_options())
    await env.create_refused(sid, config, fragment)
    assert left_behind(env) == []


async def test_a_volume_that_cannot_be_id_mapped_fails_clearly_and_leaves_nothing(env, tmp_path):
    sid = await userns_pod(env)
    with ramfs(str(tmp_path / "ramfs")) as volume:
        config = env.container_config("ramfs", "true", mounts=[id_mapped(volume, "/data")])
        config.linux.security_context.namespace_options.CopyFrom(userns_options())
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await env.create(sid, config)
        assert info.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        message = info.value.details() or ""
        assert "config.mounts[0] /data" in message and volume in message, message
        assert "is on ramfs, which cannot be id-mapped on Linux" in message, message
        listed = await env.cri.runtime.ListContainers(pb.ListContainersRequest())
        assert list(listed.containers) == []
        assert left_behind(env) == []  # the layers' id-mapped binds and the overlay are undone


async def test_dev_shm_in_a_user_namespace_is_the_pods_own(env):
    """Writable, owned by the container's root (host root's would be nobody), shared in the pod."""
    sid = await userns_pod(env)
    cid = await userns_container(env, sid, "shm")
    shm = await env.exec(cid, "ls", "-lnd", "/dev/shm")
    assert shm.stdout.split()[0] == b"drwxrwxrwt", shm
    assert await owner(env, cid, "/dev/shm") == (0, 0)
    wrote = await env.exec(cid, "sh", "-c", "echo x > /dev/shm/f")
    assert wrote.exit_code == 0, wrote
    assert await owner(env, cid, "/dev/shm/f") == (0, 0)
    state_dir = env.agent.config.agent.state_dir
    on_host = os.stat(f"{state_dir}/sandboxes/{sid}/shm/f")
    assert (on_host.st_uid, on_host.st_gid) == (HOST_BASE, HOST_BASE)
    peer = await userns_container(env, sid, "peer")
    seen = await env.exec(peer, "cat", "/dev/shm/f")
    assert seen.stdout == b"x\n", seen  # the pod's IPC namespace shares it
