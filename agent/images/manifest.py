"""Manifests, indexes and image configs: media types, parsing, platform choice.

Only what a puller needs is read; anything malformed is an ``InvalidArgument``
naming the document, because such an image can never be pulled as is.
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass, field
from typing import Any

from agent.errors import InvalidArgument, NotFound
from agent.images.reference import parse_digest

__all__ = [
    "ACCEPT",
    "CONFIG_TYPES",
    "EMPTY_CONFIG",
    "INDEX_TYPES",
    "LAYER_TYPES",
    "MANIFEST_TYPES",
    "MAX_MANIFEST_BYTES",
    "Descriptor",
    "ImageConfig",
    "Index",
    "Manifest",
    "Platform",
    "host_platform",
    "parse_config",
    "parse_index",
    "parse_manifest",
    "select_platform",
]

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
ACCEPT = ", ".join([OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST])
CONFIG_TYPES = frozenset(
    {"application/vnd.oci.image.config.v1+json", "application/vnd.docker.container.image.v1+json"}
)
#: The config of an artifact that has none (image-spec 1.1 "empty descriptor").
EMPTY_CONFIG = "application/vnd.oci.empty.v1+json"

#: layer media type -> compression ("gzip", "zstd", "" for none)
LAYER_TYPES: dict[str, str] = {
    "application/vnd.oci.image.layer.v1.tar": "",
    "application/vnd.oci.image.layer.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd": "zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar": "",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd": "zstd",
    "application/vnd.docker.image.rootfs.diff.tar.gzip": "gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip": "gzip",
    "application/vnd.docker.image.rootfs.diff.tar": "",
}

#: The distribution spec lets registries refuse larger manifests; so do we.
MAX_MANIFEST_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""


@dataclass(frozen=True, slots=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    platform: Platform | None = None
    urls: tuple[str, ...] = ()
    annotations: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Index:
    media_type: str
    manifests: tuple[Descriptor, ...]


@dataclass(frozen=True, slots=True)
class Manifest:
    """An image manifest, or an OCI artifact's (``artifact_type`` set).

    An artifact is an OCI manifest whose config is not an image config (an ORAS push, a
    ModelPack model, a Helm chart); its type is the manifest's ``artifactType``, else the
    config's media type (image-spec 1.1), and its layers may be of any media type.
    """

    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]
    artifact_type: str = ""
    annotations: dict[str, str] = field(default_factory=dict)

    @property
    def is_artifact(self) -> bool:
        return bool(self.artifact_type)


@dataclass(frozen=True, slots=True)
class ImageConfig:
    """The parts of an image config the runtime uses; ``raw`` keeps the rest."""

    diff_ids: tuple[str, ...]
    user: str = ""
    env: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    working_dir: str = ""
    stop_signal: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)


def host_platform() -> Platform:
    machine = platform.machine().lower()
    arch, variant = {
        "x86_64": ("amd64", ""),
        "amd64": ("amd64", ""),
        "aarch64": ("arm64", "v8"),
        "arm64": ("arm64", "v8"),
        "armv7l": ("arm", "v7"),
        "armv6l": ("arm", "v6"),
        "ppc64le": ("ppc64le", ""),
        "s390x": ("s390x", ""),
        "riscv64": ("riscv64", ""),
    }.get(machine, (machine, ""))
    return Platform("linux", arch, variant)


def _load(data: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidArgument(f"{what} is not a JSON object")
    return doc


def _descriptor(raw: Any, what: str) -> Descriptor:
    if not isinstance(raw, dict):
        raise InvalidArgument(f"{what}: descriptor is not an object")
    media_type, digest, size = raw.get("mediaType"), raw.get("digest"), raw.get("size")
    if not isinstance(media_type, str) or not isinstance(digest, str):
        raise InvalidArgument(f"{what}: descriptor without mediaType or digest")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InvalidArgument(f"{what}: descriptor {digest} has no valid size")
    plat = None
    if isinstance(raw.get("platform"), dict):
        p = raw["platform"]
        plat = Platform(
            str(p.get("os", "")), str(p.get("architecture", "")), str(p.get("variant", ""))
        )
    urls = raw.get("urls") or ()
    return Descriptor(
        media_type,
        parse_digest(digest),
        size,
        plat,
        tuple(map(str, urls)),
        _annotations(raw.get("annotations"), what),
    )


def _annotations(raw: Any, what: str) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in raw.items()
    ):
        raise InvalidArgument(f"{what}: annotations are not a map of strings")
    return dict(raw)


def media_type_of(data: bytes, content_type: str) -> str:
    """The document's own mediaType, else the HTTP Content-Type (parameters dropped)."""
    declared = content_type.split(";")[0].strip()
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return declared
    if isinstance(doc, dict) and isinstance(doc.get("mediaType"), str):
        return str(doc["mediaType"])
    if isinstance(doc, dict) and "manifests" in doc and declared not in INDEX_TYPES:
        return OCI_INDEX  # an OCI index may omit mediaType
    if isinstance(doc, dict) and "layers" in doc and declared not in MANIFEST_TYPES:
        return OCI_MANIFEST
    return declared


