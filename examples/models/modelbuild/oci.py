"""OCI image layouts: blobs, image manifests and configs, and ModelPack model artifacts.

Owns the JSON a registry and a runtime read: the ``oci-layout`` directory
(``blobs/sha256/<hex>``, ``index.json`` with ``org.opencontainers.image.ref.name`` per
tag), gzip layers (zlib level 6 with no name and mtime 0: the same tar gives the same
blob on every machine; compressed blobs are cached by the tar's digest), image configs
with labels, and model artifacts per the CNCF ModelPack spec:

- manifest ``mediaType`` ``application/vnd.oci.image.manifest.v1+json``, ``artifactType``
  ``application/vnd.cncf.model.manifest.v1+json``, config
  ``application/vnd.cncf.model.config.v1+json`` (descriptor, config, modelfs);
- one layer per file, not archived: ``application/vnd.cncf.model.weight.v1.raw`` for
  weights, ``….weight.config.v1.raw`` for configs/tokenizers, ``….doc.v1.raw`` for docs;
  each with ``org.opencontainers.image.title`` (the file name a runtime gives it in the
  mounted volume) and ``org.cncf.model.filepath``.

Must not import ``rootfs`` or ``push``.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "LAYER_GZIP",
    "LAYER_TAR",
    "MODELPACK_ARTIFACT",
    "MODELPACK_CONFIG",
    "OCI_CONFIG",
    "OCI_INDEX",
    "OCI_MANIFEST",
    "TITLE",
    "ArtifactFile",
    "Descriptor",
    "ImageLayer",
    "Layout",
    "gzip_layer",
    "iso8601",
    "write_artifact",
    "write_image",
]

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MODELPACK_ARTIFACT = "application/vnd.cncf.model.manifest.v1+json"
MODELPACK_CONFIG = "application/vnd.cncf.model.config.v1+json"
WEIGHT_RAW = "application/vnd.cncf.model.weight.v1.raw"
WEIGHT_CONFIG_RAW = "application/vnd.cncf.model.weight.config.v1.raw"
DOC_RAW = "application/vnd.cncf.model.doc.v1.raw"
TITLE = "org.opencontainers.image.title"
FILEPATH = "org.cncf.model.filepath"
REF_NAME = "org.opencontainers.image.ref.name"
GZIP_LEVEL = 6


def iso8601(epoch: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def _json(value: Any) -> bytes:
    return json.dumps(value, indent=2, sort_keys=False).encode() + b"\n"


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: Mapping[str, str] = field(default_factory=dict)
    artifact_type: str | None = None

    def as_json(self) -> dict[str, Any]:
        value: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
        }
        if self.artifact_type:
            value["artifactType"] = self.artifact_type
        if self.annotations:
            value["annotations"] = dict(self.annotations)
        return value


class Layout:
    """An OCI image layout directory; blobs are added once, tags live in ``index.json``."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        os.makedirs(os.path.join(self.path, "blobs", "sha256"), exist_ok=True)
        marker = os.path.join(self.path, "oci-layout")
        if not os.path.exists(marker):
            with open(marker, "wb") as f:
                f.write(_json({"imageLayoutVersion": "1.0.0"}))

    def blob_path(self, digest: str) -> str:
        algorithm, _, hex_digest = digest.partition(":")
        return os.path.join(self.path, "blobs", algorithm, hex_digest)

    def add_bytes(self, data: bytes, media_type: str, **annotations: str) -> Descriptor:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        path = self.blob_path(digest)
        if not os.path.exists(path):
            with tempfile.NamedTemporaryFile(dir=os.path.dirname(path), delete=False) as f:
                f.write(data)
            os.replace(f.name, path)
        return Descriptor(media_type, digest, len(data), annotations)

    def add_file(
        self, source: str, media_type: str, annotations: Mapping[str, str] | None = None
    ) -> Descriptor:
        """Add a file's bytes as a blob: hard-linked where possible, else copied."""
        digest = _sha256_file(source)
        path = self.blob_path(digest)
        if not os.path.exists(path):
            tmp = path + ".tmp"
            try:
                os.link(source, tmp)
            except OSError:
                shutil.copyfile(source, tmp)
            os.replace(tmp, path)
        return Descriptor(media_type, digest, os.path.getsize(path), dict(annotations or {}))

    def read_index(self) -> dict[str, Any]:
        try:
            with open(os.path.join(self.path, "index.json")) as f:
                index: dict[str, Any] = json.load(f)
        except FileNotFoundError:
            index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
        return index

    def tag(self, manifest: Descriptor, ref_name: str) -> None:
        """Point ``ref_name`` at ``manifest`` (replacing what it named before)."""
        index = self.read_index()
        entries = [
            m for m in index["manifests"] if m.get("annotations", {}).get(REF_NAME) != ref_name
        ]
        entry = manifest.as_json()
        entry["annotations"] = {**entry.get("annotations", {}), REF_NAME: ref_name}
        entries.append(entry)
        index["manifests"] = sorted(entries, key=lambda m: m["annotations"][REF_NAME])
        data = _json(index)
        with tempfile.NamedTemporaryFile(dir=self.path, delete=False) as f:
            f.write(data)
        os.replace(f.name, os.path.join(self.path, "index.json"))

    def resolve(self, ref_name: str) -> Descriptor:
        for entry in self.read_index()["manifests"]:
            if entry.get("annotations", {}).get(REF_NAME) == ref_name:
                return Descriptor(
                    entry["mediaType"],
                    entry["digest"],
                    entry["size"],
                    artifact_type=entry.get("artifactType"),
                )
        raise KeyError(f"{self.path} has no tag {ref_name!r}")

    def read_json(self, digest: str) -> Any:
        with open(self.blob_path(digest)) as f:
            return json.load(f)


