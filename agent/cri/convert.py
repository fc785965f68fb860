"""Pure conversions between CRI protobuf messages and domain values.

``<thing>_from_pb`` and ``<thing>_to_pb``; nothing here does I/O. Presence
of required sub-messages is checked with ``HasField`` (protobuf would
otherwise hand us silent defaults) and reported as ``INVALID_ARGUMENT``
naming the field.
"""

from __future__ import annotations

import json
from typing import Any

from google.protobuf.message import Message

from agent.api.cri.runtime.v1 import api_pb2 as pb
from agent.errors import InvalidArgument
from agent.images.auth import Credentials
from agent.images.service import FsUsage
from agent.images.store import ImageRecord

__all__ = [
    "credentials_from_pb",
    "fs_usage_to_pb",
    "image_to_pb",
    "image_verbose_info",
    "require",
    "require_image",
]


def require(message: Message, *fields: str) -> None:
    """Fail with INVALID_ARGUMENT unless each sub-message field is set."""
    for name in fields:
        if not message.HasField(name):
            raise InvalidArgument(f"{name} is required")


def require_image(message: Message, field: str = "image") -> str:
    """The non-empty ``<field>.image`` string of a request carrying an ImageSpec."""
    require(message, field)
    value: str = getattr(message, field).image
    if not value:
        raise InvalidArgument(f"{field}.image is required")
    return value


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
        spec=pb.ImageSpec(image=image.id),
        pinned=pinned,
    )
    if uid is not None:
        result.uid.value = uid
    return result


def image_verbose_info(image: ImageRecord) -> dict[str, str]:
    info: dict[str, Any] = {
        "id": image.id,
        "manifestDigest": image.manifest_digest,
        "manifestMediaType": image.manifest_media_type,
        "chainIds": list(image.layers),
        "imageConfig": json.loads(image.config_json),
    }
    return {"info": json.dumps(info, sort_keys=True)}


def fs_usage_to_pb(usage: FsUsage) -> pb.FilesystemUsage:
    return pb.FilesystemUsage(
        timestamp=usage.timestamp_ns,
        fs_id=pb.FilesystemIdentifier(mountpoint=usage.mountpoint),
        used_bytes=pb.UInt64Value(value=usage.used_bytes),
        inodes_used=pb.UInt64Value(value=usage.inodes_used),
    )
