"""hostUsers: false — a pod in its own user namespace, through the CRI.

The kubelet's mapping (container ids 0..65535 to a host range) is what the tests
send. Image layers appear owned by the container's own ids through idmapped
mounts (nothing chowned), the pod's root is not the host's root (it cannot write a
host file root owns), the network namespace belongs to the pod's user namespace,
and everything is undone with the pod.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

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
