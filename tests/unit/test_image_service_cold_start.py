"""``PullImage`` tells the cold-start metrics whether the pod's pull fetched an image."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any, cast

import pytest
from prometheus_client import CollectorRegistry

from agent.api.cri.runtime.v1 import api_pb2 as pb
from agent.cri.image_service import ImageService
from agent.errors import Unavailable
from agent.images import ImageManager
from agent.metrics import RuntimeMetrics
from tests.unit.test_metrics_runtime import container, started


@dataclass
class _Found:
    id: str


class FakeImages:
    """What ``PullImage`` uses of ``ImageManager``: ``find`` and ``pull``."""

    def __init__(self, present: dict[str, str], pulled: str, fails: bool = False) -> None:
        self.present = present
        self.pulled = pulled
        self.fails = fails

    def find(self, text: str) -> _Found | None:
        found = self.present.get(text)
        return _Found(found) if found is not None else None

    async def pull(self, image: str, credentials: object) -> str:
        if self.fails:
            raise Unavailable("registry down")
        self.present[image] = self.pulled
        return self.pulled


def request(image: str = "registry.example/llm:1", uid: str = "uid-1") -> pb.PullImageRequest:
    config = pb.PodSandboxConfig(metadata=pb.PodSandboxMetadata(name="p", uid=uid))
    return pb.PullImageRequest(image=pb.ImageSpec(image=image), sandbox_config=config)


async def pull(images: FakeImages, **kwargs: str) -> list[tuple[str, int, bool]]:
    heard: list[tuple[str, int, bool]] = []
    service = ImageService(cast(ImageManager, images), on_pull=lambda *args: heard.append(args))
    with contextlib.suppress(Unavailable):  # a failed pull is heard of too
        await service.PullImage(request(**kwargs), cast(Any, None))
    return heard


@pytest.mark.parametrize(
    ("present", "pulled", "fetched"),
    [
        ({}, "sha256:new", True),  # absent: downloaded
        ({"registry.example/llm:1": "sha256:old"}, "sha256:new", True),  # the tag moved
        ({"registry.example/llm:1": "sha256:same"}, "sha256:same", False),  # cached
    ],
)
async def test_only_a_pull_that_fetched_makes_a_cold_start(present, pulled, fetched):
    heard = await pull(FakeImages(dict(present), pulled))
    assert [(uid, f) for uid, _, f in heard] == [("uid-1", fetched)]
    assert heard[0][1] > 0


async def test_a_failed_pull_of_an_absent_image_still_starts_the_cold_start():
    assert [f for _, _, f in await pull(FakeImages({}, "", fails=True))] == [True]
    cached = FakeImages({"registry.example/llm:1": "sha256:old"}, "", fails=True)
    assert [f for _, _, f in await pull(cached)] == [False]


async def test_image_pull_policy_always_on_a_cached_image_records_no_cold_start():
    registry = CollectorRegistry()
    metrics = RuntimeMetrics(registry)
    images = FakeImages({"registry.example/llm:1": "sha256:same"}, "sha256:same")
    service = ImageService(cast(ImageManager, images), on_pull=metrics.pull_requested)
    await service.PullImage(request(uid="uid-1"), cast(Any, None))  # cached
    await service.PullImage(request("registry.example/new:1", uid="uid-2"), cast(Any, None))
    now = time.time_ns()
    for uid in ("uid-1", "uid-2"):
        metrics.observe(started("a", container("a", created=now, started=now), uid=uid))
    count = "model_agent_pod_cold_start_duration_seconds_count"
    assert registry.get_sample_value(count) == 1  # uid-2 only
