"""The runtime's default masked and read-only paths, for a request that sends none.

The kubelet always sends them; another client may not, and then a non-privileged
container could write the host's ``/proc/sys/kernel/core_pattern``. Over the
FakeRuntime: the OCI spec each container gets (the bundle's ``config.json``).
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from agent.pods import model, spec
from agent.pods.container_requests import with_protective_paths
from tests.conftest import make_config
from tests.fakes.pods import IMAGE, FakePods, build


@pytest.fixture
async def pods(short_dir: str) -> AsyncIterator[FakePods]:
    pods = build(make_config(short_dir))
    yield pods
    await pods.containers.close()
    pods.close()


@pytest.fixture
async def pods_without_defaults(short_dir: str) -> AsyncIterator[FakePods]:
    pods = build(make_config(short_dir, **{"runtime.default_masked_paths": False}))
    yield pods
    await pods.containers.close()
    pods.close()


def container(**security: object) -> model.ContainerConfig:
    return model.ContainerConfig(
        name="app",
        attempt=0,
        image=IMAGE,
        command=("sleep",),
        security=model.ContainerSecurity(**security),  # type: ignore[arg-type]
    )


def linux_paths(pods: FakePods, cid: str) -> tuple[list[str], list[str]]:
    with open(os.path.join(pods.containers.bundle(cid), "config.json")) as f:
        linux = json.load(f)["linux"]
    return linux.get("maskedPaths", []), linux.get("readonlyPaths", [])


async def test_a_request_without_paths_gets_the_defaults(pods):
    cid = await pods.containers.create(await pods.run_pod(), container())
    masked, readonly = linux_paths(pods, cid)
    assert masked == list(spec.DEFAULT_MASKED_PATHS) and "/proc/keys" in masked
    assert readonly == list(spec.DEFAULT_READONLY_PATHS) and "/proc/sys" in readonly


async def test_a_request_with_its_own_paths_gets_exactly_those(pods):
    cid = await pods.containers.create(
        await pods.run_pod(), container(masked_paths=("/proc/kcore",), readonly_paths=())
    )
    assert linux_paths(pods, cid) == (["/proc/kcore"], [])


async def test_privileged_containers_get_none(pods):
    cid = await pods.containers.create(await pods.run_pod(), container(privileged=True))
    assert linux_paths(pods, cid) == ([], [])


async def test_the_defaults_can_be_turned_off(pods_without_defaults):
    pods = pods_without_defaults
    cid = await pods.containers.create(await pods.run_pod(), container())
    assert linux_paths(pods, cid) == ([], [])


async def test_a_user_namespaced_pod_keeps_empty_lists_as_proc_mount_unmasked(pods):
    # Empty lists are how the kubelet asks for procMount: Unmasked, which only pods in a
    # user namespace may use: their /proc/sys belongs to the namespace, not the host.
    sid = await pods.run_pod()
    record = pods.store.sandbox(sid)
    userns = model.UserNamespace(
        uids=(model.IdMapping(0, 100000, 65536),), gids=(model.IdMapping(0, 100000, 65536),)
    )
    namespaces = replace(record.config.security.namespaces, userns=userns)
    in_userns = replace(
        record,
        config=replace(
            record.config, security=replace(record.config.security, namespaces=namespaces)
        ),
    )
    config = container()
    assert with_protective_paths(config, in_userns, enabled=True) is config
    host = with_protective_paths(config, record, enabled=True)
    assert host.security.masked_paths == spec.DEFAULT_MASKED_PATHS
