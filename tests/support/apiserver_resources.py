"""The API-server stand-in's storage and REST semantics for ResourceSlices and ResourceClaims.

Owns what a real API server does behind the HTTP routes: one resourceVersion counter
for every write (as etcd's revision), server-set ``uid``, ``creationTimestamp`` and
``generation`` (bumped when the spec changes), ``generateName``, optimistic concurrency
(a stale ``metadata.resourceVersion`` on update is a 409 Conflict, none is an
unconditional update; delete ``preconditions``), no-op updates that write nothing,
selectors and ``limit``/``continue`` paging on lists, and errors as ``metav1.Status``
with the real reasons and messages. Every write is checked by
tests/support/apiserver_validation.py. Thread-safe: HTTP handlers run in threads.
Imports nothing of agent/.
"""

from __future__ import annotations

import base64
import copy
import datetime
import json
import random
import threading
import uuid
from collections.abc import Sequence
from typing import Any

from tests.support.apiserver_selectors import SelectorError, field_matcher, label_matcher
from tests.support.apiserver_validation import (
    Cause,
    check_resource_claim,
    check_resource_slice,
    check_schema,
    is_quantity,
)

__all__ = ["API_VERSION", "GROUP", "APIError", "Store"]

GROUP = "resource.k8s.io"
API_VERSION = f"{GROUP}/v1"
SLICE_FIELDS = ("metadata.name", "spec.nodeName", "spec.driver")
CLAIM_FIELDS = ("metadata.name", "metadata.namespace")
_NAME_SUFFIX = "bcdfghjklmnpqrstvwxz2456789"  # what generateName draws from
_MODIFIED = (
    'Operation cannot be fulfilled on resourceslices.{group} "{name}": the object has been '
    "modified; please apply your changes to the latest version and try again"
)
_QUANTITY = (
    "{path}: quantities must match the regular expression "
    "'^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
)


class APIError(Exception):
    """An error answer; ``status`` is the ``metav1.Status`` body."""

    def __init__(
        self, code: int, reason: str, message: str, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.status: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "code": code,
        }
        if details:
            self.status["details"] = details


def _details(resource: str, name: str) -> dict[str, Any]:
    return {"name": name, "group": GROUP, "kind": resource}


def not_found(resource: str, name: str) -> APIError:
    return APIError(
        404, "NotFound", f'{resource}.{GROUP} "{name}" not found', _details(resource, name)
    )


def invalid(kind: str, name: str, causes: Sequence[Cause]) -> APIError:
    listed = ", ".join(f"{c.field}: {c.message}" for c in causes)
    details = _details(kind, name)
    details["causes"] = [
        {"reason": c.reason, "message": c.message, "field": c.field} for c in causes
    ]
    return APIError(422, "Invalid", f'{kind}.{GROUP} "{name}" is invalid: [{listed}]', details)


def _precondition(label: str, wanted: str, actual: str) -> APIError:
    message = (
        f"Precondition failed: {label} in precondition: {wanted}, {label} in object meta: {actual}"
    )
    return APIError(409, "Conflict", message)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _page_token(start: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"start": start}).encode()).decode()


