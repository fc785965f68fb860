"""The groups a container's status reports are the ones its process gets.

CDI edits (a GPU spec's ``additionalGids``, e.g. the ``video`` group) add groups after the
user is resolved, so the record must be read from the finished spec, not from the image's
user alone; a kubelet and ``ctl inspect`` otherwise show fewer groups than the process has.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest

from agent.gpu.assignment import Assignment
from agent.gpu.cdi.edits import apply_edits
from agent.gpu.cdi.spec import ContainerEdits
from agent.gpu.service import GpuService
from agent.pods import model
from tests.fakes.pods import IMAGE, FakePods, built


class GroupAddingGpu:
    """Stands in for ``GpuService``: every container gets one CDI edit, group 44."""

    def resolve(self, **_: Any) -> tuple[ContainerEdits, Assignment]:
        return ContainerEdits(additional_gids=(44,)), Assignment()

    def apply(self, spec: dict[str, Any], edits: ContainerEdits) -> None:
        apply_edits(spec, edits)


@pytest.fixture
async def pods(config) -> AsyncIterator[FakePods]:
    async with built(config, gpu=cast(GpuService, GroupAddingGpu())) as pods:
        yield pods


async def test_cdi_groups_are_in_the_record_as_in_the_spec(pods):
    sid = await pods.run_pod()
    security = model.ContainerSecurity(supplemental_groups=(7,))
    config = model.ContainerConfig(
        name="app", attempt=0, image=IMAGE, command=("sleep",), security=security
    )
    cid = await pods.containers.create(sid, config)
    with open(os.path.join(pods.containers.bundle(cid), "config.json")) as f:
        spec_groups = json.load(f)["process"]["user"]["additionalGids"]
    assert 44 in spec_groups and 7 in spec_groups
    assert pods.containers.status(cid).additional_gids == tuple(spec_groups)
