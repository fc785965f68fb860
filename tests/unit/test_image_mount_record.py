"""ContainerStatus reports an image volume's propagation: the one its request asked for,
kept with the container's stored config (so also after an agent restart)."""

from __future__ import annotations

from agent.api.cri.runtime.v1 import api_pb2 as pb
from agent.cri.convert.containers import container_status_to_pb
from agent.pods.model import ContainerConfig, Mount
from agent.pods.state import ContainerRecord, ContainerState

IMAGE, IMAGE_ID = "registry.test/models/weights:v1", "sha256:" + "a" * 64


def record_with_image_volumes() -> ContainerRecord:
    mounts = (
        Mount("/models", "", readonly=True, propagation="HOST_TO_CONTAINER", image=IMAGE),
        Mount("/more", "", readonly=True, image=IMAGE, image_sub_path="model"),
    )
    return ContainerRecord(
        id="c" * 64,
        sandbox_id="s" * 64,
        config=ContainerConfig(name="server", attempt=0, image="busybox", mounts=mounts),
        image_id="sha256:" + "b" * 64,
        image_ref="busybox",
        state=ContainerState.CREATED,
        created_at=1,
        log_path="/logs/server/0.log",
        handler="",
        image_mounts=(
            ("/models", IMAGE, IMAGE_ID, ""),
            ("/more", IMAGE, IMAGE_ID, "model"),
        ),
    )


def test_container_status_reports_an_image_volume_propagation():
    status = container_status_to_pb(record_with_image_volumes())
    reported = [
        (m.container_path, m.image.image_ref, m.image_sub_path, m.readonly, m.propagation)
        for m in status.mounts
    ]
    assert reported == [
        ("/models", IMAGE_ID, "", True, pb.PROPAGATION_HOST_TO_CONTAINER),
        ("/more", IMAGE_ID, "model", True, pb.PROPAGATION_PRIVATE),
    ]
