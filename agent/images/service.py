"""The image subsystem as the CRI layer sees it: pull, find, list, remove, usage.

It owns the content store, the snapshots, the metadata and the puller, and
keeps them consistent: removal deletes what no other image uses (snapshots,
blobs) but never what an in-flight pull relies on; recovery at start sweeps
what a crash may have left half done.

Removal is one critical section under the store lock: the records go and the
directories are renamed into the trash, in a thread that finishes even if the
client's deadline cancels the RPC. Whether a container uses the image is asked
inside it, on the event loop, just before: a create holds its image from the
lookup on (``pods.store``), and an image being removed is no longer found, so a
create racing a removal either holds the image (the removal is refused) or
does not find it (``NOT_FOUND``), never mounts layers on their way to the trash.
The bytes are deleted afterwards by the janitor (``trash``), in the
background; ``ImageFsInfo`` counts them until they are gone, and a pull of the
same image never waits for them. Recovery works the same way: it reconciles
records with the directories (renames only), and the janitor deletes what no
record names after the agent is ready.
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
from agent.images.progress import PullObserver
from agent.images.pull import Puller
from agent.images.registry import RegistryClient
from agent.images.snapshots import Snapshots
from agent.images.store import ImageRecord, ImageStore
from agent.images.store_lock import StoreLock
from agent.images.trash import drain
from agent.images.unpack_pool import UnpackPool

__all__ = ["FsUsage", "ImageManager"]

log = logging.getLogger(__name__)

_ABANDONED_INGEST_SECONDS = 7 * 24 * 3600
_USAGE_CACHE_SECONDS = 10.0
#: unpack workers kept started and idle, so a small layer never waits for a Python start
_WARM_WORKERS = 2


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
        self.lock = StoreLock()
        self.pool = UnpackPool(warm=min(_WARM_WORKERS, settings.max_concurrent_unpacks or 99))
        self._trash_wake = asyncio.Event()
        self._janitor: asyncio.Task[None] | None = None
        self.puller = Puller(
            settings,
            content=self.content,
            snapshots=self.snapshots,
            store=self.store,
            client=self.client,
            metrics=metrics,
            lock=self.lock,
            pool=self.pool,
            trashed=self._trash_wake.set,
        )
        self._pinned = {str(reference.parse(ref)) for ref in settings.pinned_images}
        #: Answers "does a container use this image id?"; the pods package sets it.
        self.in_use: Callable[[str], bool] = lambda image_id: False
        self._container_usage: tuple[float, int, int] | None = None
        self._removals: set[asyncio.Task[bool]] = set()
        #: ids whose removal has begun: ``find`` no longer answers them (see the docstring)
        self._removing: set[str] = set()

    @property
    def trash_pending(self) -> tuple[int, int]:
        """``(bytes, inodes)`` removed but not deleted yet."""
        totals = [t.pending for t in (self.snapshots.trash, self.content.trash)]
        return sum(b for b, _ in totals), sum(i for _, i in totals)

    @property
    def trash_entries(self) -> int:
        return len(self.snapshots.trash) + len(self.content.trash)

    def start_background_deletion(self) -> None:
        """Start deleting the trash (once the agent is ready: readiness never waits on it,
        nor competes with it for the disk)."""
        if self._janitor is None:
            trashes = [self.snapshots.trash, self.content.trash]
            self._janitor = asyncio.ensure_future(drain(trashes, self._trash_wake))
        self._trash_wake.set()

    async def close(self) -> None:
        for removal in list(self._removals):  # they are short: let them finish
            with contextlib.suppress(Exception):
                await removal
        await self.puller.close()
        await self.pool.close()
        await self.client.close()
        if self._janitor is not None:
            self.snapshots.trash.stop()
            self.content.trash.stop()
            self._janitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._janitor
            self._janitor = None

    # -- pull ------------------------------------------------------------------

    async def pull(self, image: str, credentials: Credentials | None) -> str:
        return await self.puller.pull(reference.parse(image), credentials)

    def pulls_in_progress(self) -> list[dict[str, object]]:
        return [p.as_dict() for p in self.puller.progress.values()]

    # -- lookups ---------------------------------------------------------------

    def find(self, text: str) -> ImageRecord | None:
        """An image by id (full, ``sha256:``-less, or unique prefix), tag or digest name;
        None for one being removed (a create must not start using it)."""
        found = self._lookup(text)
        return None if found is None or found.id in self._removing else found

    def _lookup(self, text: str) -> ImageRecord | None:
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
        """Remove the image ``text`` names (all its names); False if there was none.

        The removal runs to its end even if the caller is cancelled.
        """
        image = self.find(text)
        if image is None:
            return False
        task = asyncio.ensure_future(self._remove(image))
        self._removals.add(task)
        task.add_done_callback(self._removals.discard)
        return await asyncio.shield(task)

    async def _remove(self, image: ImageRecord) -> bool:
        async with self.lock.held():
            # Asked here, and marked removed with no await in between: a create looks up
            # and holds its image with no await in between too (see the docstring).
            if self.in_use(image.id):
                raise FailedPrecondition(f"image {image.id} is in use by a container")
            self._removing.add(image.id)
            try:
                protected = self.puller.protected  # stable: pulls protect under this lock
                removed = await asyncio.to_thread(self._remove_locked, image.id, protected)
            finally:
                self._removing.discard(image.id)
        self._trash_wake.set()
        if removed:
            log.info("removed image %s (%s)", image.id, ", ".join(image.names) or "no names")
        return True

    def _remove_locked(self, image_id: str, protected: set[str]) -> bool:
        """Forget the image and trash what no image uses (a thread, under the store lock)."""
        if self.store.get(image_id) is None:
            return False  # a concurrent removal was first
        self.store.remove_image(image_id)
        self._collect_locked(protected)
        return True

    def _collect_locked(self, protected: set[str]) -> None:
        """Trash every snapshot and blob no image record uses and no pull protects."""
        doomed = [s for s in self.store.snapshots(unused_only=True) if s.chain_id not in protected]
        self.store.remove_snapshots([s.chain_id for s in doomed])
        for snapshot in doomed:
            self.snapshots.remove(snapshot.name, (snapshot.size_bytes, snapshot.inodes))
        for digest in self.content.digests() - self.store.blobs() - protected:
            self.content.delete(digest)

    async def recover(self) -> None:
        """Reconcile records with the disk; idempotent, runs before the agent is ready.

        Only renames happen here (into the trash); the janitor deletes in the
        background once the agent is ready (:meth:`start_background_deletion`),
        so a crash that left GBs behind does not keep the agent unavailable.
        """
        await asyncio.to_thread(self._recover_locked)
        self.pool.prestart()
        self.puller.prestart()

    def _recover_locked(self) -> None:
        swept = self.snapshots.sweep_temporary()
        if swept:
            log.info("moving %d unfinished snapshot directories to the trash", len(swept))
        self.content.prune_ingests(_ABANDONED_INGEST_SECONDS)
        known = {s.name: s for s in self.store.snapshots()}
        on_disk = self.snapshots.names()
        for name in sorted(on_disk - set(known)):
            log.info("moving snapshot directory %s that no record names to the trash", name)
            self.snapshots.remove(name)
        missing = {s.chain_id for name, s in known.items() if name not in on_disk}
        for image in self.store.all():
            if missing.intersection(image.layers):
                log.warning(
                    "image %s lost unpacked layers; removing it so it is pulled again", image.id
                )
                self.store.remove_image(image.id)
        self.store.remove_snapshots(sorted(missing))
        self._collect_locked(set())
        pending = self.trash_entries
        if pending:
            log.info("%d removed entries will be deleted in the background", pending)

    # -- usage -------------------------------------------------------------------

    def image_fs_usage(self) -> FsUsage:
        """Snapshots, content and the trash (removed data holds the disk until deleted)."""
        snapshots = self.store.snapshots()
        content_bytes, content_files = self.content.usage()
        trash_bytes, trash_inodes = self.trash_pending
        return FsUsage(
            mountpoint=self.root_dir,
            used_bytes=sum(s.size_bytes for s in snapshots) + content_bytes + trash_bytes,
            inodes_used=sum(s.inodes for s in snapshots) + content_files + trash_inodes,
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
