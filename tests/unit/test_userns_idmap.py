"""Whether this node can id-map, and what a mount that cannot be id-mapped answers (no root).

The advertised ``user_namespaces`` rests on a real probe at start (a bind of the
store's filesystem and a tmpfs, id-mapped through a throwaway user namespace), not on
the kernel version alone; a volume or layer the kernel refuses to id-map is
FAILED_PRECONDITION saying what and why, where any other mount failure stays UNKNOWN.
The system calls are replaced here; the integration tests make them for real.
"""

from __future__ import annotations

import errno
import os

import grpc
import pytest

from agent.errors import AgentError, FailedPrecondition, InvalidArgument
from agent.pods import model, mounts, sandboxes
from agent.pods.podfiles import PodDirs
from tests.conftest import make_config
from tests.fakes.pods import build

RELEASE = os.uname().release


@pytest.fixture(autouse=True)
def no_probe_yet(monkeypatch) -> None:
    """Each test starts before the probe ran, and leaves the module as it found it."""
    monkeypatch.setattr(mounts, "_idmap_probe_result", None)


def closed(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError as exc:
        return exc.errno == errno.EBADF
    return False


def refuse(err: int, call: str = "mount_setattr"):
    def attached_clone(source: str, target: str, **kwargs: object) -> None:
        raise mounts._CallFailed(err, call, source)

    return attached_clone


async def test_a_filesystem_that_cannot_idmap_is_a_failed_precondition(monkeypatch):
    monkeypatch.setattr(mounts, "_attached_clone", refuse(errno.EINVAL))
    with pytest.raises(FailedPrecondition) as info:
        await mounts.bind_special("/proc/self", "/nowhere", userns="/run/userns/pod")
    assert info.value.grpc_code is grpc.StatusCode.FAILED_PRECONDITION
    assert str(info.value) == (
        "id-mapped mount for the pod's user namespace: /proc/self is on proc, which cannot be "
        f"id-mapped on Linux {RELEASE}"
    )


async def test_a_kernel_without_mount_setattr_says_so(monkeypatch):
    monkeypatch.setattr(mounts, "_attached_clone", refuse(errno.ENOSYS))
    with pytest.raises(FailedPrecondition, match=r"mount_setattr\(2\) needs 5\.12"):
        await mounts.bind_special("/proc/self", "/nowhere", userns="/run/userns/pod")


@pytest.mark.parametrize(
    ("err", "call", "userns"),
    [
        (errno.ENOENT, "open_tree", "/run/userns/pod"),  # a missing source: not the idmap
        (errno.ENOENT, "move_mount", "/run/userns/pod"),
        (errno.EINVAL, "mount_setattr", ""),  # a recursive read-only bind, no idmap
    ],
)
async def test_other_mount_failures_stay_unknown(monkeypatch, err, call, userns):
    monkeypatch.setattr(mounts, "_attached_clone", refuse(err, call))
    with pytest.raises(AgentError) as info:
        await mounts.bind_special("/srv/data", "/nowhere", userns=userns, readonly=True)
    assert type(info.value) is AgentError, info.value
    assert f"{call}: {os.strerror(err)}" in str(info.value)


def test_tmpfs_refusals_name_the_kernel_that_can():
    message = mounts._idmap_refusal("a secret or token volume", "tmpfs", errno.EINVAL)
    assert message == (
        f"a secret or token volume is on tmpfs, which cannot be id-mapped on Linux {RELEASE} "
        "(tmpfs can be from Linux 6.3)"
    )


def test_the_filesystem_of_a_path_is_the_deepest_mount_holding_it():
    assert mounts._fs_type("/proc/self/status") == "proc"
    assert mounts._fs_type("/proc") == "proc"
    assert mounts._unescape_mountinfo("/mnt/with\\040space") == "/mnt/with space"


async def test_before_the_probe_the_kernel_version_decides(monkeypatch):
    monkeypatch.setattr(mounts, "_kernel_at_least", lambda major, minor: (major, minor) <= (5, 12))
    assert not mounts.idmapped_mounts_supported()
    assert "cannot id-map the layers of an overlay (5.19 or newer can)" in (
        mounts.why_no_idmapped_mounts()
    )


async def test_an_old_kernel_is_not_probed(monkeypatch):
    monkeypatch.setattr(mounts, "_kernel_at_least", lambda major, minor: False)

    async def no_userns() -> int:
        raise AssertionError("probed a kernel that cannot overlay id-mapped layers")

    monkeypatch.setattr(mounts, "_throwaway_userns", no_userns)
    problem = await mounts.probe_idmapped_mounts("/var/lib/model-agent")
    assert "5.19 or newer" in problem
    assert mounts.why_no_idmapped_mounts() == problem


async def test_the_probe_decides_once_it_ran(monkeypatch):
    """A kernel new enough is not enough: the probe's answer is what the node advertises."""
    monkeypatch.setattr(mounts, "_kernel_at_least", lambda major, minor: True)
    fds: list[int] = []

    async def userns() -> int:
        fds.append(os.open("/dev/null", os.O_RDONLY))
        return fds[-1]

    monkeypatch.setattr(mounts, "_throwaway_userns", userns)
    monkeypatch.setattr(mounts, "_try_idmaps", lambda root_dir, fd: f"{root_dir} is on ntfs3")
    assert await mounts.probe_idmapped_mounts("/store") == "/store is on ntfs3"
    assert not mounts.idmapped_mounts_supported()
    assert mounts.why_no_idmapped_mounts() == "/store is on ntfs3"
    monkeypatch.setattr(mounts, "_try_idmaps", lambda root_dir, fd: "")
    assert await mounts.probe_idmapped_mounts("/store") == ""
    assert mounts.idmapped_mounts_supported()
    assert all(closed(fd) for fd in fds)  # the probe closed the namespace's fd each time


async def test_no_user_namespace_to_probe_with_means_none_advertised(monkeypatch):
    monkeypatch.setattr(mounts, "_kernel_at_least", lambda major, minor: True)

    async def no_unshare() -> int:
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", "unshare")

    monkeypatch.setattr(mounts, "_throwaway_userns", no_unshare)
    problem = await mounts.probe_idmapped_mounts("/store")
    assert problem.startswith("no user namespace to probe id-mapped mounts with:")
    assert not mounts.idmapped_mounts_supported()


def test_the_probe_tries_the_store_then_a_tmpfs(monkeypatch):
    """A store that can idmap on a kernel whose tmpfs cannot (5.19 to 6.2): not supported."""
    tried: list[str] = []
    opened: list[int] = []

    def open_null(*args: object, **kwargs: object) -> int:
        opened.append(os.open("/dev/null", os.O_RDONLY))
        return opened[-1]

    def set_attrs(mount: int, what: str, **kwargs: object) -> None:
        tried.append(what)
        if what == "a secret or token volume":
            raise mounts._CallFailed(errno.EINVAL, "mount_setattr", what)

    monkeypatch.setattr(mounts, "_clone_tree", open_null)
    monkeypatch.setattr(mounts, "_detached_tmpfs", open_null)
    monkeypatch.setattr(mounts, "_set_mount_attrs", set_attrs)
    problem = mounts._try_idmaps("/proc", userns_fd=0)
    assert tried == ["the image store /proc", "a secret or token volume"]
    assert problem == (
        f"a secret or token volume is on tmpfs, which cannot be id-mapped on Linux {RELEASE} "
        "(tmpfs can be from Linux 6.3)"
    )
    assert all(closed(fd) for fd in opened)  # each detached mount closed: nothing stays


# -- a user-namespaced pod on a node that cannot id-map, through the sandbox manager --------


async def test_a_user_namespaced_pod_is_refused_before_anything_is_made(monkeypatch, short_dir):
    userns = model.UserNamespace(
        uids=(model.IdMapping(0, 100000, 65536),), gids=(model.IdMapping(0, 100000, 65536),)
    )

    def pod(name: str, **namespaces: str) -> model.SandboxConfig:
        security = model.PodSecurity(namespaces=model.NamespaceOptions(userns=userns, **namespaces))
        return model.SandboxConfig(model.PodMetadata(name, "uid-1", "ns"), security=security)

    pods = build(make_config(short_dir))
    try:
        monkeypatch.setattr(sandboxes, "why_no_idmapped_mounts", lambda: "no mount_setattr(2)")
        with pytest.raises(FailedPrecondition, match="need id-mapped mounts: no mount_setattr"):
            await pods.sandboxes.run(pod("cannot-idmap"))
        with pytest.raises(InvalidArgument, match="cannot use the host's network namespace"):
            await pods.sandboxes.run(pod("host-network", network="NODE"))
        assert pods.store.sandboxes() == []
        dirs = PodDirs(pods.config.agent.root_dir, pods.config.agent.state_dir)
        for made in (dirs.root, dirs.state):
            assert not os.path.exists(made) or os.listdir(made) == []
    finally:
        await pods.containers.close()
        pods.close()