def parse_index(data: bytes, media_type: str) -> Index:
    doc = _load(data, "image index")
    manifests = doc.get("manifests")
    if not isinstance(manifests, list):
        raise InvalidArgument("image index has no manifests list")
    return Index(media_type, tuple(_descriptor(m, "image index") for m in manifests))


def parse_manifest(data: bytes, media_type: str) -> Manifest:
    doc = _load(data, "image manifest")
    if doc.get("schemaVersion") != 2:
        raise InvalidArgument("image manifest is not schemaVersion 2 (schema1 is not supported)")
    config = _descriptor(doc.get("config"), "image manifest config")
    declared = doc.get("artifactType") or ""
    if not isinstance(declared, str):
        raise InvalidArgument("image manifest: artifactType is not a string")
    artifact_type = ""
    if config.media_type not in CONFIG_TYPES:
        if media_type != OCI_MANIFEST:
            raise InvalidArgument(f"unsupported image config media type '{config.media_type}'")
        # image-spec 1.1: artifactType, else the config's media type, names the artifact.
        artifact_type = declared or config.media_type
    layers_raw = doc.get("layers")
    if not isinstance(layers_raw, list):
        raise InvalidArgument("image manifest has no layers list")
    layers = tuple(_descriptor(layer, "image manifest layer") for layer in layers_raw)
    if not artifact_type:
        for layer in layers:
            if layer.media_type not in LAYER_TYPES:
                raise InvalidArgument(f"unsupported layer media type '{layer.media_type}'")
    annotations = _annotations(doc.get("annotations"), "image manifest")
    return Manifest(media_type, config, layers, artifact_type, annotations)


def _strings(value: Any, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidArgument(f"image config: {what} is not a list of strings")
    return tuple(value)


def parse_config(data: bytes) -> ImageConfig:
    doc = _load(data, "image config")
    rootfs = doc.get("rootfs")
    if not isinstance(rootfs, dict) or rootfs.get("type") != "layers":
        raise InvalidArgument("image config has no rootfs of type 'layers'")
    diff_ids = tuple(parse_digest(d) for d in _strings(rootfs.get("diff_ids"), "diff_ids"))
    cfg = doc.get("config") or {}
    if not isinstance(cfg, dict):
        raise InvalidArgument("image config: config is not an object")
    labels = cfg.get("Labels") or {}
    return ImageConfig(
        diff_ids=diff_ids,
        user=str(cfg.get("User") or ""),
        env=_strings(cfg.get("Env"), "Env"),
        entrypoint=_strings(cfg.get("Entrypoint"), "Entrypoint"),
        cmd=_strings(cfg.get("Cmd"), "Cmd"),
        working_dir=str(cfg.get("WorkingDir") or ""),
        stop_signal=str(cfg.get("StopSignal") or ""),
        labels={str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {},
        raw=doc,
    )


def select_platform(index: Index, want: Platform) -> Descriptor:
    """The index entry for ``want``: exact variant first, then any variant of the arch.

    Entries without a platform are skipped (attestations, e.g. ``unknown/unknown``);
    nested indexes are allowed and resolved by the caller.
    """
    candidates = [
        m
        for m in index.manifests
        if m.platform is not None
        and m.platform.os == want.os
        and m.platform.architecture == want.architecture
        and (m.media_type in MANIFEST_TYPES or m.media_type in INDEX_TYPES)
    ]
    for m in candidates:
        assert m.platform is not None
        if m.platform.variant == want.variant:
            return m
    for m in candidates:
        assert m.platform is not None
        if not m.platform.variant or not want.variant:
            return m
    if candidates:
        return candidates[0]
    offered = sorted(
        {f"{m.platform.os}/{m.platform.architecture}" for m in index.manifests if m.platform}
    )
    raise NotFound(
        f"no image for platform {want.os}/{want.architecture} in the index "
        f"(it offers {', '.join(offered) or 'none'})"
    )
