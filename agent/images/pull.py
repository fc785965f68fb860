"""Pull an image: resolve, fetch, unpack, record; fast, shared, never half-visible.

    resolve ref -> manifest (an index picks the host platform) -> config
      -> for each layer not yet unpacked (by chain id), concurrently:
           download parts into the ingest  ||  unpack worker follows the watermark
         -> verify both digests -> commit the snapshot
      -> store manifest and config blobs -> record the image and its names (one transaction)

Identical concurrent pulls (same reference and credentials) share one
operation, and two pulls needing the same layer share its unpack. A pull that
receives no bytes for ``pull_progress_timeout_seconds`` while downloading
fails with ``DEADLINE_EXCEEDED`` (the kubelet sets no deadline of its own).

Against removal: a pull protects the chain ids and blobs it needs and checks
which layers exist under the store lock, and commits snapshots and saves the
image under it too, so garbage collection never takes what a pull relies on;
what a removal deletes is already in the trash, so a pull never waits for a
deletion. Blocking work (file and SQLite writes) runs in threads; the event
loop only moves bytes.

Limits: a layer may unpack to at most ``max_layer_unpacked_gb`` and hold at
most ``max_layer_entries`` entries, and ``disk_reserve_mb`` must stay free;
a layer over them fails the pull with ``RESOURCE_EXHAUSTED`` and leaves
nothing behind (its ingest and snapshot go to the trash).

Size: one pull's order of operations against the store lock, which is what
keeps garbage collection from racing it, reads best as one piece.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.config import ImageSection
from agent.errors import AgentError, DeadlineExceeded, InvalidArgument
from agent.images.artifact import artifact_layers
from agent.images.auth import Credentials
from agent.images.content import ContentStore
from agent.images.download_process import DownloadProcess
from agent.images.layer_unpack import LayerUnpacker
from agent.images.manifest import (
    INDEX_TYPES,
    MANIFEST_TYPES,
    Descriptor,
    ImageConfig,
    Manifest,
    Platform,
    host_platform,
    parse_config,
    parse_index,
    parse_manifest,
    select_platform,
)
from agent.images.progress import PullObserver, PullProgress
from agent.images.reference import Reference, parse_digest
from agent.images.registry import RegistryClient
from agent.images.repository import Repository
from agent.images.snapshots import Snapshots, chain_ids
from agent.images.store import ImageStore, SnapshotRecord
from agent.images.store_lock import StoreLock
from agent.images.unpack_pool import UnpackPool

__all__ = ["Puller"]

log = logging.getLogger(__name__)

_MAX_CONFIG_BYTES = 16 << 20
_MAX_INDEX_DEPTH = 3
_PROGRESS_LOG_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class _LayerJob:
    """One layer to fetch: the snapshot ``key`` (chain id, or an artifact layer's content
    key), and for an artifact its tar's ``compression`` or the ``file_path`` of its blob."""

    descriptor: Descriptor
    diff_id: str
    key: str
    compression: str | None = None
    file_path: str = ""


@dataclass(frozen=True, slots=True)
class _Resolved:
    top_digest: str
    manifest_digest: str
    manifest_media_type: str
    documents: dict[str, bytes]  # digest -> manifest/index bytes to keep
    layers: tuple[Descriptor, ...]
    config_descriptor: Descriptor
    manifest: Manifest


