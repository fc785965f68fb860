"""Recursive read-only mounts and SupplementalGroupsPolicy, through the CRI.

A recursive read-only mount is read-only on every submount too (a plain
read-only bind leaves a submount writable, which is what the feature exists
for); runc 1.1 cannot make one, so the agent does (mount_setattr). Strict
supplemental groups give a container only the pod's groups, not the ones the
image's /etc/group puts its user in.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest

from agent.api.cri.runtime.v1 import api_pb2 as pb
from tests.integration.test_pods import Env, environment, images  # noqa: F401
from tests.support.images import GROUP, build_image, busybox_entries
from tests.support.layers import File, layer
from tests.support.push import RegistryClient

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def grouped_image(registry) -> str:
    """busybox whose /etc/group puts user app (1000) in group video (44)."""
    entries = [e for e in busybox_entries() if getattr(e, "path", "") != "etc/group"]
    entries.append(File("etc/group", (GROUP + "video:x:44:app\n").encode()))
    image = build_image([layer(entries)], user="app")
    RegistryClient(registry.url).push_image("features/grouped", image, tag="v1")
    return f"{registry.host}/features/grouped:v1"


@pytest.fixture
async def env(short_dir, images, grouped_image) -> AsyncIterator[Env]:  # noqa: F811
    async with environment(short_dir, {**images, "grouped": grouped_image}) as env:
        await env.cri.images.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=grouped_image)))
        yield env


SUBMOUNT_FILE, SUBMOUNT_TEXT = "only-in-sub", "from the submount\n"


@contextlib.contextmanager
def dir_with_a_submount(base) -> Iterator[str]:
    top = base / "top"
    (top / "sub").mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(top / "sub")], check=True)
    try:
        (top / "sub" / SUBMOUNT_FILE).write_text(SUBMOUNT_TEXT)  # only in the submount
        yield str(top)
    finally:
        subprocess.run(["umount", "-l", str(top / "sub")], check=False)


async def test_a_recursive_read_only_mount_is_read_only_below_too(env, tmp_path):
    status = await env.cri.runtime.Status(pb.StatusRequest())
    assert all(h.features.recursive_read_only_mounts for h in status.runtime_handlers)
    sid = await env.run_pod()
    with dir_with_a_submount(tmp_path) as top:
        for rro, outcome in ((False, 0), (True, 1)):
            mount = pb.Mount(
                container_path="/data", host_path=top, readonly=True, recursive_read_only=rro
            )
            name = f"rro-{int(rro)}"
            cid = await env.run(sid, name, "sleep", "1000", mounts=[mount])
            # The submount is there (read-only, not missing) before its write is tried.
            seen = await env.exec(cid, "cat", f"/data/sub/{SUBMOUNT_FILE}")
            assert seen.stdout.decode() == SUBMOUNT_TEXT, (rro, seen)
            wrote = await env.exec(cid, "sh", "-c", "echo x > /data/sub/file")
            assert (wrote.exit_code != 0) == bool(outcome), (rro, wrote)
            if outcome:
                assert b"Read-only file system" in wrote.stderr, wrote
            top_write = await env.exec(cid, "sh", "-c", "echo x > /data/file")
            assert top_write.exit_code != 0  # the top is read-only either way
            await env.cri.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=cid))
        await env.remove_pod(sid)
    state_dir = env.agent.config.agent.state_dir
    with open("/proc/self/mountinfo") as f:
        assert not [line for line in f if f"{state_dir}/containers/" in line]


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"readonly": False}, "needs readonly"),
        ({"propagation": pb.PROPAGATION_HOST_TO_CONTAINER}, "PROPAGATION_PRIVATE"),
        ({"propagation": pb.PROPAGATION_BIDIRECTIONAL}, "PROPAGATION_PRIVATE"),
    ],
)
async def test_what_a_recursive_read_only_mount_refuses(env, tmp_path, changes, fragment):
    sid = await env.run_pod()
    fields = {"container_path": "/data", "host_path": str(tmp_path), "readonly": True}
    mount = pb.Mount(**{**fields, "recursive_read_only": True, **changes})
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await env.create(sid, env.container_config("bad", "true", mounts=[mount]))
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in (info.value.details() or "")


async def test_supplemental_groups_policy_merge_and_strict(env):
    status = await env.cri.runtime.Status(pb.StatusRequest())
    assert status.features.supplemental_groups_policy
    sid = await env.run_pod()
    seen = {}
    for policy in (pb.Merge, pb.Strict):
        config = env.container_config(f"groups-{policy}", "sleep", "1000", image="grouped")
        context = config.linux.security_context
        context.supplemental_groups.append(1234)
        context.supplemental_groups_policy = policy
        cid = await env.create(sid, config)
        await env.start(cid)
        groups = await env.exec(cid, "id", "-G")
        reported = (await env.status(cid)).user.linux
        seen[policy] = (sorted(int(g) for g in groups.stdout.split()), reported)
    merged, merged_user = seen[pb.Merge]
    strict, strict_user = seen[pb.Strict]
    assert merged == [44, 1000, 1234]  # the image's /etc/group adds video
    assert strict == [1000, 1234]  # only the pod's
    assert sorted(merged_user.supplemental_groups) == [44, 1000, 1234]
    assert sorted(strict_user.supplemental_groups) == [1000, 1234]
    assert (strict_user.uid, strict_user.gid) == (1000, 1000)
