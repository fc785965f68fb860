"""Preparing and unpreparing ResourceClaims: claim → CDI spec → checkpoint → CDI ids.

``prepare`` reads the claim from the API server by namespace and name (checking that
its UID is the one the kubelet named: a claim deleted and re-created under the same
name is another claim), takes the results of this driver from
``status.allocation.devices.results``, and for each device of this node's pool writes
the claim's CDI spec (``cdi.claimspec``: the node spec's edits for that GPU or MIG
device) and records the devices in the ``dra_prepared_devices`` checkpoint, in that
order, before answering the CDI ids. It is idempotent: a claim already in the
checkpoint is answered from it without asking the API server again (its spec is
rewritten if it went missing, as after a reboot clears ``/var/run/cdi``), so a shared
claim used by several pods is prepared once. Results with ``adminAccess`` are prepared
the same (monitoring tools get the device even while another claim holds it, and even
while it is unhealthy) and recorded as such. ``unprepare`` removes the spec and the
rows; unknown claims are fine (the kubelet retries), and it needs no API server, so it
works after an agent restart from the checkpoint alone.

Blocking (files, SQLite, HTTP): run in a thread, one call per claim at a time (the
driver holds a per-claim lock). Imports ``gpu`` modules and ``db``.
"""

from __future__ import annotations

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
from agent.gpu.cdi.spec import Spec
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
        """After a start: rewrite the CDI spec of every checkpointed claim that lost it."""
        for uid, rows in self.checkpoint().items():
            if not os.path.exists(claim_spec_path(self._spec_dir, uid)):
                try:
                    self._write_spec(uid, [(r.device, r.device_uuid) for r in rows])
                    log.info("DRA: rewrote the CDI spec of prepared claim %s", uid)
                except (FailedPrecondition, OSError) as exc:  # prepare tries again
                    log.warning("DRA: prepared claim %s: cannot rewrite its CDI spec: %s", uid, exc)

    # -- prepare / unprepare --------------------------------------------

    def prepare(self, claim: ClaimRef) -> list[PreparedDevice]:
        rows = self.checkpoint().get(claim.uid)
        if rows:
            if not os.path.exists(claim_spec_path(self._spec_dir, claim.uid)):
                self._write_spec(claim.uid, [(r.device, r.device_uuid) for r in rows])
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

    def _write_spec(self, claim_uid: str, devices: list[tuple[str, str]]) -> None:
        if not devices:
            remove_claim_spec(self._spec_dir, claim_uid)
            return
        node_spec = self._node_spec()
        if node_spec is None:
            raise FailedPrecondition("the node has no CDI spec for its GPUs (see Status: gpu)")
        try:
            spec = claim_spec(claim_uid, devices, node_spec)
        except LookupError as exc:
            raise FailedPrecondition(f"claim {claim_uid}: {exc}") from None
        write_claim_spec(self._spec_dir, claim_uid, spec)


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
