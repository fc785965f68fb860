"""Test images without Docker: a busybox rootfs, image configs, manifests and indexes.

An ``Image`` holds the exact bytes a registry will serve (config and manifest JSON) and
every digest a test asserts on: the manifest digest (what a pull by digest names), the
config digest (the image ID a CRI runtime reports), and each layer's digest and diff_id.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tests.support.layers import (
    Compression,
    Dir,
    Entry,
    File,
    Flavor,
    Layer,
    Symlink,
    layer,
    sha256_digest,
)

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
#: What a pulling client sends as Accept to get any of the four.
ACCEPT_ALL = ", ".join([OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST])
CREATED = "2023-11-14T22:13:20Z"

BUSYBOX = "/bin/busybox"
BUSYBOX_APPLETS = (
    "sh", "ls", "cat", "echo", "sleep", "true", "false", "id", "env", "mkdir", "rm", "wc",
    "head", "tail", "dd", "sha256sum", "nc", "ps", "kill", "hostname", "top", "touch", "yes",
)  # fmt: skip
PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\n"
    "app:x:1000:1000:app:/home/app:/bin/sh\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
)
GROUP = "root:x:0:\napp:x:1000:\nnogroup:x:65534:\n"


def busybox_entries() -> list[Entry]:
    """A minimal rootfs: the static busybox, applet symlinks, users root, app (1000), nobody."""
    with open(BUSYBOX, "rb") as f:
        busybox = f.read()
    return [
        Dir("bin"),
        File("bin/busybox", busybox, mode=0o755),
        *(Symlink(f"bin/{applet}", "busybox") for applet in BUSYBOX_APPLETS),
        Dir("etc"),
        File("etc/passwd", PASSWD.encode()),
        File("etc/group", GROUP.encode()),
        File("etc/hostname"),
        Dir("home"),
        Dir("home/app", uid=1000, gid=1000),
        Dir("root", mode=0o700),
        Dir("tmp", mode=0o1777),
        Dir("dev"),
        Dir("proc"),
        Dir("sys"),
    ]


@functools.cache
def busybox_layer(compression: Compression = "gzip") -> Layer:
    """The busybox rootfs as one layer (cached: compressing 2 MB takes a moment)."""
    return layer(busybox_entries(), compression)


def _json(value: Any) -> bytes:
    return json.dumps(value, indent=2).encode()


@dataclass(frozen=True)
class Platform:
    os: str = "linux"
    architecture: str = "amd64"
    variant: str | None = None

    def as_json(self) -> dict[str, str]:
        value = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            value["variant"] = self.variant
        return value


@dataclass(frozen=True)
class Image:
    """One single-platform image: its config and manifest bytes and its layers."""

    flavor: Flavor
    platform: Platform
    layers: tuple[Layer, ...]
    config: bytes
    manifest: bytes

    @property
    def config_digest(self) -> str:
        """The image ID a CRI runtime reports (``sha256:<hex>`` of the config)."""
        return sha256_digest(self.config)

    @property
    def manifest_digest(self) -> str:
        return sha256_digest(self.manifest)

    @property
    def media_type(self) -> str:
        return OCI_MANIFEST if self.flavor == "oci" else DOCKER_MANIFEST

    @property
    def config_media_type(self) -> str:
        return OCI_CONFIG if self.flavor == "oci" else DOCKER_CONFIG

    @property
    def diff_ids(self) -> list[str]:
        return [item.diff_id for item in self.layers]

    @property
    def layer_digests(self) -> list[str]:
        return [item.digest for item in self.layers]

    @property
    def size(self) -> int:
        """Config plus compressed layers: what is downloaded (the manifest not included)."""
        return len(self.config) + sum(item.size for item in self.layers)

    @property
    def unpacked_size(self) -> int:
        """The layers' uncompressed tar sizes added up."""
        return sum(len(item.tar) for item in self.layers)

    @property
    def config_json(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.config)
        return value

    def descriptor(self) -> dict[str, Any]:
        """The manifest's entry in an index, with its platform."""
        return {
            "mediaType": self.media_type,
            "digest": self.manifest_digest,
            "size": len(self.manifest),
            "platform": self.platform.as_json(),
        }


def build_image(
    layers: Sequence[Layer],
    *,
    flavor: Flavor = "oci",
    platform: Platform | None = None,
    env: Sequence[str] | None = ("PATH=/bin",),
    entrypoint: Sequence[str] | None = None,
    cmd: Sequence[str] | None = ("sh",),
    user: str | None = None,
    working_dir: str | None = None,
    stop_signal: str | None = None,
    labels: Mapping[str, str] | None = None,
    extra_config: Mapping[str, Any] | None = None,
    annotations: Mapping[str, str] | None = None,
) -> Image:
    """An image of ``layers`` (base first); ``None`` leaves a config field out.

    ``extra_config`` adds keys to the config's ``config`` object (``ExposedPorts``, ...);
    ``annotations`` go on the manifest (OCI only).
    """
    platform = platform or Platform()
    runtime: dict[str, Any] = {}
    for key, value in (
        ("User", user),
        ("Env", env),
        ("Entrypoint", entrypoint),
        ("Cmd", cmd),
        ("WorkingDir", working_dir),
        ("StopSignal", stop_signal),
    ):
        if value is not None:
            runtime[key] = value if isinstance(value, str) else list(value)
    if labels is not None:
        runtime["Labels"] = dict(labels)
    runtime.update(extra_config or {})
    config: dict[str, Any] = {
        "created": CREATED,
        **platform.as_json(),
        "config": runtime,
        "rootfs": {"type": "layers", "diff_ids": [item.diff_id for item in layers]},
        "history": [
            {"created": CREATED, "created_by": f"tests.support layer {i}"}
            for i in range(len(layers))
        ],
    }
    config_bytes = _json(config)
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST if flavor == "oci" else DOCKER_MANIFEST,
        "config": {
            "mediaType": OCI_CONFIG if flavor == "oci" else DOCKER_CONFIG,
            "digest": sha256_digest(config_bytes),
            "size": len(config_bytes),
        },
        "layers": [item.descriptor(flavor) for item in layers],
    }
    if annotations:
        manifest["annotations"] = dict(annotations)
    return Image(flavor, platform, tuple(layers), config_bytes, _json(manifest))


@dataclass(frozen=True)
class Index:
    """A multi-platform index (OCI) or manifest list (Docker) over ``images``."""

    flavor: Flavor
    images: tuple[Image, ...]
    manifest: bytes

    @property
    def digest(self) -> str:
        return sha256_digest(self.manifest)

    @property
    def media_type(self) -> str:
        return OCI_INDEX if self.flavor == "oci" else DOCKER_LIST

    def image_for(self, platform: Platform) -> Image:
        return next(image for image in self.images if image.platform == platform)


def build_index(images: Sequence[Image], *, flavor: Flavor = "oci") -> Index:
    """An index listing each image's manifest with its platform, in the given order."""
    body = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX if flavor == "oci" else DOCKER_LIST,
        "manifests": [image.descriptor() for image in images],
    }
    return Index(flavor, tuple(images), _json(body))


def busybox_image(
    flavor: Flavor = "oci", compression: Compression = "gzip", **options: Any
) -> Image:
    """The busybox image; ``options`` are ``build_image``'s keywords."""
    return build_image([busybox_layer(compression)], flavor=flavor, **options)