class Store:
    """ResourceSlices by name, ResourceClaims by (namespace, name), and the revision."""

    def __init__(self, *, drop_device_taints: bool = False) -> None:
        self.lock = threading.Lock()
        self.revision = 0
        #: As a server without the DRADeviceTaints feature gate: ``taints`` never stored.
        self.drop_device_taints = drop_device_taints
        self.slices: dict[str, dict[str, Any]] = {}
        self.claims: dict[tuple[str, str], dict[str, Any]] = {}

    def _bump(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.revision += 1
        obj["metadata"]["resourceVersion"] = str(self.revision)
        return obj

    # --- lists -------------------------------------------------------------------------

    def _list(
        self, kind: str, items: list[dict[str, Any]], query: dict[str, str]
    ) -> dict[str, Any]:
        meta: dict[str, Any] = {"resourceVersion": str(self.revision)}
        start = 0
        if token := query.get("continue"):
            try:
                start = int(json.loads(base64.urlsafe_b64decode(token))["start"])
            except (ValueError, KeyError, TypeError):
                raise APIError(400, "BadRequest", "continue key is not valid") from None
        limit = int(query.get("limit") or 0)
        page = items[start : start + limit] if limit else items[start:]
        rest = len(items) - start - len(page)
        if limit and rest > 0:
            meta["continue"] = _page_token(start + limit)
            meta["remainingItemCount"] = rest
        return {"kind": f"{kind}List", "apiVersion": API_VERSION, "metadata": meta, "items": page}

    @staticmethod
    def _selected(
        objects: list[dict[str, Any]], query: dict[str, str], fields: tuple[str, ...]
    ) -> list[dict[str, Any]]:
        try:
            by_field = field_matcher(query.get("fieldSelector", ""), fields)
            by_label = label_matcher(query.get("labelSelector", ""))
        except SelectorError as error:
            raise APIError(400, "BadRequest", str(error)) from None
        return [o for o in objects if by_field(o) and by_label(o)]

    # --- ResourceSlices ----------------------------------------------------------------

    def list_slices(self, query: dict[str, str]) -> dict[str, Any]:
        with self.lock:
            items = [copy.deepcopy(self.slices[n]) for n in sorted(self.slices)]
            return self._list("ResourceSlice", self._selected(items, query, SLICE_FIELDS), query)

    def get_slice(self, name: str) -> dict[str, Any]:
        with self.lock:
            if name not in self.slices:
                raise not_found("resourceslices", name)
            return copy.deepcopy(self.slices[name])

    def _decode(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise APIError(400, "BadRequest", "the body of the request was in an unknown format")
        obj = copy.deepcopy(body)
        version = obj.setdefault("apiVersion", API_VERSION)
        if version != API_VERSION or obj.setdefault("kind", "ResourceSlice") != "ResourceSlice":
            message = (
                f"the API version in the data ({version}) does not match the expected "
                f"API version ({API_VERSION})"
            )
            raise APIError(400, "BadRequest", message)
        obj.setdefault("metadata", {})
        for i, device in enumerate(obj.get("spec", {}).get("devices") or []):
            if self.drop_device_taints and isinstance(device, dict):
                device.pop("taints", None)
            for key, capacity in (device.get("capacity") or {}).items():
                if not is_quantity(capacity.get("value")):
                    path = f"spec.devices[{i}].capacity[{key}].value"
                    raise APIError(400, "BadRequest", _QUANTITY.format(path=path))
        return obj

    @staticmethod
    def _check(obj: dict[str, Any], old: dict[str, Any] | None = None) -> None:
        causes = check_schema(obj) or check_resource_slice(obj, old)
        if causes:
            raise invalid("ResourceSlice", obj["metadata"].get("name", ""), causes)

    def create_slice(self, body: Any, *, dry_run: bool = False) -> dict[str, Any]:
        obj = self._decode(body)
        meta = obj["metadata"]
        if meta.get("resourceVersion"):
            raise APIError(
                400, "BadRequest", "resourceVersion should not be set on objects to be created"
            )
        with self.lock:
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = meta["generateName"] + "".join(random.choices(_NAME_SUFFIX, k=5))
            if not meta.get("name"):
                cause = Cause(
                    "metadata.name", "name or generateName is required", "FieldValueRequired"
                )
                raise invalid("ResourceSlice", "", [cause])
            meta.update(uid=str(uuid.uuid4()), creationTimestamp=_now(), generation=1)
            self._check(obj)
            name = meta["name"]
            if name in self.slices:
                message = f'resourceslices.{GROUP} "{name}" already exists'
                raise APIError(409, "AlreadyExists", message, _details("resourceslices", name))
            if not dry_run:
                self.slices[name] = self._bump(obj)
            return copy.deepcopy(obj)

    def replace_slice(self, name: str, body: Any, *, dry_run: bool = False) -> dict[str, Any]:
        obj = self._decode(body)
        meta = obj["metadata"]
        if meta.get("name") != name:
            message = (
                f"the name of the object ({meta.get('name')}) does not match the name on "
                f"the URL ({name})"
            )
            raise APIError(400, "BadRequest", message)
        with self.lock:
            old = self.slices.get(name)
            if old is None:
                raise not_found("resourceslices", name)
            old_meta = old["metadata"]
            if (
                meta.get("resourceVersion")
                and meta["resourceVersion"] != old_meta["resourceVersion"]
            ):
                message = _MODIFIED.format(group=GROUP, name=name)
                raise APIError(409, "Conflict", message, _details("resourceslices", name))
            if meta.get("uid") and meta["uid"] != old_meta["uid"]:
                raise _precondition("UID", old_meta["uid"], meta["uid"])
            generation = old_meta["generation"] + (obj.get("spec") != old.get("spec"))
            meta.update(
                uid=old_meta["uid"],
                creationTimestamp=old_meta["creationTimestamp"],
                generation=generation,
                resourceVersion=old_meta["resourceVersion"],
            )
            self._check(obj, old)
            if obj != old and not dry_run:  # a no-op update writes nothing, keeps the version
                self.slices[name] = self._bump(obj)
            return copy.deepcopy(obj)

    def delete_slice(self, name: str, options: Any, *, dry_run: bool = False) -> dict[str, Any]:
        preconditions = (options or {}).get("preconditions") or {}
        with self.lock:
            obj = self.slices.get(name)
            if obj is None:
                raise not_found("resourceslices", name)
            for key, label in (("resourceVersion", "ResourceVersion"), ("uid", "UID")):
                wanted = preconditions.get(key)
                if wanted and wanted != obj["metadata"][key]:
                    raise _precondition(label, wanted, obj["metadata"][key])
            if not dry_run:
                del self.slices[name]
                self._bump(obj)
            return copy.deepcopy(obj)

    def delete_slices(self, query: dict[str, str]) -> dict[str, Any]:
        """deletecollection: answers the list of what it deleted, as the real server does."""
        with self.lock:
            items = [self.slices[n] for n in sorted(self.slices)]
            doomed = self._selected(items, query, SLICE_FIELDS)
            for obj in doomed:
                del self.slices[obj["metadata"]["name"]]
                self._bump(obj)
            return self._list("ResourceSlice", copy.deepcopy(doomed), {})

    # --- ResourceClaims ----------------------------------------------------------------

    def put_claim(self, claim: dict[str, Any]) -> dict[str, Any]:
        """Store (create or replace) a claim the test seeds; ``ValueError`` when invalid."""
        claim = copy.deepcopy(claim)
        claim.setdefault("apiVersion", API_VERSION)
        claim.setdefault("kind", "ResourceClaim")
        meta = claim.setdefault("metadata", {})
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", _now())
        meta.pop("resourceVersion", None)
        causes = check_schema(claim) or check_resource_claim(claim)
        if causes:
            raise ValueError(
                invalid("ResourceClaim", meta.get("name", ""), causes).status["message"]
            )
        with self.lock:
            self.claims[(meta["namespace"], meta["name"])] = self._bump(claim)
            return copy.deepcopy(claim)

    def remove_claim(self, namespace: str, name: str) -> None:
        with self.lock:
            self._bump(self.claims.pop((namespace, name)))

    def get_claim(self, namespace: str, name: str) -> dict[str, Any]:
        with self.lock:
            claim = self.claims.get((namespace, name))
            if claim is None:
                raise not_found("resourceclaims", name)
            return copy.deepcopy(claim)

    def list_claims(self, namespace: str | None, query: dict[str, str]) -> dict[str, Any]:
        with self.lock:
            items = [
                copy.deepcopy(claim)
                for (claim_namespace, _), claim in sorted(self.claims.items())
                if namespace in (None, claim_namespace)
            ]
            return self._list("ResourceClaim", self._selected(items, query, CLAIM_FIELDS), query)
