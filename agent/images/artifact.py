"""OCI artifacts as image volumes: which layers are extracted, which become files, where.

The rule CRI-O follows: a tar layer (``….tar``, ``….tar+gzip``, ``….tar+zstd``) is
extracted at the volume's root; any other blob is one file, named by its
``org.opencontainers.image.title`` annotation (a relative path; an untitled blob is
named by its digest, ``sha256-<hex>``). A file blob is verified as it downloads (by
the unpack worker, as a layer is) and moved from the ingest into place, never copied.

Each layer is a snapshot of its own, keyed by what it holds (its digest, and for a file
its path) rather than by its position, and the volume is an overlay of them: a model's
version 2 that changes only the weights re-pulls only the weights, and two artifacts
sharing a tokenizer share its snapshot.
"""

from __future__ import annotations

import errno
import hashlib
import os
import posixpath
import shutil
from dataclasses import dataclass

from agent.errors import InvalidArgument
from agent.images.manifest import LAYER_TYPES, Descriptor, Manifest

__all__ = ["TITLE", "ArtifactLayer", "artifact_layers", "place_file"]

TITLE = "org.opencontainers.image.title"
_COMPRESSIONS = {"": "", "gzip": "gzip", "zstd": "zstd"}


@dataclass(frozen=True, slots=True)
class ArtifactLayer:
    """One layer of an artifact and the snapshot it becomes."""

    descriptor: Descriptor
    #: None for a plain file; the compression ("", "gzip", "zstd") of a tar to extract.
    compression: str | None
    #: Where a file goes in the volume (a clean relative path); "" for a tar.
    path: str
    #: The snapshot's key (the ``chain_id`` column): a digest of what the snapshot holds.
    key: str

    @property
    def is_tar(self) -> bool:
        return self.compression is not None


def tar_compression(media_type: str) -> str | None:
    """The compression of a tar layer's media type; None when it is not a tar."""
    if media_type in LAYER_TYPES:
        return LAYER_TYPES[media_type]
    base, plus, suffix = media_type.rpartition("+")
    if not plus:
        base, suffix = media_type, ""
    compression = _COMPRESSIONS.get(suffix)
    return compression if compression is not None and base.endswith(".tar") else None


def _file_path(layer: Descriptor, index: int) -> str:
    title = layer.annotations.get(TITLE, "")
    if not title:
        return layer.digest.replace(":", "-")
    clean = posixpath.normpath(title)
    if (
        "\0" in title
        or title.startswith("/")
        or clean in (".", "..")
        or clean.startswith("../")
        or clean != title.rstrip("/")
    ):
        raise InvalidArgument(
            f"artifact layer {index} ({layer.digest}): title {title!r} is not a clean relative path"
        )
    return clean


def _key(*parts: str) -> str:
    return "sha256:" + hashlib.sha256("\0".join(("artifact", *parts)).encode()).hexdigest()


def artifact_layers(manifest: Manifest) -> list[ArtifactLayer]:
    """The snapshots an artifact's layers become; refuses two files at one path."""
    layers: list[ArtifactLayer] = []
    paths: dict[str, int] = {}
    for index, descriptor in enumerate(manifest.layers):
        compression = tar_compression(descriptor.media_type)
        if compression is not None:
            layers.append(
                ArtifactLayer(descriptor, compression, "", _key("tar", descriptor.digest))
            )
            continue
        path = _file_path(descriptor, index)
        for taken, other in paths.items():
            if path == taken or path.startswith(taken + "/") or taken.startswith(path + "/"):
                raise InvalidArgument(
                    f"artifact layers {other} and {index} both claim the path '{path}'"
                )
        paths[path] = index
        layers.append(ArtifactLayer(descriptor, None, path, _key("file", descriptor.digest, path)))
    return layers


def place_file(blob: str, snapshot_dir: str, path: str) -> None:
    """Move the verified blob into ``snapshot_dir`` as ``path``, world-readable.

    Files are 0444 and directories 0755: the volume is read-only and the container's
    user is rarely root.
    """
    target = os.path.join(snapshot_dir, path)
    parent = os.path.dirname(target)
    os.makedirs(parent, mode=0o755, exist_ok=True)
    os.chmod(snapshot_dir, 0o755)
    try:
        os.rename(blob, target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        shutil.copyfile(blob, target)  # the content store is on another filesystem
        os.unlink(blob)
    os.chmod(target, 0o444)
