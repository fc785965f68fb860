"""The API-server stand-in: the one simulated Kubernetes part, for the DRA driver's tests.

No API server can run here, so this HTTP server on 127.0.0.1 implements the part of the
``resource.k8s.io/v1`` REST API a DRA driver uses, close enough that the official
``kubernetes`` Python client (``ResourceV1Api``) cannot tell the difference on those paths:

- ResourceSlices (cluster-scoped): create (``generateName`` too), get, list with
  ``fieldSelector`` (``metadata.name``, ``spec.nodeName``, ``spec.driver``),
  ``labelSelector`` and ``limit``/``continue``, update (PUT; a stale
  ``metadata.resourceVersion`` is a 409 Conflict), delete (with ``preconditions``),
  deletecollection with the same selectors; ``dryRun=All``;
- ResourceClaims: get and list; tests seed them with ``add_claim`` (see ``allocated_claim``)
  and change them with ``update_claim``, as the scheduler would.

The REST semantics (resourceVersion bookkeeping, conflicts, Status errors) live in
tests/support/apiserver_resources.py, the checks every write gets (the Kubernetes 1.36
schemas through ``kubernetes-validate``, and the server's own ResourceSlice rules: 422
``Invalid``) in tests/support/apiserver_validation.py.

Not implemented, and answered so (405 or 400): PATCH, watch, other resources. A bearer
``token`` can be required (401 without it). ``fail()`` makes the next matching requests
fail, for retry tests; ``requests`` records every request. Imports nothing of agent/.
"""

from __future__ import annotations

import copy
import json
import re
import threading
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tests.support._http import BackgroundServer, QuietHandler
from tests.support.apiserver_resources import API_VERSION, APIError, Store
from tests.support.apiserver_validation import KUBERNETES_VERSION

__all__ = ["APIServerStandIn", "RecordedRequest", "allocated_claim"]

PREFIX = f"/apis/{API_VERSION}"
_SLICES = re.compile(rf"{PREFIX}/resourceslices")
_SLICE = re.compile(rf"{PREFIX}/resourceslices/([^/]+)")
_CLAIM = re.compile(rf"{PREFIX}/namespaces/([^/]+)/resourceclaims/([^/]+)")
_CLAIMS = re.compile(rf"{PREFIX}(?:/namespaces/([^/]+))?/resourceclaims")
_SLICE_VERBS = ["create", "delete", "deletecollection", "get", "list", "update"]


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    body: Any
    status: int


@dataclass
class _Failure:
    method: str
    path: re.Pattern[str]
    status: int
    reason: str
    times: int


def _not_allowed(what: str) -> APIError:
    return APIError(
        405, "MethodNotAllowed", f"{what} is not implemented by the API-server stand-in"
    )


class APIServerStandIn(BackgroundServer):
    """The ``resource.k8s.io/v1`` API-server stand-in; ``with APIServerStandIn() as api:``."""

    def __init__(self, *, token: str | None = None, drop_device_taints: bool = False) -> None:
        """``drop_device_taints``: behave as a server with the DRADeviceTaints gate off."""
        super().__init__(_Handler)
        self.token = token
        self.store = Store(drop_device_taints=drop_device_taints)
        self.requests: list[RecordedRequest] = []
        self._failures: list[_Failure] = []
        self._lock = threading.Lock()

    # --- for tests ---------------------------------------------------------------------

    def configuration(self) -> Any:
        """A ``kubernetes.client.Configuration`` for this server."""
        import kubernetes.client

        config = kubernetes.client.Configuration(host=self.url)
        if self.token:
            # Client 36 reads the key under "BearerToken" (or the old "authorization"), but
            # its prefix only under "BearerToken".
            config.api_key = {"BearerToken": self.token}
            config.api_key_prefix = {"BearerToken": "Bearer"}
        return config

    def write_kubeconfig(self, path: str) -> str:
        """A kubeconfig (JSON, which is YAML) for this server; answers ``path``."""
        user: dict[str, Any] = {"token": self.token} if self.token else {}
        context = {"cluster": "stand-in", "user": "driver"}
        kubeconfig = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "stand-in", "cluster": {"server": self.url}}],
            "users": [{"name": "driver", "user": user}],
            "contexts": [{"name": "stand-in", "context": context}],
            "current-context": "stand-in",
        }
        with open(path, "w") as f:
            json.dump(kubeconfig, f)
        return path

    def add_claim(self, claim: dict[str, Any]) -> dict[str, Any]:
        """Store a ResourceClaim (validated); answers it with uid and resourceVersion set."""
        return self.store.put_claim(claim)

    def update_claim(
        self, namespace: str, name: str, edit: Callable[[dict[str, Any]], None]
    ) -> dict[str, Any]:
        """Change a stored claim (its allocation, say) as the scheduler would."""
        claim = self.store.get_claim(namespace, name)
        edit(claim)
        return self.store.put_claim(claim)

    def remove_claim(self, namespace: str, name: str) -> None:
        self.store.remove_claim(namespace, name)

    def slices(self) -> list[dict[str, Any]]:
        """Every stored ResourceSlice, by name."""
        items: list[dict[str, Any]] = self.store.list_slices({})["items"]
        return items

    def fail(
        self,
        method: str,
        path: str,
        *,
        status: int = 500,
        reason: str = "InternalError",
        times: int = 1,
    ) -> None:
        """Fail the next ``times`` ``method`` requests whose path matches the regex ``path``."""
        with self._lock:
            self._failures.append(_Failure(method, re.compile(path), status, reason, times))

    def record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def requests_to(self, method: str, path: str) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.method == method and re.search(path, r.path)]

    # --- the REST API ------------------------------------------------------------------

    def _injected(self, method: str, path: str) -> APIError | None:
        with self._lock:
            for failure in self._failures:
                if failure.times > 0 and failure.method == method and failure.path.search(path):
                    failure.times -= 1
                    message = f"injected by the test: {failure.reason}"
                    return APIError(failure.status, failure.reason, message)
        return None

    def handle(self, method: str, path: str, query: dict[str, str], body: Any) -> tuple[int, Any]:
        """One request: (status, JSON answer); errors raise ``APIError``."""
        if injected := self._injected(method, path):
            raise injected
        dry_run = query.get("dryRun") == "All"
        if method == "GET" and path == "/version":
            major, minor = KUBERNETES_VERSION.split(".")
            version = f"v{KUBERNETES_VERSION}.0-stand-in"
            return 200, {"major": major, "minor": minor, "gitVersion": version}
        if method == "GET" and path == PREFIX:
            return 200, self._discovery()
        if query.get("watch", "").lower() in ("1", "t", "true"):  # Go strconv.ParseBool
            raise APIError(400, "BadRequest", "watch is not implemented by the API-server stand-in")
        if _SLICES.fullmatch(path):
            if method == "GET":
                return 200, self.store.list_slices(query)
            if method == "POST":
                return 201, self.store.create_slice(body, dry_run=dry_run)
            if method == "DELETE":
                return 200, self.store.delete_slices(query)
        elif match := _SLICE.fullmatch(path):
            name = urllib.parse.unquote(match.group(1))
            if method == "GET":
                return 200, self.store.get_slice(name)
            if method == "PUT":
                return 200, self.store.replace_slice(name, body, dry_run=dry_run)
            if method == "DELETE":
                dry_run = dry_run or (body or {}).get("dryRun") == ["All"]
                return 200, self.store.delete_slice(name, body, dry_run=dry_run)
            if method == "PATCH":
                raise _not_allowed("PATCH")
        elif match := _CLAIM.fullmatch(path):
            if method == "GET":
                return 200, self.store.get_claim(match.group(1), match.group(2))
        elif match := _CLAIMS.fullmatch(path):
            if method == "GET":
                return 200, self.store.list_claims(match.group(1), query)
        else:
            raise APIError(404, "NotFound", "the server could not find the requested resource")
        raise _not_allowed(f"{method} on {path}")

    @staticmethod
    def _discovery() -> dict[str, Any]:
        def resource(name: str, kind: str, namespaced: bool, verbs: list[str]) -> dict[str, Any]:
            singular = kind.lower()
            return {
                "name": name,
                "singularName": singular,
                "namespaced": namespaced,
                "kind": kind,
                "verbs": verbs,
            }

        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": API_VERSION,
            "resources": [
                resource("resourceslices", "ResourceSlice", False, _SLICE_VERBS),
                resource("resourceclaims", "ResourceClaim", True, ["get", "list"]),
            ],
        }


