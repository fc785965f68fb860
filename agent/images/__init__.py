"""Images: references, the registry client, content store, snapshots, unpack, pulls.

``ImageManager`` (``service``) is the entry point the CRI layer uses; nothing
here imports CRI protobuf types. See ``pull`` for how the pieces fit:
``registry`` → ``download`` into ``content`` → ``unpack_pool`` runs
``unpack_process`` workers that ``tar_apply`` each layer into ``snapshots``;
``store`` records images, names and snapshots in SQLite.
"""

from agent.images import reference
from agent.images.auth import Credentials
from agent.images.manifest import ImageConfig
from agent.images.service import FsUsage, ImageManager
from agent.images.store import ImageRecord

__all__ = ["Credentials", "FsUsage", "ImageConfig", "ImageManager", "ImageRecord", "reference"]
