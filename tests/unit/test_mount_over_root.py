"""A mount whose target a link in the image resolves to ``/`` is refused (no root).

``cri.validate.container_target`` refuses ``/``, ``/.`` and ``/a/..`` from the text; a
symlink in the image (``/link -> /``, ``/up -> ..``) is only seen once the rootfs is
mounted. runc would mount over the whole root, making ``dev/ proc/ sys/`` inside the
volume's host directory before it fails; refused as INVALID_ARGUMENT, nothing left.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Sequence

import pytest

from agent.errors import InvalidArgument
from agent.pods import model
from tests.fakes.pods import IMAGE, FakeMounter, FakePods, built


class LinkingMounter(FakeMounter):
    """The "image" in the rootfs: links to the root, and one real directory."""

    async def overlay(
        self, target: str, *, lower_root: str, lowers: Sequence[str], upper: str, work: str
    ) -> None:
        await super().overlay(target, lower_root=lower_root, lowers=lowers, upper=upper, work=work)
        os.symlink("/", os.path.join(target, "link"))
        os.symlink("..", os.path.join(target, "up"))
        os.makedirs(os.path.join(target, "data"))
        os.symlink("/data", os.path.join(target, "data-link"))


@pytest.fixture
async def pods(config) -> AsyncIterator[FakePods]:
    async with built(config, mounter=LinkingMounter()) as pods:
        yield pods


def container(volume: str, target: str) -> model.ContainerConfig:
    mount = model.Mount(container_path=target, host_path=volume)
    return model.ContainerConfig(
        name=f"app-{len(target)}", attempt=0, image=IMAGE, command=("sleep",), mounts=(mount,)
    )


@pytest.mark.parametrize("target", ["/link", "/up", "/link/up/link", "/data/../link"])
async def test_a_link_to_the_root_is_refused(pods, tmp_path, target):
    sid = await pods.run_pod()
    with pytest.raises(InvalidArgument, match="resolves to the container's root filesystem"):
        await pods.containers.create(sid, container(str(tmp_path), target))
    assert pods.store.containers() == []
    assert [n for n in os.listdir(pods.containers.state) if n != "_logs"] == []
    assert os.listdir(tmp_path) == []  # runc never made dev/ proc/ sys/ in the volume


@pytest.mark.parametrize("target", ["/data", "/data-link", "/link/data", "/new/dir"])
async def test_a_target_inside_the_root_is_accepted(pods, tmp_path, target):
    sid = await pods.run_pod()
    cid = await pods.containers.create(sid, container(str(tmp_path), target))
    assert pods.store.get_container(cid) is not None
