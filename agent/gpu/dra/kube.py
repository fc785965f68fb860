"""The DRA driver's API server calls, through the official ``kubernetes`` client.

Credentials come from ``[gpu.dra] kubeconfig`` (on a node, the kubelet's own
kubeconfig is the natural choice: the Node authorizer lets a node manage its own
ResourceSlices and read the claims of its pods) or, when it is empty, from the
in-cluster service account. ``ResourceApi`` wraps ``ResourceV1Api`` for the calls the
driver makes and answers plain JSON dicts (``_preload_content=False``: the objects as
the server sent them, without the client's model round trip). Every call blocks; run
it in a thread. Failures raise ``ApiError`` with the HTTP status (0: no answer).
Imports nothing of the agent but ``errors``.
"""

from __future__ import annotations

import json
from typing import Any

from agent.errors import AgentError

__all__ = ["ApiError", "ResourceApi", "connect"]

REQUEST_TIMEOUT = 15.0


class ApiError(AgentError):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}" if status else message)
        self.status = status
        self.reason = reason


def connect(kubeconfig: str) -> ResourceApi:
    """A client from the kubeconfig, or from the in-cluster service account."""
    import kubernetes

    configuration = kubernetes.client.Configuration()
    try:
        if kubeconfig:
            kubernetes.config.load_kube_config(
                config_file=kubeconfig, client_configuration=configuration
            )
        else:
            kubernetes.config.load_incluster_config(client_configuration=configuration)
    except (kubernetes.config.ConfigException, OSError) as exc:
        where = kubeconfig or "the in-cluster service account (set [gpu.dra] kubeconfig)"
        raise ApiError(
            0, "NoCredentials", f"no API server credentials from {where}: {exc}"
        ) from None
    return ResourceApi(kubernetes.client.ApiClient(configuration))


def _call(method: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    from kubernetes.client.exceptions import ApiException

    try:
        response = method(*args, _preload_content=False, _request_timeout=REQUEST_TIMEOUT, **kwargs)
    except ApiException as exc:
        reason, message = exc.reason or "", str(exc.body or "")
        try:
            status = json.loads(exc.body)
            reason, message = status.get("reason", reason), status.get("message", message)
        except (TypeError, ValueError):
            pass
        raise ApiError(int(exc.status or 0), str(reason), str(message)) from None
    except Exception as exc:  # urllib3: refused, timed out, TLS
        raise ApiError(0, type(exc).__name__, f"API server unreachable: {exc}") from None
    data: dict[str, Any] = json.loads(response.data or b"{}")
    return data


class ResourceApi:
    def __init__(self, client: Any) -> None:
        from kubernetes.client import ResourceV1Api

        self._client = client
        self._api = ResourceV1Api(client)

    def list_slices(self, node: str, driver: str) -> list[dict[str, Any]]:
        selector = f"spec.nodeName={node},spec.driver={driver}"
        items: list[dict[str, Any]] = []
        token = ""
        while True:
            paging = {"_continue": token} if token else {}
            page = _call(
                self._api.list_resource_slice, field_selector=selector, limit=100, **paging
            )
            items += page.get("items") or []
            token = (page.get("metadata") or {}).get("continue") or ""
            if not token:
                return items

    def create_slice(self, body: dict[str, Any]) -> dict[str, Any]:
        return _call(self._api.create_resource_slice, body)

    def replace_slice(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        return _call(self._api.replace_resource_slice, name, body)

    def delete_slice(self, name: str, resource_version: str = "") -> None:
        body: dict[str, Any] = {}
        if resource_version:
            body = {"preconditions": {"resourceVersion": resource_version}}
        try:
            _call(self._api.delete_resource_slice, name, body=body)
        except ApiError as exc:
            if exc.status != 404:
                raise

    def read_claim(self, namespace: str, name: str) -> dict[str, Any]:
        return _call(self._api.read_namespaced_resource_claim, name, namespace)

    def close(self) -> None:
        self._client.close()
