"""ImageService messages: credentials in, images and filesystem usage out."""

from __future__ import annotations

import json
from typing import Any

from agent.api.cri.runtime.v1 import api_pb2 as pb
from agent.images import Credentials, FsUsage, ImageRecord

__all__ = ["credentials_from_pb", "fs_usage_to_pb", "image_to_pb", "image_verbose_info"]


def credentials_from_pb(message: pb.PullImageRequest) -> Credentials | None:
    if not message.HasField("auth"):
        return None
    auth = message.auth
    return Credentials.from_cri(
        username=auth.username,
        password=auth.password,
        auth=auth.auth,
        identity_token=auth.identity_token,
        registry_token=auth.registry_token,
    )


def _user(user: str) -> tuple[int | None, str]:
    """``(uid, username)`` of an image config ``User`` ("1000", "app", "app:grp", "0:0")."""
    name = user.split(":", 1)[0]
    if not name:
        return None, ""
    if name.isdigit():
        return int(name), ""
    return None, name


def image_to_pb(image: ImageRecord, *, pinned: bool) -> pb.Image:
    uid, username = _user(image.config.user)
    result = pb.Image(
        id=image.id,
        repo_tags=image.repo_tags,
        repo_digests=image.repo_digests,
        size=image.size_bytes,
        username=username,
        spec=pb.ImageSpec(image=image.id, annotations=_artifact_annotations(image)),
        pinned=pinned,
    )
    if uid is not None:
        result.uid.value = uid
    return result


def _artifact_annotations(image: ImageRecord) -> dict[str, str]:
    """An artifact's manifest annotations (its name, version, title) travel in its spec."""
    return image.config.labels if image.is_artifact else {}


def image_verbose_info(image: ImageRecord) -> dict[str, str]:
    """``info``: the image's identity, its labels (an artifact's annotations) and config."""
    config = image.config
    info: dict[str, Any] = {
        "id": image.id,
        "manifestDigest": image.manifest_digest,
        "manifestMediaType": image.manifest_media_type,
        "chainIds": list(image.layers),
        "labels": config.labels,
    }
    if image.is_artifact:
        info["artifactType"] = image.artifact_type
        info["artifact"] = config.raw
    else:
        info["imageConfig"] = config.raw
    return {"info": json.dumps(info, sort_keys=True)}


def fs_usage_to_pb(usage: FsUsage) -> pb.FilesystemUsage:
    return pb.FilesystemUsage(
        timestamp=usage.timestamp_ns,
        fs_id=pb.FilesystemIdentifier(mountpoint=usage.mountpoint),
        used_bytes=pb.UInt64Value(value=usage.used_bytes),
        inodes_used=pb.UInt64Value(value=usage.inodes_used),
    )
