"""``runtime.v1.ImageService``: pull, list, inspect and remove images."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from agent.api.cri.runtime.v1 import api_pb2 as pb, api_pb2_grpc as pb_grpc
from agent.cri import convert
from agent.cri.batches import batches
from agent.cri.validate import require_image
from agent.errors import InvalidArgument
from agent.images import ImageManager, ImageRecord

__all__ = ["ImageService"]

Context = grpc.aio.ServicerContext[Any, Any]


class ImageService(pb_grpc.ImageServiceServicer):
    def __init__(
        self,
        images: ImageManager,
        *,
        on_pull: Callable[[str, int, bool], None] | None = None,
    ) -> None:
        """``on_pull(pod_uid, started_ns, fetched)`` hears of each pull made for a pod
        (cold-start metrics); ``fetched``: the image was absent or the pull changed it."""
        self._images = images
        self._on_pull = on_pull

    def _filtered(self, request: pb.ListImagesRequest | pb.StreamImagesRequest) -> list[pb.Image]:
        wanted = request.filter.image.image if request.HasField("filter") else ""
        records: list[ImageRecord]
        if wanted:
            found = self._images.find(wanted)
            records = [found] if found is not None else []
        else:
            records = self._images.all()
        return [convert.image_to_pb(r, pinned=self._images.pinned(r)) for r in records]

    async def ListImages(
        self, request: pb.ListImagesRequest, context: Context
    ) -> pb.ListImagesResponse:
        return pb.ListImagesResponse(images=self._filtered(request))

    async def StreamImages(
        self, request: pb.StreamImagesRequest, context: Context
    ) -> AsyncIterator[pb.StreamImagesResponse]:
        for batch in batches(self._filtered(request)):
            yield pb.StreamImagesResponse(images=batch)

    async def ImageStatus(
        self, request: pb.ImageStatusRequest, context: Context
    ) -> pb.ImageStatusResponse:
        image = self._images.find(require_image(request))
        if image is None:
            return pb.ImageStatusResponse()  # api.proto: unknown image -> empty response
        info = convert.image_verbose_info(image) if request.verbose else {}
        return pb.ImageStatusResponse(
            image=convert.image_to_pb(image, pinned=self._images.pinned(image)), info=info
        )

    async def PullImage(
        self, request: pb.PullImageRequest, context: Context
    ) -> pb.PullImageResponse:
        image = require_image(request)
        if self._on_pull is None or not request.HasField("sandbox_config"):
            image_id = await self._images.pull(image, convert.credentials_from_pb(request))
            return pb.PullImageResponse(image_ref=image_id)
        # imagePullPolicy: Always pulls a cached image too: only an absent or changed
        # image makes the pod a cold start (the pull resolves the tag either way).
        started = time.time_ns()
        before = self._present_id(image)
        image_id = ""
        try:
            image_id = await self._images.pull(image, convert.credentials_from_pb(request))
        finally:  # a failed pull of an absent image still starts the pod's cold start
            fetched = before is None or (bool(image_id) and image_id != before)
            self._on_pull(request.sandbox_config.metadata.uid, started, fetched)
        return pb.PullImageResponse(image_ref=image_id)

    def _present_id(self, image: str) -> str | None:
        """The id of the image ``image`` names now, if it is here."""
        try:
            found = self._images.find(image)
        except InvalidArgument:
            return None  # the pull says what is wrong with the name
        return found.id if found is not None else None

    async def RemoveImage(
        self, request: pb.RemoveImageRequest, context: Context
    ) -> pb.RemoveImageResponse:
        # api.proto: "This call is idempotent, and must not return an error if the
        # image has already been removed."
        await self._images.remove(require_image(request))
        return pb.RemoveImageResponse()

    async def ImageFsInfo(
        self, request: pb.ImageFsInfoRequest, context: Context
    ) -> pb.ImageFsInfoResponse:
        images = self._images.image_fs_usage()
        containers = await self._images.container_fs_usage()
        return pb.ImageFsInfoResponse(
            image_filesystems=[convert.fs_usage_to_pb(images)],
            container_filesystems=[convert.fs_usage_to_pb(containers)],
        )