class Puller:
    def __init__(
        self,
        settings: ImageSection,
        *,
        content: ContentStore,
        snapshots: Snapshots,
        store: ImageStore,
        client: RegistryClient,
        metrics: PullObserver,
        lock: StoreLock,
        pool: UnpackPool,
        trashed: Callable[[], None],
        platform: Platform | None = None,
    ) -> None:
        self._settings = settings
        self._content = content
        self._snapshots = snapshots
        self._store = store
        self._client = client
        self._metrics = metrics
        self._lock = lock
        self._downloads = DownloadProcess(client)
        self._unpacker = LayerUnpacker(
            settings,
            content=content,
            snapshots=snapshots,
            store=store,
            metrics=metrics,
            lock=lock,
            pool=pool,
            downloads=self._downloads,
            trashed=trashed,
        )
        self._platform = platform or host_platform()
        self._pulls: dict[tuple[str, str], asyncio.Task[str]] = {}
        self._layers: dict[str, asyncio.Task[SnapshotRecord]] = {}
        self._protected: collections.Counter[str] = collections.Counter()
        self.progress: dict[tuple[str, str], PullProgress] = {}

    @property
    def protected(self) -> set[str]:
        """Chain ids and blob digests in-flight pulls create or rely on: GC skips them."""
        return {key for key, count in self._protected.items() if count > 0}

    def prestart(self) -> None:
        """Start the download process now, so the first pull does not wait for it."""
        self._downloads.prestart()

    async def close(self) -> None:
        tasks = [*self._pulls.values(), *self._layers.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._downloads.close()

    async def pull(self, ref: Reference, credentials: Credentials | None) -> str:
        """Pull ``ref``; returns the image id (config digest)."""
        key = (str(ref), credentials.fingerprint() if credentials else "")
        task = self._pulls.get(key)
        if task is None:
            task = asyncio.ensure_future(self._pull_watched(ref, credentials, key))
            self._pulls[key] = task
            task.add_done_callback(lambda _: self._pulls.pop(key, None))
        else:
            log.info("joining the pull of %s already in progress", ref)
        # Callers share the operation: one caller going away does not cancel it.
        return await asyncio.shield(task)

    async def _pull_watched(
        self, ref: Reference, credentials: Credentials | None, key: tuple[str, str]
    ) -> str:
        progress = PullProgress(str(ref))
        self.progress[key] = progress
        self._metrics.pull_started(ref.domain)
        started = time.monotonic()
        result = "error"
        work = asyncio.ensure_future(self._pull(ref, credentials, progress))
        timeout = self._settings.pull_progress_timeout_seconds
        last_log = time.monotonic()
        try:
            while True:
                done, _ = await asyncio.wait({work}, timeout=min(1.0, timeout / 4))
                if done:
                    image_id = work.result()
                    result = "success"
                    return image_id
                if progress.stalled_for() > timeout:
                    work.cancel()
                    with contextlib.suppress(asyncio.CancelledError, AgentError):
                        await work
                    result = "stalled"
                    raise DeadlineExceeded(
                        f"pull of {ref} received no data for {timeout:g}s; giving up"
                    )
                if time.monotonic() - last_log > _PROGRESS_LOG_SECONDS:
                    last_log = time.monotonic()
                    log.info(
                        "pulling %s: %d/%d layers, %.1f/%.1f MB",
                        ref,
                        progress.layers_done,
                        progress.layers_total,
                        progress.bytes_done / 1e6,
                        progress.bytes_total / 1e6,
                    )
        finally:
            if not work.done():
                work.cancel()
                with contextlib.suppress(BaseException):
                    await work
            self.progress.pop(key, None)
            self._metrics.pull_finished(ref.domain, result, time.monotonic() - started)

    async def _pull(
        self, ref: Reference, credentials: Credentials | None, progress: PullProgress
    ) -> str:
        repo = Repository(self._client, ref, credentials)
        with progress.network():
            resolved = await self._resolve(repo, ref)
        if resolved.manifest.is_artifact:
            return await self._pull_artifact(ref, repo, resolved, progress)
        with progress.network():
            config_bytes = await repo.get_blob(
                resolved.config_descriptor.digest, resolved.config_descriptor.size
            )
        config = parse_config(config_bytes)
        if len(config.diff_ids) != len(resolved.layers):
            raise InvalidArgument(
                f"{ref}: the manifest has {len(resolved.layers)} layers but the config "
                f"{len(config.diff_ids)} diff_ids"
            )
        chains = chain_ids(config.diff_ids)
        needed = [
            *chains,
            *resolved.documents,
            resolved.config_descriptor.digest,
            *(layer.digest for layer in resolved.layers),
        ]
        # Protect and check under the store lock: a removal decides what is unused under it.
        async with self._lock.held():
            self._protected.update(needed)
            missing = [i for i, chain in enumerate(chains) if not self._have_snapshot(chain)]
        try:
            return await self._pull_layers(
                ref, repo, resolved, config, config_bytes, chains, missing, progress
            )
        finally:
            self._protected.subtract(needed)
            self._protected += collections.Counter()  # drop zero counts

    async def _pull_layers(
        self,
        ref: Reference,
        repo: Repository,
        resolved: _Resolved,
        config: ImageConfig,
        config_bytes: bytes,
        chains: list[str],
        missing: list[int],
        progress: PullProgress,
    ) -> str:
        jobs = [_LayerJob(resolved.layers[i], config.diff_ids[i], chains[i]) for i in missing]
        await self._fetch_layers(
            repo, jobs, len(chains), progress, f"{ref} ({resolved.manifest_digest})"
        )
        image_id = resolved.config_descriptor.digest
        documents = {**resolved.documents, image_id: config_bytes}
        kept_layers = [layer.digest for layer in resolved.layers]

        def save() -> None:
            for digest, data in documents.items():
                self._content.write(digest, data)
            self._store.save_image(
                image_id=image_id,
                manifest_digest=resolved.manifest_digest,
                manifest_media_type=resolved.manifest_media_type,
                config=config.raw,
                size_bytes=self._image_size(chains),
                layers=chains,
                # Layer blobs kept (discard_unpacked_layers = false) are the image's too.
                blobs=[*documents, *(d for d in kept_layers if self._content.has(d))],
                names=self._names(ref, resolved.top_digest),
            )

        await self._lock.run(save)
        log.info("pulled %s as %s in %.1fs", ref, image_id, time.monotonic() - progress.started)
        return image_id

    async def _pull_artifact(
        self, ref: Reference, repo: Repository, resolved: _Resolved, progress: PullProgress
    ) -> str:
        """An OCI artifact: each layer a snapshot of its own (``agent.images.artifact``),
        fetched like image layers (parallel parts, verified while downloading)."""
        manifest = resolved.manifest
        layers = artifact_layers(manifest)
        config_bytes = b""
        config_doc: Any = None
        if 0 < manifest.config.size <= _MAX_CONFIG_BYTES:
            with progress.network():
                config_bytes = await repo.get_blob(manifest.config.digest, manifest.config.size)
            with contextlib.suppress(ValueError, UnicodeDecodeError):
                config_doc = json.loads(config_bytes)
        diff_ids = _modelpack_diff_ids(config_doc, len(layers))
        keys = [layer.key for layer in layers]
        documents = dict(resolved.documents)
        if config_bytes:
            documents[manifest.config.digest] = config_bytes
        needed = [*keys, *documents, *(layer.descriptor.digest for layer in layers)]
        async with self._lock.held():
            self._protected.update(needed)
            missing = [i for i, key in enumerate(keys) if not self._have_snapshot(key)]
        try:
            jobs = [
                _LayerJob(
                    layers[i].descriptor,
                    # A file's bytes are its blob: one digest to check.
                    diff_ids[i] if layers[i].is_tar else "",
                    layers[i].key,
                    compression=layers[i].compression or "",
                    file_path=layers[i].path,
                )
                for i in missing
            ]
            what = f"artifact {ref} ({manifest.artifact_type}, {resolved.manifest_digest})"
            await self._fetch_layers(repo, jobs, len(layers), progress, what)
            image_id = resolved.manifest_digest
            description = {
                "artifactType": manifest.artifact_type,
                "annotations": manifest.annotations,
                "config": config_doc if isinstance(config_doc, dict) else None,
                "configMediaType": manifest.config.media_type,
                "layers": [
                    {
                        "mediaType": layer.descriptor.media_type,
                        "digest": layer.descriptor.digest,
                        "size": layer.descriptor.size,
                        **({"extract": True} if layer.is_tar else {"path": layer.path}),
                    }
                    for layer in layers
                ],
            }

            def save() -> None:
                for digest, data in documents.items():
                    self._content.write(digest, data)
                self._store.save_image(
                    image_id=image_id,
                    manifest_digest=resolved.manifest_digest,
                    manifest_media_type=resolved.manifest_media_type,
                    config=description,
                    size_bytes=self._image_size(keys),
                    layers=keys,
                    blobs=list(documents),
                    names=self._names(ref, resolved.top_digest),
                    artifact_type=manifest.artifact_type,
                )

            await self._lock.run(save)
        finally:
            self._protected.subtract(needed)
            self._protected += collections.Counter()
        log.info(
            "pulled artifact %s as %s in %.1fs",
            ref,
            image_id,
            time.monotonic() - progress.started,
        )
        return image_id

    def _names(self, ref: Reference, top_digest: str) -> list[str]:
        names = [f"{ref.name}@{top_digest}"]
        if ref.tag:
            names.append(str(ref))
        return names

    def _image_size(self, chains: list[str]) -> int:
        total = 0
        for chain in chains:
            snapshot = self._store.snapshot(chain)
            if snapshot is not None:
                total += snapshot.size_bytes
        return total

    def _have_snapshot(self, chain_id: str) -> bool:
        snapshot = self._store.snapshot(chain_id)
        return snapshot is not None and os.path.isdir(self._snapshots.fs_path(snapshot.name))

    async def _resolve(self, repo: Repository, ref: Reference) -> _Resolved:
        body, media_type, digest = await repo.get_manifest(ref.object)
        top_digest = digest
        documents = {digest: body}
        for _ in range(_MAX_INDEX_DEPTH):
            if media_type not in INDEX_TYPES:
                break
            choice = select_platform(parse_index(body, media_type), self._platform)
            body, media_type, digest = await repo.get_manifest(choice.digest)
            documents[digest] = body
        if media_type not in MANIFEST_TYPES:
            if media_type in INDEX_TYPES:
                raise InvalidArgument(f"{ref}: image indexes nested too deeply")
            raise InvalidArgument(f"{ref}: unsupported manifest media type '{media_type}'")
        manifest = parse_manifest(body, media_type)
        if manifest.config.size > _MAX_CONFIG_BYTES:
            raise InvalidArgument(f"{ref}: image config of {manifest.config.size} bytes is too big")
        return _Resolved(
            top_digest, digest, media_type, documents, manifest.layers, manifest.config, manifest
        )

    async def _fetch_layers(
        self,
        repo: Repository,
        jobs: list[_LayerJob],
        layer_count: int,
        progress: PullProgress,
        what: str,
    ) -> None:
        """Every missing layer at once, sharing the pull's connections; the first failure
        (an ``AgentError``) is the pull's."""
        progress.layers_total = layer_count
        progress.layers_done = layer_count - len(jobs)
        progress.bytes_total = sum(job.descriptor.size for job in jobs)
        log.info(
            "pulling %s: %d layers, %d to fetch, %.1f MB",
            what,
            layer_count,
            len(jobs),
            progress.bytes_total / 1e6,
        )
        connections = asyncio.Semaphore(self._settings.max_concurrent_downloads)
        try:
            async with asyncio.TaskGroup() as group:
                for job in jobs:
                    group.create_task(
                        self._layer(
                            repo,
                            job.descriptor,
                            job.diff_id,
                            job.key,
                            connections,
                            progress,
                            compression=job.compression,
                            file_path=job.file_path,
                        )
                    )
        except* AgentError as errors:
            raise errors.exceptions[0] from None

    async def _layer(
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
        """The snapshot for ``chain_id``, unpacking it unless another pull already is."""
        while True:
            shared = self._layers.get(chain_id)
            if shared is None:
                task = asyncio.ensure_future(
                    self._unpacker.unpack(
                        repo,
                        descriptor,
                        diff_id,
                        chain_id,
                        connections,
                        progress,
                        compression=compression,
                        file_path=file_path,
                    )
                )
                self._layers[chain_id] = task
                task.add_done_callback(lambda _: self._layers.pop(chain_id, None))
                try:
                    return await task
                finally:
                    if not task.done():
                        task.cancel()
            try:
                record = await asyncio.shield(shared)
            except asyncio.CancelledError:
                if shared.cancelled() and not _current_task_cancelling():
                    continue  # its owner gave up; do it ourselves
                raise
            progress.layers_done += 1
            return record


def _modelpack_diff_ids(config: Any, count: int) -> list[str]:
    """A ModelPack config's ``modelfs.diffIds`` (its layers' uncompressed digests, checked
    when a tar layer is extracted); "" for each layer when the artifact has none."""
    modelfs = config.get("modelfs") if isinstance(config, dict) else None
    ids = modelfs.get("diffIds") if isinstance(modelfs, dict) else None
    if isinstance(ids, list) and len(ids) == count:
        with contextlib.suppress(InvalidArgument, TypeError):
            return [parse_digest(i) for i in ids]
    return [""] * count


def _current_task_cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
