"""What a hostile or careless CRI client can no longer do (issue: security).

Each test is a request that used to get through: a container name that became a
host path, a default log file shared between pods and never removed, a
container joining another pod's PID namespace, a container with no masked
paths writing the host's core_pattern, a named AppArmor profile ignored.
"""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import AsyncIterator

import grpc
import pytest

from agent.api.cri.runtime.v1 import api_pb2 as pb
from tests.integration.test_pods import Env, environment, images  # noqa: F401

pytestmark = pytest.mark.integration


@pytest.fixture
async def env(short_dir, images) -> AsyncIterator[Env]:  # noqa: F811
    async with environment(short_dir, images) as env:
        yield env


async def create_error(env: Env, sid: str, config: pb.ContainerConfig) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await env.create(sid, config)
    return info.value


async def test_a_name_never_becomes_a_path(env, tmp_path):
    sid = await env.run_pod()
    for name in ("../../../tmp/x", "a/b", "..", ".hidden", "-dash"):
        config = env.container_config(name, "true")
        config.ClearField("log_path")  # the default log path used to be built from the name
        error = await create_error(env, sid, config)
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "config.metadata.name" in (error.details() or "")
    assert not os.path.exists("/run/tmp/x.log")
    bad_pod = env.sandbox_config()
    bad_pod.metadata.name = "../escape"
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await env.run_pod(bad_pod)
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    listed = await env.cri.runtime.ListContainers(pb.ListContainersRequest())
    assert list(listed.containers) == []


async def test_default_logs_are_per_container_and_go_with_the_pod(env):
    """No log_path: each container gets its own file in its pod's directory (two pods'
    containers of the same name used to share one file that nobody removed)."""
    paths = []
    for _ in range(2):
        sid = await env.run_pod(env.sandbox_config(log_directory=""))
        config = env.container_config("same-name", "sh", "-c", "echo hello")
        config.ClearField("log_path")
        cid = await env.create(sid, config)
        await env.start(cid)
        await env.wait_exit(cid)
        status = await env.status(cid)
        assert cid in status.log_path and sid in status.log_path
        assert "hello" in await env.log(cid, wait_for="hello")
        paths.append((sid, status.log_path))
    assert paths[0][1] != paths[1][1]
    for sid, path in paths:
        await env.remove_pod(sid)
        assert not os.path.exists(path)


async def test_a_container_cannot_join_another_pods_pid_namespace(env):
    victim_pod = await env.run_pod()
    victim = await env.run(victim_pod, "victim", "sleep", "1000")
    attacker_pod = await env.run_pod()
    config = env.container_config("attacker", "sleep", "1000")
    config.linux.security_context.namespace_options.pid = pb.TARGET
    config.linux.security_context.namespace_options.target_id = victim
    error = await create_error(env, attacker_pod, config)
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "another pod" in (error.details() or "")
    # Within its own pod it works, as the kubelet uses it (ephemeral debug containers).
    neighbour = env.container_config("neighbour", "sleep", "1000")
    neighbour.linux.security_context.namespace_options.pid = pb.TARGET
    neighbour.linux.security_context.namespace_options.target_id = victim
    cid = await env.create(victim_pod, neighbour)
    await env.start(cid)
    seen = await env.exec(cid, "ps")
    assert b"sleep 1000" in seen.stdout


async def test_a_request_with_no_masked_paths_gets_the_defaults(env):
    sid = await env.run_pod()
    bare = env.container_config("bare", "sleep", "1000")
    bare.linux.security_context.ClearField("masked_paths")
    bare.linux.security_context.ClearField("readonly_paths")
    cid = await env.create(sid, bare)
    await env.start(cid)
    write = await env.exec(cid, "sh", "-c", "echo '|/tmp/pwn' > /proc/sys/kernel/core_pattern")
    assert write.exit_code != 0 and b"Read-only file system" in write.stderr
    keys = await env.exec(cid, "cat", "/proc/keys")
    assert keys.stdout == b""  # masked: an empty file
    timers = await env.exec(cid, "cat", "/proc/timer_list")
    assert timers.stdout == b""


async def test_apparmor_profiles_are_never_ignored(env):
    """This host has no AppArmor: a named profile is refused, RuntimeDefault falls back."""
    if os.path.exists("/sys/kernel/security/apparmor/profiles"):
        pytest.skip("the host has AppArmor; the unit tests cover its profile choice")
    sid = await env.run_pod()
    named = env.container_config("named", "sleep", "1000")
    named.linux.security_context.apparmor.CopyFrom(
        pb.SecurityProfile(profile_type=pb.SecurityProfile.Localhost, localhost_ref="k8s-deny")
    )
    error = await create_error(env, sid, named)
    assert error.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "no AppArmor" in (error.details() or "")
    default = env.container_config("default", "sleep", "1000")
    default.linux.security_context.apparmor.CopyFrom(
        pb.SecurityProfile(profile_type=pb.SecurityProfile.RuntimeDefault)
    )
    cid = await env.create(sid, default)  # nothing to confine with: runs, as with containerd
    assert (await env.status(cid)).state == pb.CONTAINER_CREATED
    # The pod's own profile (its infra process) is refused the same way, before anything
    # of the pod exists.
    pod = env.sandbox_config("named-pod")
    pod.linux.security_context.apparmor.CopyFrom(
        pb.SecurityProfile(profile_type=pb.SecurityProfile.Localhost, localhost_ref="k8s-deny")
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await env.run_pod(pod)
    assert refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "no AppArmor" in (refused.value.details() or "")
    listed = await env.cri.runtime.ListPodSandbox(pb.ListPodSandboxRequest())
    assert [p.metadata.name for p in listed.items if p.metadata.name == "named-pod"] == []


def as_nobody(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *argv],
        capture_output=True,
        text=True,
        check=False,
    )


async def test_a_containers_files_are_closed_to_host_users(env):
    """The merged rootfs and the writable layer hold the image's (and the container's own)
    setuid files and device nodes: no host user but root may reach them."""
    sid = await env.run_pod()
    cid = await env.create(sid, env.container_config("private", "sleep", "100"))
    await env.start(cid)
    config = env.agent.config.agent
    rootfs = f"{config.state_dir}/containers/{cid}/rootfs"
    upper = f"{config.root_dir}/containers/{cid}/upper"
    assert os.path.exists(f"{rootfs}/bin/sh")  # root sees the container's files
    for path in (f"{rootfs}/bin/sh", upper):
        denied = as_nobody("stat", path)
        assert denied.returncode != 0 and "Permission denied" in denied.stderr, path
    for path in (f"{config.state_dir}/containers/{cid}", f"{config.root_dir}/containers/{cid}"):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o700, path