@dataclass(frozen=True)
class ImageLayer:
    """A layer blob in a layout, the digest of its tar (``diff_id``) and what made it."""

    descriptor: Descriptor
    diff_id: str
    created_by: str


def gzip_layer(
    layout: Layout, tar_path: str, created_by: str, cache_dir: str | None = None
) -> ImageLayer:
    """Add ``tar_path`` gzip-compressed (cached in ``cache_dir`` by the tar's digest)."""
    diff_id = _sha256_file(tar_path)
    cached = os.path.join(cache_dir, "gzip", diff_id.split(":")[1]) if cache_dir else None
    if cached is None or not os.path.exists(cached):
        out_dir = os.path.dirname(cached) if cached else layout.path
        os.makedirs(out_dir, exist_ok=True)
        with (
            tempfile.NamedTemporaryFile(dir=out_dir, delete=False) as raw,
            open(tar_path, "rb") as source,
            gzip.GzipFile(
                filename="", mode="wb", fileobj=raw, compresslevel=GZIP_LEVEL, mtime=0
            ) as compressed,
        ):
            shutil.copyfileobj(source, compressed, 1 << 20)
        if cached is None:
            descriptor = layout.add_file(raw.name, LAYER_GZIP)
            os.unlink(raw.name)
            return ImageLayer(descriptor, diff_id, created_by)
        os.replace(raw.name, cached)
    return ImageLayer(layout.add_file(cached, LAYER_GZIP), diff_id, created_by)


def tar_layer(layout: Layout, tar_path: str, created_by: str) -> ImageLayer:
    """Add ``tar_path`` uncompressed (weights do not compress; unpacking them is a copy)."""
    descriptor = layout.add_file(tar_path, LAYER_TAR)
    return ImageLayer(descriptor, descriptor.digest, created_by)


def write_image(
    layout: Layout,
    layers: Sequence[ImageLayer],
    *,
    epoch: int,
    config: Mapping[str, Any],
    annotations: Mapping[str, str] | None = None,
) -> Descriptor:
    """An amd64 Linux image of ``layers``; ``config`` is the config's ``config`` object."""
    created = iso8601(epoch)
    image_config = {
        "created": created,
        "architecture": "amd64",
        "os": "linux",
        "config": dict(config),
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": [{"created": created, "created_by": layer.created_by} for layer in layers],
    }
    config_descriptor = layout.add_bytes(_json(image_config), OCI_CONFIG)
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config_descriptor.as_json(),
        "layers": [layer.descriptor.as_json() for layer in layers],
    }
    if annotations:
        manifest["annotations"] = dict(annotations)
    return layout.add_bytes(_json(manifest), OCI_MANIFEST)


@dataclass(frozen=True)
class ArtifactFile:
    """One file of a model artifact: where it is now and the name it gets in the volume."""

    path: str
    title: str
    media_type: str = WEIGHT_RAW


def write_artifact(
    layout: Layout,
    files: Sequence[ArtifactFile],
    *,
    epoch: int,
    name: str,
    version: str,
    model_config: Mapping[str, Any] | None = None,
    description: str = "",
    annotations: Mapping[str, str] | None = None,
) -> Descriptor:
    """A ModelPack model artifact of ``files`` (each its own raw layer, in the given order)."""
    titles = [f.title for f in files]
    if len(set(titles)) != len(titles) or any(
        not t or "/" in t or t in (".", "..") for t in titles
    ):
        raise ValueError(f"artifact file titles must be unique plain names: {titles}")
    layers = [
        layout.add_file(f.path, f.media_type, {TITLE: f.title, FILEPATH: f.title}) for f in files
    ]
    created = iso8601(epoch)
    config = {
        "descriptor": {
            "createdAt": created,
            "name": name,
            "version": version,
            "description": description,
        },
        "config": dict(model_config or {}),
        "modelfs": {"type": "layers", "diffIds": [layer.digest for layer in layers]},
    }
    config_descriptor = layout.add_bytes(_json(config), MODELPACK_CONFIG)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": MODELPACK_ARTIFACT,
        "config": config_descriptor.as_json(),
        "layers": [layer.as_json() for layer in layers],
        "annotations": {
            "org.opencontainers.image.created": created,
            "org.opencontainers.image.title": name,
            "org.opencontainers.image.version": version,
            "org.cncf.model.name": name,
            "org.cncf.model.version": version,
            **(annotations or {}),
        },
    }
    descriptor = layout.add_bytes(_json(manifest), OCI_MANIFEST)
    return Descriptor(
        descriptor.media_type,
        descriptor.digest,
        descriptor.size,
        artifact_type=MODELPACK_ARTIFACT,
    )
