"""Preparing and unpreparing ResourceClaims: claim → CDI spec → checkpoint → CDI ids.

``prepare`` reads the claim from the API server by namespace and name (checking that
its UID is the one the kubelet named: a claim deleted and re-created under the same
name is another claim), takes the results of this driver from
``status.allocation.devices.results``, and for each device of this node's pool writes
the claim's CDI spec (``cdi.claimspec``: the node spec's edits for that GPU or MIG
device) and records the devices in the ``dra_prepared_devices`` checkpoint, in that
order, before answering the CDI ids. It is idempotent: a claim already in the
checkpoint is answered from it without asking the API server again, so a shared claim
used by several pods is prepared once; its spec is rendered again from the current node
spec and rewritten (atomically) when it differs or went missing — a reboot clears
``/var/run/cdi``, a driver upgrade without one moves libraries and device nodes.
``restore`` does the same for every checkpointed claim when the agent starts; a spec
that cannot be rendered any more is kept as it was. Results with ``adminAccess`` are
prepared the same (monitoring tools get the device even while another claim holds it,
and even while it is unhealthy) and recorded as such. ``unprepare`` removes the spec
and the rows; unknown claims are fine (the kubelet retries), and it needs no API server,
so it works after an agent restart from the checkpoint alone.

Blocking (files, SQLite, HTTP): run in a thread, one call per claim at a time (the
driver holds a per-claim lock). Imports ``gpu`` modules and ``db``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from agent.db import DraPreparedDevice, MetadataDB
from agent.errors import FailedPrecondition, InvalidArgument
from agent.gpu.cdi.claimspec import (
    claim_device_name,
    claim_spec,
    claim_spec_path,
    remove_claim_spec,
    write_claim_spec,
)
from agent.gpu.cdi.spec import Spec, spec_to_dict
from agent.gpu.dra.devices import DraDevice
from agent.gpu.dra.kube import ResourceApi

__all__ = ["ClaimPreparer", "ClaimRef", "PreparedDevice"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ClaimRef:
    namespace: str
    name: str
    uid: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name} ({self.uid})"


@dataclass(frozen=True, slots=True)
class PreparedDevice:
    """One device of a prepared claim, as the kubelet gets it back."""

    requests: tuple[str, ...]
    pool: str
    device: str
    cdi_ids: tuple[str, ...]


@dataclass(slots=True)
class _Result:
    requests: list[str]
    admin: bool


class ClaimPreparer:
    def __init__(
        self,
        *,
        db: MetadataDB,
        api: Callable[[], ResourceApi],
        driver: str,
        pool: str,
        spec_dir: str,
        devices: Callable[[], Mapping[str, DraDevice]],
        node_spec: Callable[[], Spec | None],
    ) -> None:
        self._db = db
        self._api = api
        self._driver = driver
        self._pool = pool
        self._spec_dir = spec_dir
        self._devices = devices
        self._node_spec = node_spec

    # -- the checkpoint -------------------------------------------------

    def checkpoint(self) -> dict[str, list[DraPreparedDevice]]:
        """Prepared claims by UID, from the database."""
        out: dict[str, list[DraPreparedDevice]] = {}
        for row in self._db.dra_devices():
            if row.driver == self._driver:
                out.setdefault(row.claim_uid, []).append(row)
        return out

    def restore(self) -> None:
        """After a start: bring every checkpointed claim's CDI spec in line with the node's.

        The node spec may have changed while the agent was down (a driver upgrade moves
        libraries), and containers created from a stale claim spec would miss them.
        """
        for uid, rows in self.checkpoint().items():
            try:
                self._refresh_spec(uid, rows)
            except (FailedPrecondition, OSError) as exc:  # prepare tries again
                log.warning("DRA: prepared claim %s: cannot rewrite its CDI spec: %s", uid, exc)

    # -- prepare / unprepare --------------------------------------------

    def prepare(self, claim: ClaimRef) -> list[PreparedDevice]:
        rows = self.checkpoint().get(claim.uid)
        if rows:
            self._refresh_spec(claim.uid, rows)
            return _answer(rows)
        results = self._allocated(claim)
        devices = self._devices()
        chosen: list[tuple[DraDevice, _Result]] = []
        for name, result in results.items():
            device = devices.get(name)
            if device is None:
                raise FailedPrecondition(
                    f"claim {claim}: device {name} of pool {self._pool} is not offered by this "
                    f"node's {self._driver} driver (any more)"
                )
            chosen.append((device, result))
        self._write_spec(claim.uid, [(d.name, d.uuid) for d, _ in chosen])
        now = time.time_ns()
        rows = [
            DraPreparedDevice(
                claim_uid=claim.uid,
                claim_namespace=claim.namespace,
                claim_name=claim.name,
                driver=self._driver,
                pool=self._pool,
                device=device.name,
                request=",".join(result.requests),
                cdi_device=claim_device_name(claim.uid, device.name),
                device_uuid=device.uuid,
                admin_access=result.admin,
                prepared_at=now,
            )
            for device, result in chosen
        ]
        self._db.put_dra_claim(claim.uid, rows)
        log.info(
            "DRA: prepared claim %s: %s",
            claim,
            ", ".join(
                f"{r.device} ({r.device_uuid}{', admin' if r.admin_access else ''})" for r in rows
            )
            or "no devices of this driver",
        )
        return _answer(rows)

    def unprepare(self, claim: ClaimRef) -> None:
        removed = remove_claim_spec(self._spec_dir, claim.uid)
        known = bool(self.checkpoint().get(claim.uid))
        self._db.delete_dra_claim(claim.uid)
        if removed or known:
            log.info("DRA: unprepared claim %s", claim)

    # -- internals ------------------------------------------------------

    def _allocated(self, claim: ClaimRef) -> dict[str, _Result]:
        """This driver's devices of the claim's allocation, by device name."""
        body = self._api().read_claim(claim.namespace, claim.name)
        uid = (body.get("metadata") or {}).get("uid", "")
        if uid != claim.uid:
            raise FailedPrecondition(
                f"ResourceClaim {claim.namespace}/{claim.name} has UID {uid or '(none)'}, "
                f"not {claim.uid}: it was deleted and created again"
            )
        allocation = (body.get("status") or {}).get("allocation")
        if not allocation:
            raise FailedPrecondition(f"claim {claim} is not allocated")
        results: dict[str, _Result] = {}
        for item in (allocation.get("devices") or {}).get("results") or []:
            if not isinstance(item, dict) or item.get("driver") != self._driver:
                continue
            if item.get("pool") != self._pool:
                raise FailedPrecondition(
                    f"claim {claim}: device {item.get('device')} was allocated from pool "
                    f"{item.get('pool')}, not from this node's pool {self._pool}"
                )
            name = str(item.get("device", ""))
            if not name:
                raise InvalidArgument(f"claim {claim}: an allocation result names no device")
            result = results.setdefault(name, _Result([], False))
            request = str(item.get("request", ""))
            if request and request not in result.requests:
                result.requests.append(request)
            result.admin = result.admin or bool(item.get("adminAccess"))
        return results

    def _refresh_spec(self, claim_uid: str, rows: list[DraPreparedDevice]) -> None:
        """Rewrite a prepared claim's spec if the node spec now renders it differently.

        When it cannot be rendered (no node spec, a GPU gone from it), the spec written
        before is kept rather than leaving the claim's containers nothing; with none
        left, it raises.
        """
        try:
            if self._write_spec(claim_uid, _spec_devices(rows)):
                log.info("DRA: rewrote the CDI spec of prepared claim %s", claim_uid)
        except (FailedPrecondition, OSError) as exc:
            if not os.path.exists(claim_spec_path(self._spec_dir, claim_uid)):
                raise
            log.warning(
                "DRA: prepared claim %s: keeping its CDI spec, cannot render it again: %s",
                claim_uid,
                exc,
            )

    def _write_spec(self, claim_uid: str, devices: list[tuple[str, str]]) -> bool:
        """Write the claim's spec as the node spec renders it now; False if it was already so."""
        if not devices:
            return remove_claim_spec(self._spec_dir, claim_uid)
        node_spec = self._node_spec()
        if node_spec is None:
            raise FailedPrecondition("the node has no CDI spec for its GPUs (see Status: gpu)")
        try:
            spec = claim_spec(claim_uid, devices, node_spec)
        except LookupError as exc:
            raise FailedPrecondition(f"claim {claim_uid}: {exc}") from None
        if _written_as(claim_spec_path(self._spec_dir, claim_uid), spec):
            return False
        write_claim_spec(self._spec_dir, claim_uid, spec)
        return True


def _spec_devices(rows: list[DraPreparedDevice]) -> list[tuple[str, str]]:
    return [(r.device, r.device_uuid) for r in rows]


def _written_as(path: str, spec: Spec) -> bool:
    """Whether the file already holds ``spec`` (compared as JSON, whatever its layout)."""
    try:
        with open(path, "rb") as f:
            written = json.loads(f.read())
    except (OSError, ValueError):
        return False
    return bool(written == json.loads(json.dumps(spec_to_dict(spec))))


def _answer(rows: list[DraPreparedDevice]) -> list[PreparedDevice]:
    return [
        PreparedDevice(
            requests=tuple(r for r in row.request.split(",") if r),
            pool=row.pool,
            device=row.device,
            cdi_ids=(row.cdi_device,),
        )
        for row in rows
    ]
