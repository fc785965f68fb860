"""One layer of a pull: download into the ingest, unpack behind it, commit the snapshot.

    open the ingest (resuming finished parts) and a temporary snapshot
      -> download parts || the unpack worker follows the watermark (both digests checked)
      -> commit the snapshot (name + record, under the store lock)
      -> drop the ingest (or keep it as a blob: ``discard_unpacked_layers = false``)

On any failure the temporary snapshot goes to the trash; bytes that failed
verification and a layer over its limits lose their ingest too (never
resumed), a broken download keeps it (the next pull resumes). When the blob
is not kept, the worker frees what it read from the ingest as it goes, so a
big layer's compressed bytes are never written back to disk and never take
the disk twice.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable

from agent._util.locks import KeyedLock
from agent.config import ImageSection
from agent.errors import AgentError, InvalidArgument, ResourceExhausted
from agent.images.artifact import place_file
from agent.images.content import ContentStore, DigestMismatch, Ingest
from agent.images.download import Watermark
from agent.images.download_process import DownloadProcess
from agent.images.manifest import LAYER_TYPES, Descriptor
from agent.images.progress import PullObserver, PullProgress
from agent.images.repository import Repository
from agent.images.snapshots import Snapshots
from agent.images.store import ImageStore, SnapshotRecord
from agent.images.store_lock import StoreLock
from agent.images.unpack_pool import UnpackFailure, UnpackJob, UnpackPool

__all__ = ["LayerUnpacker"]

log = logging.getLogger(__name__)

#: The unpack worker frees what it read from a discarded blob in steps of at least this.
_PUNCH_STEP_BYTES = 64 << 20


class LayerUnpacker:
    def __init__(
        self,
        settings: ImageSection,
        *,
        content: ContentStore,
        snapshots: Snapshots,
        store: ImageStore,
        metrics: PullObserver,
        lock: StoreLock,
        pool: UnpackPool,
        downloads: DownloadProcess,
        trashed: Callable[[], None],
    ) -> None:
        self._settings = settings
        self._downloads = downloads
        self._content = content
        self._snapshots = snapshots
        self._store = store
        self._metrics = metrics
        self._lock = lock
        self._pool = pool
        #: called when something went to the trash (the janitor wakes up)
        self._trashed = trashed
        self._unpack_slots = asyncio.Semaphore(
            settings.max_concurrent_unpacks or os.cpu_count() or 1
        )
        #: one ingest per blob: the same blob under two chain ids unpacks in turn
        self._blobs = KeyedLock()

    async def unpack(
        self,
        repo: Repository,
        descriptor: Descriptor,
        diff_id: str,
        chain_id: str,
        connections: asyncio.Semaphore,
        progress: PullProgress,
        *,
        compression: str | None = None,
        file_path: str = "",
    ) -> SnapshotRecord:
        """The layer's snapshot. For an OCI artifact: ``compression`` of its tar (its
        media type is not an image layer's), ``diff_id`` "" when unknown; or, with
        ``file_path``, the blob verified and moved to that path in the snapshot."""
        async with self._blobs.hold(descriptor.digest):
            return await self._unpack_blob(
                repo,
                descriptor,
                diff_id,
                chain_id,
                connections,
                progress,
                LAYER_TYPES[descriptor.media_type] if compression is None else compression,
                file_path,
            )

    async def _unpack_blob(
        self,
        repo: Repository,
        descriptor: Descriptor,
        diff_id: str,
        chain_id: str,
        connections: asyncio.Semaphore,
        progress: PullProgress,
        compression: str,
        file_path: str,
    ) -> SnapshotRecord:
        settings = self._settings
        part_size = settings.download_part_mb << 20
        ingest = await asyncio.to_thread(
            self._content.open_ingest, descriptor.digest, descriptor.size, part_size
        )
        temporary = await asyncio.to_thread(self._snapshots.prepare)
        watermark = Watermark(descriptor.size)
        reserve = settings.disk_reserve_mb << 20
        job = UnpackJob(
            blob_path=ingest.data_path,
            blob_size=descriptor.size,
            blob_digest=descriptor.digest,
            diff_id=diff_id,
            compression=compression,
            dest=os.path.join(temporary, "fs"),
            max_bytes=int(settings.max_layer_unpacked_gb * 1e9),
            max_entries=settings.max_layer_entries,
            reserve_bytes=reserve,
            punch_step=_punch_step(part_size)
            if settings.discard_unpacked_layers and not file_path
            else 0,
            consumed_path=ingest.consumed_path,
            extract=not file_path,
        )

        def on_bytes(count: int) -> None:
            progress.add_bytes(count)
            self._metrics.bytes_received(repo.ref.domain, count)

        async def fetch() -> None:
            with progress.network():
                await self._downloads.download(
                    repo,
                    ingest,
                    watermark,
                    connections,
                    settings.max_concurrent_downloads,
                    on_bytes,
                    reserve,
                )

        usage: list[int] = []

        async def unpack() -> None:
            async with self._unpack_slots:
                result = await self._pool.run(job, watermark)
            if not result.ok:
                raise _unpack_error(
                    descriptor.digest, result.kind or UnpackFailure.CRASH, result.error
                )
            for warning in result.warnings:
                log.warning("layer %s: %s", descriptor.digest, warning)
            usage[:] = [result.size_bytes, result.inodes]

        committed = False
        try:
            try:
                async with asyncio.TaskGroup() as group:
                    group.create_task(fetch())
                    group.create_task(unpack())
            except* AgentError as errors:
                raise errors.exceptions[0] from None
            size, inodes = usage
            if file_path:  # the verified blob is the file: moved, never copied
                await asyncio.to_thread(
                    place_file, ingest.data_path, os.path.join(temporary, "fs"), file_path
                )
                inodes += file_path.count("/")
            record = await self._lock.run(
                self._commit, temporary, SnapshotRecord(chain_id, "", diff_id, size, inodes)
            )
            committed = True
        except _UnpackFailed as exc:
            if exc.kind is not UnpackFailure.DOWNLOAD:
                self._content.abort_ingest(descriptor.digest)  # never resume from bad bytes
            raise
        except ResourceExhausted:
            self._content.abort_ingest(descriptor.digest)  # give the full disk its space back
            raise
        finally:
            if not committed:
                self._snapshots.discard(temporary)
                self._trashed()
        if file_path:
            self._content.abort_ingest(ingest.digest)  # what is left of it: its part marks
            self._trashed()
        else:
            await self._finish_ingest(ingest)
        progress.layers_done += 1
        log.info(
            "layer %s unpacked (%d/%d)",
            descriptor.digest,
            progress.layers_done,
            progress.layers_total,
        )
        return record

    def _commit(self, temporary: str, snapshot: SnapshotRecord) -> SnapshotRecord:
        """Name the snapshot and record it (under the store lock, in a thread)."""
        name = self._snapshots.commit(temporary, snapshot.chain_id, self._store.snapshot_names())
        record = SnapshotRecord(
            snapshot.chain_id, name, snapshot.diff_id, snapshot.size_bytes, snapshot.inodes
        )
        self._store.add_snapshot(record)
        return record

    async def _finish_ingest(self, ingest: Ingest) -> None:
        if self._settings.discard_unpacked_layers:
            self._content.abort_ingest(ingest.digest)
            self._trashed()
        else:
            await asyncio.to_thread(self._content.commit_ingest, ingest)


class _UnpackFailed(AgentError):
    """The unpack worker refused a layer; ``kind`` says why (see ``unpack_process``)."""

    def __init__(self, kind: UnpackFailure, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class _CorruptBlob(_UnpackFailed, DigestMismatch):
    pass


class _UnsafeLayer(_UnpackFailed, InvalidArgument):
    pass


class _NoSpace(_UnpackFailed, ResourceExhausted):
    pass


class _TooBig(_UnpackFailed, ResourceExhausted):
    pass


def _unpack_error(digest: str, kind: UnpackFailure, error: str) -> _UnpackFailed:
    if kind.is_corruption():
        return _CorruptBlob(kind, f"layer {digest} failed verification: {error}")
    if kind is UnpackFailure.SPACE:
        return _NoSpace(kind, f"layer {digest}: {error}")
    if kind is UnpackFailure.LIMIT:
        return _TooBig(kind, f"layer {digest} refused: {error}")
    if kind is UnpackFailure.LAYER:
        return _UnsafeLayer(kind, f"layer {digest} cannot be unpacked: {error}")
    return _UnpackFailed(kind, f"layer {digest}: {error}")


def _punch_step(part_size: int) -> int:
    """Whole download parts, at least ``_PUNCH_STEP_BYTES`` (a resume refetches whole parts)."""
    return -(-_PUNCH_STEP_BYTES // part_size) * part_size
