"""The image subsystem as the CRI layer sees it: pull, find, list, remove, usage.

It owns the content store, the snapshots, the metadata and the puller, and
keeps them consistent: removal deletes what no other image uses (snapshots,
blobs) but never what an in-flight pull relies on; recovery at start sweeps
what a crash may have left half done.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from agent._util.fs import disk_usage
from agent.config import Config
from agent.db import MetadataDB
from agent.errors import FailedPrecondition, InvalidArgument, NotFound
from agent.images import reference
from agent.images.auth import Credentials
from agent.images.content import ContentStore
from agent.images.pull import Puller, PullObserver
from agent.images.registry import RegistryClient
from agent.images.snapshots import Snapshots
from agent.images.store import ImageRecord, ImageStore

__all__ = ["FsUsage", "ImageManager"]

log = logging.getLogger(__name__)

_ABANDONED_INGEST_SECONDS = 7 * 24 * 3600
_USAGE_CACHE_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class FsUsage:
    mountpoint: str
    used_bytes: int
    inodes_used: int
    timestamp_ns: int


class ImageManager:
    def __init__(self, config: Config, db: MetadataDB, metrics: PullObserver) -> None:
        settings = config.image
        root = config.agent.root_dir
        self.root_dir = root
        self.containers_dir = os.path.join(root, "containers")
        self.content = ContentStore(os.path.join(root, "content"))
        self.snapshots = Snapshots(os.path.join(root, "snapshots"))
        self.store = ImageStore(db)
        # A read that stalls this long is retried (resuming); the pull watchdog
        # gives up after pull_progress_timeout_seconds without any byte.
        read_timeout = min(60.0, settings.pull_progress_timeout_seconds)
        self.client = RegistryClient(settings, read_timeout=read_timeout)
        self.puller = Puller(
            settings,
            content=self.content,
            snapshots=self.snapshots,
            store=self.store,
            client=self.client,
            metrics=metrics,
        )
        self._pinned = {str(reference.parse(ref)) for ref in settings.pinned_images}
        #: Answers "does a container use this image id?"; the pods package sets it.
        self.in_use: Callable[[str], bool] = lambda image_id: False
        self._container_usage: tuple[float, int, int] | None = None

    async def close(self) -> None:
        await self.puller.close()
        await self.client.close()

    # -- pull ------------------------------------------------------------------

    async def pull(self, image: str, credentials: Credentials | None) -> str:
        return await self.puller.pull(reference.parse(image), credentials)

    def pulls_in_progress(self) -> list[dict[str, object]]:
        return [p.as_dict() for p in self.puller.progress.values()]

    # -- lookups ---------------------------------------------------------------

    def find(self, text: str) -> ImageRecord | None:
        """An image by id (full, ``sha256:``-less, or unique prefix), tag or digest name."""
        if not text:
            raise InvalidArgument("image is empty")
        if reference.is_digest(text):
            return self.store.get(text)
        if len(text) == 64 and all(c in "0123456789abcdef" for c in text):
            return self.store.get(f"sha256:{text}")
        try:
            ref = reference.parse(text)
        except InvalidArgument:
            ref = None
        if ref is not None:
            found = self.store.by_name(str(ref))
            if found is not None:
                return found
        prefix = text.removeprefix("sha256:")
        if prefix and all(c in "0123456789abcdef" for c in prefix):
            matches = self.store.by_id_prefix(prefix)
            if len(matches) == 1:
                return matches[0]
        if ref is None:
            raise InvalidArgument(f"'{text}' is neither an image reference nor an image id")
        return None

    def snapshot_name(self, chain_id: str) -> str:
        """The snapshot directory name of a layer an image uses (for overlay mounts)."""
        snapshot = self.store.snapshot(chain_id)
        if snapshot is None:
            raise NotFound(f"layer {chain_id} is not unpacked; pull the image again")
        return snapshot.name

    def layer_dirs(self, image: ImageRecord) -> tuple[str, list[str]]:
        """Where an image's layers are, for an overlay: (the snapshots root, the
        layer directories relative to it, top-most first)."""
        lowers = [os.path.join(self.snapshot_name(c), "fs") for c in reversed(image.layers)]
        return self.snapshots.root, lowers

    def all(self) -> list[ImageRecord]:
        return self.store.all()

    def pinned(self, image: ImageRecord) -> bool:
        return any(name in self._pinned for name in image.names)

    # -- removal and garbage collection -----------------------------------------

    async def remove(self, text: str) -> bool:
        """Remove the image ``text`` names (all its names); False if there was none."""
        image = self.find(text)
        if image is None:
            return False
        if self.in_use(image.id):
            raise FailedPrecondition(f"image {image.id} is in use by a container")
        orphans, kept_blobs = self.store.remove_image(image.id)
        log.info("removed image %s (%s)", image.id, ", ".join(image.names) or "no names")
        await self._collect(orphans_only=[s.chain_id for s in orphans], kept_blobs=kept_blobs)
        return True

    async def _collect(self, *, orphans_only: list[str], kept_blobs: set[str]) -> None:
        protected = self.puller.protected_chain_ids
        doomed = [
            s
            for s in self.store.snapshots(unused_only=True)
            if s.chain_id in orphans_only and s.chain_id not in protected
        ]
        self.store.remove_snapshots([s.chain_id for s in doomed])
        for snapshot in doomed:
            await asyncio.to_thread(self.snapshots.remove, snapshot.name)
        for digest in self.content.digests() - kept_blobs:
            self.content.delete(digest)

    async def recover(self) -> None:
        """Undo what a crash left half done. Idempotent; runs before the agent is ready."""
        swept = await asyncio.to_thread(self.snapshots.sweep_temporary)
        if swept:
            log.info("removed %d unfinished snapshot directories", len(swept))
        self.content.prune_ingests(_ABANDONED_INGEST_SECONDS)
        known = {s.name: s for s in self.store.snapshots()}
        on_disk = self.snapshots.names()
        for name in sorted(on_disk - set(known)):
            log.info("removing snapshot directory %s that no record names", name)
            await asyncio.to_thread(self.snapshots.remove, name)
        missing = {s.chain_id for name, s in known.items() if name not in on_disk}
        for image in self.store.all():
            if missing.intersection(image.layers):
                log.warning(
                    "image %s lost unpacked layers; removing it so it is pulled again", image.id
                )
                self.store.remove_image(image.id)
        self.store.remove_snapshots(sorted(missing))
        used = self.store.blobs()
        for digest in self.content.digests() - used:
            self.content.delete(digest)
        unused = [s.chain_id for s in self.store.snapshots(unused_only=True)]
        await self._collect(orphans_only=unused, kept_blobs=used)

    # -- usage -------------------------------------------------------------------

    def image_fs_usage(self) -> FsUsage:
        snapshots = self.store.snapshots()
        content_bytes, content_files = self.content.usage()
        return FsUsage(
            mountpoint=self.root_dir,
            used_bytes=sum(s.size_bytes for s in snapshots) + content_bytes,
            inodes_used=sum(s.inodes for s in snapshots) + content_files,
            timestamp_ns=time.time_ns(),
        )

    async def container_fs_usage(self) -> FsUsage:
        """Writable layers of containers (walked at most every 10 s)."""
        now = time.monotonic()
        cached = self._container_usage
        if cached is None or now - cached[0] > _USAGE_CACHE_SECONDS:
            used, inodes = 0, 0
            with contextlib.suppress(FileNotFoundError):
                used, inodes = await asyncio.to_thread(disk_usage, self.containers_dir)
            cached = self._container_usage = (now, used, inodes)
        return FsUsage(self.containers_dir, cached[1], cached[2], time.time_ns())
