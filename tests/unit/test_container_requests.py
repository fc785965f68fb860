"""What ``container_requests`` refuses before anything is made: log paths out of the
log directory, a PID namespace target that does not run, recursive read-only mounts the
kernel cannot make, user namespace options other than the pod's. Over FakePods where the
check is reached through ``ContainerManager.create``."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator

import pytest

from agent.errors import FailedPrecondition, InvalidArgument
from agent.pods import container_requests, model, mounts
from agent.pods.podfiles import PodDirs
from agent.pods.state import ContainerState, SandboxRecord, SandboxState
from tests.fakes.pods import IMAGE, FakePods, built

POD_USERNS = model.UserNamespace(
    uids=(model.IdMapping(0, 65536, 65536),), gids=(model.IdMapping(0, 65536, 65536),)
)


@pytest.fixture
async def pods(config) -> AsyncIterator[FakePods]:
    async with built(config) as pods:
        yield pods


def container(
    name: str = "app",
    *,
    namespaces: model.NamespaceOptions | None = None,
    mounts: tuple[model.Mount, ...] = (),
    log_path: str = "",
) -> model.ContainerConfig:
    security = model.ContainerSecurity(namespaces=namespaces or model.NamespaceOptions())
    return model.ContainerConfig(
        name=name,
        attempt=0,
        image=IMAGE,
        command=("sleep",),
        mounts=mounts,
        security=security,
        log_path=log_path,
    )


def sandbox(*, log_directory: str = "", userns: model.UserNamespace | None = None):
    security = model.PodSecurity(namespaces=model.NamespaceOptions(userns=userns))
    config = model.SandboxConfig(
        metadata=model.PodMetadata("pod", "uid-1", "ns"),
        log_directory=log_directory,
        security=security,
    )
    return SandboxRecord("s" * 64, config, SandboxState.READY, 0, "runc")


def joiner(target_id: str) -> model.ContainerConfig:
    return container("joiner", namespaces=model.NamespaceOptions(pid="TARGET", target_id=target_id))


# -- log paths ---------------------------------------------------------------------------


@pytest.mark.parametrize("relative", ["../x.log", "app/../../x.log"])
def test_a_log_path_with_dotdot_is_refused(tmp_path, relative):
    dirs = PodDirs(str(tmp_path / "root"), str(tmp_path / "state"))
    record = sandbox(log_directory=str(tmp_path / "logs"))
    with pytest.raises(InvalidArgument, match="escapes the log directory"):
        container_requests.log_path(dirs, record, container(log_path=relative), "c1")


def test_an_absolute_log_path_under_a_log_directory_is_refused(tmp_path):
    dirs = PodDirs(str(tmp_path / "root"), str(tmp_path / "state"))
    record = sandbox(log_directory=str(tmp_path / "logs"))
    with pytest.raises(InvalidArgument, match="relative to the sandbox's log_directory"):
        container_requests.log_path(dirs, record, container(log_path="/tmp/x.log"), "c1")


def test_a_log_path_through_an_escaping_link_stays_in_the_directory(tmp_path):
    dirs = PodDirs(str(tmp_path / "root"), str(tmp_path / "state"))
    logs = tmp_path / "logs"
    logs.mkdir()
    os.symlink("missing/../../out", logs / "ns")
    record = sandbox(log_directory=str(logs))
    path = container_requests.log_path(dirs, record, container(log_path="ns/app/0.log"), "c1")
    assert path == str(logs / "out" / "app" / "0.log")


# -- pid: TARGET -------------------------------------------------------------------------


async def test_a_created_target_is_refused(pods):
    sid = await pods.run_pod()
    target = await pods.create(sid, "target")
    with pytest.raises(FailedPrecondition, match="is CREATED, not running"):
        await pods.containers.create(sid, joiner(target))
    assert [c.config.name for c in pods.store.containers()] == ["target"]


async def test_a_running_target_is_joined(pods):
    sid = await pods.run_pod()
    target = await pods.create(sid, "target")
    await pods.containers.start(target)
    cid = await pods.containers.create(sid, joiner(target))
    with open(os.path.join(pods.containers.bundle(cid), "config.json")) as f:
        namespaces = json.load(f)["linux"]["namespaces"]
    pid = pods.store.container(target).pid
    assert {"type": "pid", "path": f"/proc/{pid}/ns/pid"} in namespaces


async def test_an_exited_target_is_refused(pods):
    sid = await pods.run_pod()
    target = await pods.create(sid, "target")
    await pods.containers.start(target)
    await pods.containers.stop(target, 0)
    assert pods.store.container(target).state is ContainerState.EXITED
    with pytest.raises(FailedPrecondition, match="is EXITED, not running"):
        await pods.containers.create(sid, joiner(target))


# -- recursive read-only -----------------------------------------------------------------


def rro_mount(source: str) -> model.Mount:
    return model.Mount("/data", source, readonly=True, recursive_read_only=True)


async def test_recursive_read_only_is_refused_where_unsupported(pods, tmp_path, monkeypatch):
    monkeypatch.setattr(mounts, "recursive_readonly_supported", lambda: False)
    sid = await pods.run_pod()
    calls = list(pods.runtime.calls)
    with pytest.raises(FailedPrecondition, match=r"config.mounts\[0\] /data: recursive read-only"):
        await pods.containers.create(sid, container(mounts=(rro_mount(str(tmp_path)),)))
    assert pods.store.containers() == [] and pods.runtime.calls == calls


async def test_recursive_read_only_is_made_where_supported(pods, tmp_path, monkeypatch):
    monkeypatch.setattr(mounts, "recursive_readonly_supported", lambda: True)
    sid = await pods.run_pod()
    cid = await pods.containers.create(sid, container(mounts=(rro_mount(str(tmp_path)),)))
    assert pods.store.container(cid).state is ContainerState.CREATED


# -- user namespace options --------------------------------------------------------------


async def test_a_container_user_namespace_in_a_host_users_pod_is_refused(pods):
    sid = await pods.run_pod()
    config = container(namespaces=model.NamespaceOptions(userns=POD_USERNS))
    with pytest.raises(InvalidArgument, match="userns_options: differs from the user namespace"):
        await pods.containers.create(sid, config)
    assert pods.store.containers() == []


def test_other_mappings_than_the_pods_are_refused():
    other = model.UserNamespace(uids=(model.IdMapping(0, 131072, 65536),), gids=POD_USERNS.gids)
    config = container(namespaces=model.NamespaceOptions(userns=other))
    with pytest.raises(InvalidArgument, match="userns_options: differs"):
        container_requests.check_userns(config, sandbox(userns=POD_USERNS))


@pytest.mark.parametrize("own", [None, POD_USERNS])
def test_the_pods_own_or_no_options_are_accepted(own):
    config = container(namespaces=model.NamespaceOptions(userns=own))
    container_requests.check_userns(config, sandbox(userns=POD_USERNS))
    assert config.security.namespaces.userns in (None, POD_USERNS)
