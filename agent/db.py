"""The SQLite metadata database (``<root_dir>/db/metadata.db``).

One connection in WAL mode holds every record that must survive a restart
(images, layers, pods, containers, GPU assignments as later packages add
them). The schema is versioned with ``PRAGMA user_version``: on open, every
migration newer than the file's version runs, each in its own transaction, so
a crash mid-migration leaves the previous version intact. A database written
by a newer agent (a version this code does not know) is refused rather than
guessed at. It lives in a 0700 directory of its own (the root dir is 0711, for
user-namespaced containers to traverse); ``open_database`` moves one an older
agent kept at ``<root_dir>/metadata.db``. Imports nothing from the agent except
``errors``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from agent.errors import AgentError

T = TypeVar("T")

log = logging.getLogger(__name__)

__all__ = [
    "MIGRATIONS",
    "DevicePluginAllocation",
    "DraPreparedDevice",
    "GpuHolder",
    "MetadataDB",
    "SchemaTooNew",
    "database_path",
    "legacy_database_path",
    "open_database",
]

#: The database's directory under the root dir (0700) and its file name.
DATABASE_DIR, DATABASE_FILE = "db", "metadata.db"
#: SQLite's companions of a WAL-mode database, which must move with it.
_COMPANIONS = ("-wal", "-shm")

#: Each entry migrates from version i to i+1. Append only; never edit a shipped one.
MIGRATIONS: Sequence[str] = (
    # 1: agent facts (first start, last agent version) and the schema history.
    """
    CREATE TABLE agent_info (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE TABLE schema_history (
        version    INTEGER PRIMARY KEY,
        applied_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
    );
    """,
    # 2: images. A snapshot is one unpacked layer (shared by chain id); an image is
    # its config digest, its layers in order, the blobs it keeps, and its names.
    """
    CREATE TABLE snapshots (
        chain_id    TEXT PRIMARY KEY,
        name        TEXT NOT NULL UNIQUE,
        diff_id     TEXT NOT NULL,
        size_bytes  INTEGER NOT NULL,
        inodes      INTEGER NOT NULL,
        created_at  INTEGER NOT NULL
    );
    CREATE TABLE images (
        id                  TEXT PRIMARY KEY,
        manifest_digest     TEXT NOT NULL,
        manifest_media_type TEXT NOT NULL,
        config              TEXT NOT NULL,
        size_bytes          INTEGER NOT NULL,
        created_at          INTEGER NOT NULL
    );
    CREATE TABLE image_layers (
        image_id  TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
        position  INTEGER NOT NULL,
        chain_id  TEXT NOT NULL REFERENCES snapshots(chain_id),
        PRIMARY KEY (image_id, position)
    );
    CREATE INDEX image_layers_chain ON image_layers(chain_id);
    CREATE TABLE image_blobs (
        image_id  TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
        digest    TEXT NOT NULL,
        PRIMARY KEY (image_id, digest)
    );
    CREATE TABLE image_names (
        name      TEXT PRIMARY KEY,
        image_id  TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE
    );
    CREATE INDEX image_names_image ON image_names(image_id);
    """,
    # 3: pod sandboxes and containers; each record is its JSON form (pods.state).
    """
    CREATE TABLE sandboxes (
        id      TEXT PRIMARY KEY,
        name    TEXT NOT NULL UNIQUE,
        record  TEXT NOT NULL
    );
    CREATE TABLE containers (
        id          TEXT PRIMARY KEY,
        sandbox_id  TEXT NOT NULL REFERENCES sandboxes(id),
        name        TEXT NOT NULL UNIQUE,
        image_id    TEXT NOT NULL,
        record      TEXT NOT NULL
    );
    CREATE INDEX containers_sandbox ON containers(sandbox_id);
    CREATE INDEX containers_image ON containers(image_id);
    """,
    # 4: GPU assignments: which container holds which GPU (or MIG device), and how it
    # asked; written with the container, gone with it. Read by metrics, ``ctl gpus``,
    # the device plugin and the DRA driver through ``gpu_holders`` (never via pods).
    """
    CREATE TABLE gpu_assignments (
        container_id    TEXT NOT NULL REFERENCES containers(id) ON DELETE CASCADE,
        sandbox_id      TEXT NOT NULL,
        pod_namespace   TEXT NOT NULL,
        pod_name        TEXT NOT NULL,
        pod_uid         TEXT NOT NULL,
        container_name  TEXT NOT NULL,
        device_uuid     TEXT NOT NULL,
        gpu_uuid        TEXT NOT NULL,
        device_index    TEXT NOT NULL,
        mig_profile     TEXT NOT NULL,
        via             TEXT NOT NULL,
        request         TEXT NOT NULL,
        PRIMARY KEY (container_id, device_uuid)
    );
    CREATE INDEX gpu_assignments_gpu ON gpu_assignments(gpu_uuid);
    """,
    # 5: devices of DRA claims the agent's DRA driver prepared (its checkpoint: unprepare
    # works after a restart), one row per device of a claim, with the CDI name handed to
    # the kubelet; metrics join it to gpu_assignments.request for the dra_* labels.
    """
    CREATE TABLE dra_prepared_devices (
        claim_uid        TEXT NOT NULL,
        claim_namespace  TEXT NOT NULL,
        claim_name       TEXT NOT NULL,
        driver           TEXT NOT NULL,
        pool             TEXT NOT NULL,
        device           TEXT NOT NULL,
        request          TEXT NOT NULL,
        cdi_device       TEXT NOT NULL,
        device_uuid      TEXT NOT NULL,
        admin_access     INTEGER NOT NULL,
        prepared_at      INTEGER NOT NULL,
        PRIMARY KEY (claim_uid, device)
    );
    CREATE INDEX dra_prepared_devices_cdi ON dra_prepared_devices(cdi_device);
    """,
    # 6: the device plugin's allocations: the token Allocate puts into a container's env,
    # and the devices it stands for (the env fallback honours NVIDIA_VISIBLE_DEVICES only
    # for these); bound to the pod that first uses it.
    """
    CREATE TABLE device_plugin_allocations (
        token         TEXT PRIMARY KEY,
        resource      TEXT NOT NULL,
        device_ids    TEXT NOT NULL,
        device_uuids  TEXT NOT NULL,
        pod_uid       TEXT NOT NULL,
        created_at    INTEGER NOT NULL,
        used_at       INTEGER NOT NULL
    );
    """,
    # 7: OCI artifacts (model weights, ORAS pushes) are kept like images; this says which
    # rows are artifacts and of what type. Their ``config`` is the artifact's own
    # description (see ``agent.images.store``), not an image config.
    """
    ALTER TABLE images ADD COLUMN artifact_type TEXT NOT NULL DEFAULT '';
    """,
)


@dataclass(frozen=True, slots=True)
class GpuHolder:
    """One GPU (or MIG device) held by one container: a row of ``gpu_assignments``."""

    container_id: str
    sandbox_id: str
    pod_namespace: str
    pod_name: str
    pod_uid: str
    container_name: str
    device_uuid: str  # the GPU's UUID, or the MIG device's
    gpu_uuid: str  # the physical GPU
    device_index: str  # "1" or "1:0"
    mig_profile: str
    via: str  # cdi, annotation, env or device
    request: str

    @classmethod
    def columns(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))


@dataclass(frozen=True, slots=True)
class DraPreparedDevice:
    """One device of a ResourceClaim the DRA driver prepared: a row of ``dra_prepared_devices``."""

    claim_uid: str
    claim_namespace: str
    claim_name: str
    driver: str
    pool: str
    device: str  # the device's name in the ResourceSlice
    request: str  # the claim's request that got it
    cdi_device: str  # the fully qualified CDI name handed to the kubelet
    device_uuid: str  # the GPU's (or MIG device's) UUID
    admin_access: bool
    prepared_at: int  # ns

    @classmethod
    def columns(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))


@dataclass(frozen=True, slots=True)
class DevicePluginAllocation:
    """One ``Allocate`` answer of the device plugin: a row of ``device_plugin_allocations``."""

    token: str
    resource: str
    device_ids: tuple[str, ...]  # as the kubelet named them (UUIDs, or <UUID>::<replica>)
    device_uuids: tuple[str, ...]  # the GPU and MIG UUIDs they are
    pod_uid: str  # the pod that first used the token; "" before
    created_at: int  # s
    used_at: int  # s; 0 before the first use


class SchemaTooNew(AgentError):
    """The database was written by a newer agent; refusing to touch it."""


def database_path(root_dir: str) -> str:
    """Where the agent keeps its database under ``root_dir``."""
    return os.path.join(root_dir, DATABASE_DIR, DATABASE_FILE)


def legacy_database_path(root_dir: str) -> str:
    """Where agents before the 0700 database directory kept it."""
    return os.path.join(root_dir, DATABASE_FILE)


def open_database(root_dir: str) -> MetadataDB:
    """The database under ``root_dir`` (created if new), in its 0700 directory.

    A database an older agent left at ``<root_dir>/metadata.db`` is moved in first:
    its WAL (which may hold the last commits) and shared-memory files before the
    database itself, so a crash half-way leaves a move the next start finishes. The old
    name is then a symlink to the new one.
    """
    directory = os.path.join(root_dir, DATABASE_DIR)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    os.chmod(directory, 0o700)
    path = database_path(root_dir)
    legacy = legacy_database_path(root_dir)
    if os.path.exists(legacy) and not os.path.islink(legacy) and not os.path.exists(path):
        for suffix in (*_COMPANIONS, ""):
            with contextlib.suppress(FileNotFoundError):
                os.rename(legacy + suffix, path + suffix)
    db = MetadataDB(path)
    # The old name stays, as a link: an older agent (a rollback) and its installer open the
    # same database through it (SQLite keeps the WAL beside the link's target), not an empty
    # one that would take every record, and so every layer, away.
    if not os.path.lexists(legacy):
        os.symlink(os.path.join(DATABASE_DIR, DATABASE_FILE), legacy)
    elif not os.path.islink(legacy):
        log.warning("%s is a file of its own; the agent's database is %s", legacy, path)
    return db


class MetadataDB:
    """A thread-safe wrapper over one SQLite connection.

    Statements are short; callers on the event loop call these methods directly, bulk
    work goes through ``asyncio.to_thread``."""

    def __init__(self, path: str, migrations: Sequence[str] = MIGRATIONS) -> None:
        self.path = path
        self._lock = threading.RLock()
        #: answers of _since_last_commit, by (total_changes, data_version) when asked
        self._answers: dict[str, tuple[tuple[int, int], list[Any]]] = {}
        # Container environments (secrets) live here: owner-only. SQLite gives new -wal and
        # -shm files the database's mode but reuses an older agent's as they are: all tightened.
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
        for name in (path + suffix for suffix in ("", *_COMPANIONS)):
            with contextlib.suppress(FileNotFoundError):
                os.chmod(name, 0o600)
        self._conn = sqlite3.connect(
            path, check_same_thread=False, isolation_level=None, timeout=30.0
        )
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        # WAL + NORMAL: a commit is atomic and survives the agent crashing, without an
        # fsync on the event loop per state change (1.5 ms median, 12 ms p99 here); only a
        # power loss may roll back the last commits, and after a reboot recovery
        # reconciles pods and containers anyway. Image records, whose files are deleted
        # once the record is, commit with ``durable=True`` (FULL for that commit).
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        try:
            self._migrate(migrations)
        except BaseException:
            self._conn.close()
            raise

    @property
    def schema_version(self) -> int:
        row = self._conn.execute("PRAGMA user_version").fetchone()
        return int(row[0])

    def _migrate(self, migrations: Sequence[str]) -> None:
        current = self.schema_version
        if current > len(migrations):
            raise SchemaTooNew(
                f"{self.path} has schema version {current}, this agent knows up to "
                f"{len(migrations)}; upgrade model-agent or move the database aside"
            )
        for version in range(current + 1, len(migrations) + 1):
            with self.transaction() as conn:
                for statement in _split_statements(migrations[version - 1]):
                    conn.execute(statement)
                conn.execute("INSERT INTO schema_history (version) VALUES (?)", (version,))
                # user_version cannot take a bound parameter; version is our own int.
                conn.execute(f"PRAGMA user_version = {int(version)}")

    @contextlib.contextmanager
    def transaction(self, *, durable: bool = False) -> Iterator[sqlite3.Connection]:
        """Run the block in one IMMEDIATE transaction; roll back on any error.

        ``durable``: fsync the commit (it survives a power loss too); else it survives
        the agent crashing, which is what pod and container records need.
        """
        with self._lock:
            if durable:
                self._conn.execute("PRAGMA synchronous=FULL")
            try:
                yield from self._transaction()
            finally:
                if durable:
                    self._conn.execute("PRAGMA synchronous=NORMAL")

    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def get_info(self, key: str) -> str | None:
        rows = self.execute("SELECT value FROM agent_info WHERE key = ?", (key,))
        return str(rows[0]["value"]) if rows else None

    def set_info(self, key: str, value: str) -> None:
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO agent_info (key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    def _since_last_commit(self, key: str, query: Callable[[], list[T]]) -> list[T]:
        """``query()``'s answer, asked again only after a change here (``total_changes``:
        a transaction's or a lone statement's) or a commit elsewhere (``data_version``):
        what every metrics scrape reads changes only when a container or claim does."""
        with self._lock:
            if self._conn.in_transaction:  # what it reads may yet roll back
                return query()
            data_version = self._conn.execute("PRAGMA data_version").fetchone()[0]
            version = (self._conn.total_changes, data_version)
            found = self._answers.get(key)
            if found is None or found[0] != version:
                found = self._answers[key] = (version, query())
            return list(found[1])

    def gpu_holders(self) -> list[GpuHolder]:
        """Every GPU assignment of every container the agent knows."""
        columns = ", ".join(GpuHolder.columns())
        return self._since_last_commit(
            "gpu_holders",
            lambda: [
                GpuHolder(*row)  # selected in field order
                for row in self.execute(f"SELECT {columns} FROM gpu_assignments ORDER BY gpu_uuid")
            ],
        )

    def dra_devices(self) -> list[DraPreparedDevice]:
        """Every prepared DRA device (the driver's checkpoint)."""
        columns = ", ".join(DraPreparedDevice.columns())
        return self._since_last_commit(
            "dra_devices",
            lambda: [
                DraPreparedDevice(**{**dict(row), "admin_access": bool(row["admin_access"])})
                for row in self.execute(
                    f"SELECT {columns} FROM dra_prepared_devices ORDER BY claim_uid"
                )
            ],
        )

    def put_dra_claim(self, claim_uid: str, devices: Sequence[DraPreparedDevice]) -> None:
        """Record a claim's prepared devices, replacing what was recorded for it (one
        transaction: a crash leaves the old record or the new one)."""
        columns = DraPreparedDevice.columns()
        insert = (
            f"INSERT INTO dra_prepared_devices ({', '.join(columns)}) "
            f"VALUES ({', '.join('?' for _ in columns)})"
        )
        with self.transaction() as conn:
            conn.execute("DELETE FROM dra_prepared_devices WHERE claim_uid = ?", (claim_uid,))
            for device in devices:
                conn.execute(insert, tuple(getattr(device, c) for c in columns))

    def delete_dra_claim(self, claim_uid: str) -> None:
        with self.transaction() as conn:
            conn.execute("DELETE FROM dra_prepared_devices WHERE claim_uid = ?", (claim_uid,))

    def put_device_allocation(self, allocation: DevicePluginAllocation) -> None:
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO device_plugin_allocations (token, resource, device_ids, "
                "device_uuids, pod_uid, created_at, used_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    allocation.token,
                    allocation.resource,
                    ",".join(allocation.device_ids),
                    ",".join(allocation.device_uuids),
                    allocation.pod_uid,
                    allocation.created_at,
                    allocation.used_at,
                ),
            )

    def device_allocation(self, token: str) -> DevicePluginAllocation | None:
        rows = self.execute("SELECT * FROM device_plugin_allocations WHERE token = ?", (token,))
        if not rows:
            return None
        row = rows[0]
        return DevicePluginAllocation(
            token=row["token"],
            resource=row["resource"],
            device_ids=tuple(x for x in row["device_ids"].split(",") if x),
            device_uuids=tuple(x for x in row["device_uuids"].split(",") if x),
            pod_uid=row["pod_uid"],
            created_at=int(row["created_at"]),
            used_at=int(row["used_at"]),
        )

    def use_device_allocation(self, token: str, pod_uid: str, used_at: int) -> None:
        """Record a use; the first use with a pod UID binds the token to that pod."""
        with self.transaction() as conn:
            conn.execute(
                "UPDATE device_plugin_allocations SET used_at = ?, "
                "pod_uid = CASE WHEN pod_uid = '' THEN ? ELSE pod_uid END WHERE token = ?",
                (used_at, pod_uid, token),
            )

    def prune_device_allocations(self, *, unused_before: int, idle_before: int) -> int:
        """Forget tokens never used since ``unused_before``, and tokens idle since
        ``idle_before`` whose pod holds no GPU any more; answers how many."""
        with self.transaction() as conn:
            cursor = conn.execute(
                "DELETE FROM device_plugin_allocations WHERE "
                "(used_at = 0 AND created_at < ?) OR (used_at > 0 AND used_at < ? AND "
                "pod_uid NOT IN (SELECT pod_uid FROM gpu_assignments))",
                (unused_before, idle_before),
            )
            return int(cursor.rowcount)

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def _split_statements(script: str) -> list[str]:
    """Split a migration into statements (``executescript`` would commit early)."""
    statements = []
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            if buffer.strip():
                statements.append(buffer.strip())
            buffer = ""
    if buffer.strip():
        statements.append(buffer.strip())
    return statements