class _Handler(QuietHandler):
    def _serve(self) -> None:
        stand_in: APIServerStandIn = self.server.owner  # type: ignore[attr-defined]
        parsed = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(parsed.query))
        raw = self.read_body()
        body: Any = None
        try:
            if stand_in.token and self.headers.get("Authorization") != f"Bearer {stand_in.token}":
                raise APIError(401, "Unauthorized", "Unauthorized")
            if raw:
                try:
                    body = json.loads(raw)
                except ValueError:
                    message = "the body of the request was in an unknown format"
                    raise APIError(400, "BadRequest", message) from None
            status, answer = stand_in.handle(self.command, parsed.path, query, body)
        except APIError as error:
            status, answer = error.code, error.status
        stand_in.record(RecordedRequest(self.command, parsed.path, query, body, status))
        headers = {"Content-Type": "application/json"}
        self.send_simple(status, json.dumps(answer).encode(), headers)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _serve


def allocated_claim(
    namespace: str,
    name: str,
    *,
    driver: str,
    pool: str,
    devices: Sequence[str],
    request: str = "gpu",
    device_class: str = "gpu.example.com",
    admin_access: bool = False,
    share_ids: Sequence[str] | None = None,
    node: str | None = None,
    reserved_for: Sequence[tuple[str, str]] = (),
) -> dict[str, Any]:
    """A ResourceClaim as the scheduler leaves it: one request, allocated to ``devices``.

    ``share_ids`` (one per device) mark shared allocations of devices that allow multiple
    allocations; ``reserved_for`` lists the (pod name, pod uid) consumers.
    """
    exactly: dict[str, Any] = {
        "deviceClassName": device_class,
        "allocationMode": "ExactCount",
        "count": len(devices),
    }
    if admin_access:
        exactly["adminAccess"] = True
    results = []
    for i, device in enumerate(devices):
        result: dict[str, Any] = {"request": request, "driver": driver, "pool": pool}
        result["device"] = device
        if admin_access:
            result["adminAccess"] = True
        if share_ids is not None:
            result["shareID"] = share_ids[i]
        results.append(result)
    allocation: dict[str, Any] = {"devices": {"results": results}}
    if node is not None:
        field = {"key": "metadata.name", "operator": "In", "values": [node]}
        allocation["nodeSelector"] = {"nodeSelectorTerms": [{"matchFields": [field]}]}
    status: dict[str, Any] = {"allocation": allocation}
    if reserved_for:
        status["reservedFor"] = [{"resource": "pods", "name": n, "uid": u} for n, u in reserved_for]
    return copy.deepcopy(
        {
            "apiVersion": API_VERSION,
            "kind": "ResourceClaim",
            "metadata": {"namespace": namespace, "name": name},
            "spec": {"devices": {"requests": [{"name": request, "exactly": exactly}]}},
            "status": status,
        }
    )
