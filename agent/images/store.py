"""Image metadata in SQLite: images, their names, layers, blobs, and snapshots.

Every change is one transaction, so an image is either fully recorded (its
snapshots committed, its names pointing at it) or absent. Names are unique:
pulling ``app:v2`` moves the tag from the image that had it; that image keeps
its other names (at least its digest name) and stays until removed.

OCI artifacts are rows here too (``artifact_type`` set): their id is the manifest
digest (many share one empty config), their layers are their file and tar snapshots,
and their ``config`` is their own description (``artifactType``, the manifest's
``annotations``, the artifact's config document when it is JSON, the ``files``).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from agent.db import MetadataDB
from agent.images.manifest import ImageConfig, parse_config

__all__ = ["ImageRecord", "ImageStore", "SnapshotRecord"]


@dataclass(frozen=True, slots=True)
class SnapshotRecord:
    chain_id: str
    name: str
    diff_id: str
    size_bytes: int
    inodes: int


@dataclass(frozen=True, slots=True)
class ImageRecord:
    id: str
    manifest_digest: str
    manifest_media_type: str
    config_json: str
    size_bytes: int
    created_at: int
    names: tuple[str, ...]
    layers: tuple[str, ...]
    artifact_type: str = ""

    @property
    def is_artifact(self) -> bool:
        return bool(self.artifact_type)

    @property
    def config(self) -> ImageConfig:
        """The image config; an artifact's has no layers and its annotations as labels."""
        if self.artifact_type:
            doc = json.loads(self.config_json)
            return ImageConfig(diff_ids=(), labels=dict(doc.get("annotations") or {}), raw=doc)
        return parse_config(self.config_json.encode())

    @property
    def repo_tags(self) -> list[str]:
        return sorted(n for n in self.names if "@" not in n)

    @property
    def repo_digests(self) -> list[str]:
        return sorted(n for n in self.names if "@" in n)


