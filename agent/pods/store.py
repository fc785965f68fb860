"""Sandbox and container records: SQLite for durability, a dict for fast reads.

The kubelet lists pods and containers every second, so reads come from
memory; every change is written to SQLite first (one transaction) and only
then swapped into memory, so what a reader sees is always on disk. Names are
unique (the kubelet's ``<name>_<namespace>_<uid>_<attempt>``): a second
object with the same name is ``ALREADY_EXISTS``. Ids may be abbreviated to a
unique prefix, as crictl does.

An image is in use from a create's lookup of it on, not only once the record
names it: the create holds it (:meth:`PodStore.holding_images`) while it mounts
the layers, so an image removal racing the create never trashes them.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import replace
from typing import TypeVar

from agent._util.serde import from_dict, to_dict
from agent.db import GpuHolder, MetadataDB
from agent.errors import AlreadyExists, InvalidArgument, NotFound
from agent.pods.state import ContainerRecord, SandboxRecord, SandboxState

__all__ = ["PodStore"]

R = TypeVar("R", SandboxRecord, ContainerRecord)


def _container_name(record: ContainerRecord, sandbox: SandboxRecord) -> str:
    m = sandbox.config.metadata
    return f"{record.config.name}_{m.name}_{m.namespace}_{m.uid}_{record.config.attempt}"


def _loaded_sandbox(record: SandboxRecord) -> SandboxRecord:
    """Records of agents before 0.2 marked a sandbox being set up by its message."""
    if record.state is SandboxState.NOTREADY and record.message == "starting":
        return replace(record, state=SandboxState.CREATING, message="")
    return record


class PodStore:
    def __init__(self, db: MetadataDB) -> None:
        self._db = db
        self._sandboxes: dict[str, SandboxRecord] = {}
        self._containers: dict[str, ContainerRecord] = {}
        #: image ids creates in flight hold (counted: two creates may share one)
        self._held_images: Counter[str] = Counter()
        for row in db.execute("SELECT record FROM sandboxes"):
            sandbox = _loaded_sandbox(from_dict(SandboxRecord, json.loads(row["record"])))
            self._sandboxes[sandbox.id] = sandbox
        for row in db.execute("SELECT record FROM containers"):
            container = from_dict(ContainerRecord, json.loads(row["record"]))
            self._containers[container.id] = container

    # -- lookups -------------------------------------------------------------

    def sandbox(self, id_or_prefix: str) -> SandboxRecord:
        """The sandbox with this id or unique id prefix (``NOT_FOUND``, ``INVALID_ARGUMENT``)."""
        return self._find(self._sandboxes, id_or_prefix, "pod sandbox")

    def container(self, id_or_prefix: str) -> ContainerRecord:
        return self._find(self._containers, id_or_prefix, "container")

    def get_sandbox(self, sandbox_id: str) -> SandboxRecord | None:
        """The sandbox with exactly this id, if any."""
        return self._sandboxes.get(sandbox_id)

    def get_container(self, container_id: str) -> ContainerRecord | None:
        return self._containers.get(container_id)

    def sandboxes(self) -> list[SandboxRecord]:
        """Every sandbox (a copy: safe to iterate while the store changes)."""
        return list(self._sandboxes.values())

    def containers(self) -> list[ContainerRecord]:
        return list(self._containers.values())

    @staticmethod
    def _find(index: dict[str, R], key: str, what: str) -> R:
        if not key:
            raise InvalidArgument(f"{what} id is required")
        found = index.get(key)
        if found is not None:
            return found
        matches = [record for rid, record in index.items() if rid.startswith(key)]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise InvalidArgument(f"{what} id prefix '{key}' is ambiguous")
        raise NotFound(f"{what} '{key}' not found")

    def containers_of(self, sandbox_id: str) -> list[ContainerRecord]:
        return [c for c in self._containers.values() if c.sandbox_id == sandbox_id]

    def image_in_use(self, image_id: str) -> bool:
        """A container runs the image, mounts it as an image volume, or is being created
        with it."""
        if self._held_images[image_id] > 0:
            return True
        return any(
            c.image_id == image_id or any(m[2] == image_id for m in c.image_mounts)
            for c in self._containers.values()
        )

    @contextlib.contextmanager
    def holding_images(self, image_ids: Collection[str]) -> Iterator[None]:
        """Count ``image_ids`` as in use for the block: a create, from its image lookups
        until its record names them (or it failed and undid its mounts)."""
        held = set(image_ids)
        self._held_images.update(held)
        try:
            yield
        finally:
            self._held_images.subtract(held)
            for image_id in held:
                if self._held_images[image_id] <= 0:
                    del self._held_images[image_id]

    # -- changes -------------------------------------------------------------

    def add_sandbox(self, sandbox: SandboxRecord) -> None:
        try:
            with self._db.transaction() as conn:
                conn.execute(
                    "INSERT INTO sandboxes (id, name, record) VALUES (?, ?, ?)",
                    (sandbox.id, sandbox.name, json.dumps(to_dict(sandbox))),
                )
        except sqlite3.IntegrityError:
            raise AlreadyExists(f"pod sandbox name '{sandbox.name}' is already in use") from None
        self._sandboxes[sandbox.id] = sandbox

    def update_sandbox(
        self, sandbox_id: str, change: Callable[[SandboxRecord], SandboxRecord]
    ) -> SandboxRecord:
        new = change(self._sandboxes[sandbox_id])
        with self._db.transaction() as conn:
            conn.execute(
                "UPDATE sandboxes SET record = ? WHERE id = ?",
                (json.dumps(to_dict(new)), sandbox_id),
            )
        self._sandboxes[sandbox_id] = new
        return new

    def remove_sandbox(self, sandbox_id: str) -> None:
        with self._db.transaction() as conn:
            conn.execute("DELETE FROM gpu_assignments WHERE sandbox_id = ?", (sandbox_id,))
            conn.execute("DELETE FROM containers WHERE sandbox_id = ?", (sandbox_id,))
            conn.execute("DELETE FROM sandboxes WHERE id = ?", (sandbox_id,))
        self._sandboxes.pop(sandbox_id, None)
        for cid in [c.id for c in self._containers.values() if c.sandbox_id == sandbox_id]:
            del self._containers[cid]

    def check_container_name(self, container: ContainerRecord) -> None:
        """Fail early (before anything is created) if the name is taken."""
        sandbox = self._sandboxes[container.sandbox_id]
        name = _container_name(container, sandbox)
        for other in self._containers.values():
            if other.sandbox_id == sandbox.id and _container_name(other, sandbox) == name:
                raise AlreadyExists(
                    f"container name '{container.config.name}' (attempt "
                    f"{container.config.attempt}) is already in use in pod "
                    f"{sandbox.config.metadata.name} by {other.id}"
                )

    def add_container(self, container: ContainerRecord, gpus: Sequence[GpuHolder] = ()) -> None:
        """Insert the record, and the GPUs it holds, in one transaction."""
        sandbox = self._sandboxes[container.sandbox_id]
        name = _container_name(container, sandbox)
        columns = GpuHolder.columns()
        insert_gpu = (
            f"INSERT INTO gpu_assignments ({', '.join(columns)}) "
            f"VALUES ({', '.join('?' for _ in columns)})"
        )
        try:
            with self._db.transaction() as conn:
                conn.execute(
                    "INSERT INTO containers (id, sandbox_id, name, image_id, record) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (
                        container.id,
                        container.sandbox_id,
                        name,
                        container.image_id,
                        json.dumps(to_dict(container)),
                    ),
                )
                for holder in gpus:
                    conn.execute(insert_gpu, tuple(getattr(holder, c) for c in columns))
        except sqlite3.IntegrityError:
            raise AlreadyExists(
                f"container name '{container.config.name}' (attempt {container.config.attempt}) "
                f"is already in use in pod {sandbox.config.metadata.name}"
            ) from None
        self._containers[container.id] = container

    def update_container(
        self, container_id: str, change: Callable[[ContainerRecord], ContainerRecord]
    ) -> ContainerRecord:
        new = change(self._containers[container_id])
        with self._db.transaction() as conn:
            conn.execute(
                "UPDATE containers SET record = ? WHERE id = ?",
                (json.dumps(to_dict(new)), container_id),
            )
        self._containers[container_id] = new
        return new

    def remove_container(self, container_id: str) -> None:
        with self._db.transaction() as conn:
            conn.execute("DELETE FROM containers WHERE id = ?", (container_id,))
        self._containers.pop(container_id, None)
