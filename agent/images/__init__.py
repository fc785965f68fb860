"""Images: references, the registry client, content store, snapshots, unpack, pulls.

``ImageManager`` (``service``) is the entry point the CRI layer uses; nothing
here imports CRI protobuf types. See ``pull`` for how the pieces fit:
``registry`` → ``layer_unpack``: ``download`` into ``content`` while ``unpack_pool`` runs
``unpack_process`` workers that ``tar_apply`` each layer into ``snapshots``;
``store`` records images, names and snapshots in SQLite; ``trash`` deletes
removed data in the background.

The exports are loaded on first use (PEP 562): an unpack worker imports
``agent.images.unpack_process``, which imports this package first, and must
not pay for the registry client, aiohttp and gRPC it never uses.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.images import reference
    from agent.images.auth import Credentials
    from agent.images.manifest import ImageConfig
    from agent.images.service import FsUsage, ImageManager
    from agent.images.store import ImageRecord

__all__ = ["Credentials", "FsUsage", "ImageConfig", "ImageManager", "ImageRecord", "reference"]

_WHERE = {
    "Credentials": "agent.images.auth",
    "FsUsage": "agent.images.service",
    "ImageConfig": "agent.images.manifest",
    "ImageManager": "agent.images.service",
    "ImageRecord": "agent.images.store",
}


def __getattr__(name: str) -> Any:
    if name == "reference":
        return importlib.import_module("agent.images.reference")
    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'agent.images' has no attribute {name!r}")