class ImageStore:
    def __init__(self, db: MetadataDB) -> None:
        self._db = db

    # -- reads ---------------------------------------------------------------

    def _record(self, row: Any) -> ImageRecord:
        image_id = row["id"]
        names = [
            r["name"]
            for r in self._db.execute(
                "SELECT name FROM image_names WHERE image_id = ? ORDER BY name", (image_id,)
            )
        ]
        layers = [
            r["chain_id"]
            for r in self._db.execute(
                "SELECT chain_id FROM image_layers WHERE image_id = ? ORDER BY position",
                (image_id,),
            )
        ]
        return ImageRecord(
            id=image_id,
            manifest_digest=row["manifest_digest"],
            manifest_media_type=row["manifest_media_type"],
            config_json=row["config"],
            size_bytes=row["size_bytes"],
            created_at=row["created_at"],
            names=tuple(names),
            layers=tuple(layers),
            artifact_type=row["artifact_type"],
        )

    def get(self, image_id: str) -> ImageRecord | None:
        rows = self._db.execute("SELECT * FROM images WHERE id = ?", (image_id,))
        return self._record(rows[0]) if rows else None

    def by_name(self, name: str) -> ImageRecord | None:
        rows = self._db.execute(
            "SELECT images.* FROM images JOIN image_names ON image_names.image_id = images.id "
            "WHERE image_names.name = ?",
            (name,),
        )
        return self._record(rows[0]) if rows else None

    def by_id_prefix(self, prefix: str) -> list[ImageRecord]:
        escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        rows = self._db.execute(
            "SELECT * FROM images WHERE id LIKE ? ESCAPE '\\' LIMIT 2", (f"sha256:{escaped}%",)
        )
        return [self._record(r) for r in rows]

    def all(self) -> list[ImageRecord]:
        return [self._record(r) for r in self._db.execute("SELECT * FROM images ORDER BY id")]

    def snapshot(self, chain_id: str) -> SnapshotRecord | None:
        rows = self._db.execute("SELECT * FROM snapshots WHERE chain_id = ?", (chain_id,))
        if not rows:
            return None
        r = rows[0]
        return SnapshotRecord(r["chain_id"], r["name"], r["diff_id"], r["size_bytes"], r["inodes"])

    def snapshots(self, *, unused_only: bool = False) -> list[SnapshotRecord]:
        sql = "SELECT * FROM snapshots"
        if unused_only:
            sql += " WHERE chain_id NOT IN (SELECT chain_id FROM image_layers)"
        return [
            SnapshotRecord(r["chain_id"], r["name"], r["diff_id"], r["size_bytes"], r["inodes"])
            for r in self._db.execute(sql)
        ]

    def snapshot_names(self) -> set[str]:
        """The directory names records use (a commit must not take one)."""
        return {r["name"] for r in self._db.execute("SELECT name FROM snapshots")}

    def blobs(self) -> set[str]:
        return {r["digest"] for r in self._db.execute("SELECT DISTINCT digest FROM image_blobs")}

    # -- writes --------------------------------------------------------------

    def add_snapshot(self, snapshot: SnapshotRecord) -> None:
        with self._db.transaction(durable=True) as conn:
            conn.execute(
                "INSERT INTO snapshots (chain_id, name, diff_id, size_bytes, inodes, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(chain_id) DO UPDATE SET "
                "name = excluded.name, size_bytes = excluded.size_bytes, "
                "inodes = excluded.inodes",
                (
                    snapshot.chain_id,
                    snapshot.name,
                    snapshot.diff_id,
                    snapshot.size_bytes,
                    snapshot.inodes,
                    time.time_ns(),
                ),
            )

    def save_image(
        self,
        *,
        image_id: str,
        manifest_digest: str,
        manifest_media_type: str,
        config: dict[str, Any],
        size_bytes: int,
        layers: list[str],
        blobs: list[str],
        names: list[str],
        artifact_type: str = "",
    ) -> None:
        """Record a pulled image and point ``names`` at it, in one transaction."""
        with self._db.transaction(durable=True) as conn:
            conn.execute(
                "INSERT INTO images (id, manifest_digest, manifest_media_type, config, size_bytes, "
                "created_at, artifact_type) VALUES (?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET "
                "manifest_digest = excluded.manifest_digest, "
                "manifest_media_type = excluded.manifest_media_type",
                (
                    image_id,
                    manifest_digest,
                    manifest_media_type,
                    json.dumps(config, sort_keys=True),
                    size_bytes,
                    time.time_ns(),
                    artifact_type,
                ),
            )
            conn.execute("DELETE FROM image_layers WHERE image_id = ?", (image_id,))
            conn.executemany(
                "INSERT INTO image_layers (image_id, position, chain_id) VALUES (?, ?, ?)",
                [(image_id, i, chain) for i, chain in enumerate(layers)],
            )
            conn.executemany(
                "INSERT OR IGNORE INTO image_blobs (image_id, digest) VALUES (?, ?)",
                [(image_id, digest) for digest in blobs],
            )
            conn.executemany(
                "INSERT INTO image_names (name, image_id) VALUES (?, ?) "
                "ON CONFLICT(name) DO UPDATE SET image_id = excluded.image_id",
                [(name, image_id) for name in names],
            )

    def remove_image(self, image_id: str) -> tuple[list[SnapshotRecord], set[str]]:
        """Forget an image; return the snapshots no image uses now, and the blobs still used."""
        with self._db.transaction(durable=True) as conn:
            conn.execute("DELETE FROM images WHERE id = ?", (image_id,))
            rows = conn.execute(
                "SELECT * FROM snapshots WHERE chain_id NOT IN (SELECT chain_id FROM image_layers)"
            ).fetchall()
            orphans = [
                SnapshotRecord(r["chain_id"], r["name"], r["diff_id"], r["size_bytes"], r["inodes"])
                for r in rows
            ]
            kept = {r["digest"] for r in conn.execute("SELECT digest FROM image_blobs")}
        return orphans, kept

    def remove_snapshots(self, chain_ids: list[str]) -> None:
        with self._db.transaction(durable=True) as conn:
            conn.executemany(
                "DELETE FROM snapshots WHERE chain_id = ? AND chain_id NOT IN "
                "(SELECT chain_id FROM image_layers)",
                [(c,) for c in chain_ids],
            )
