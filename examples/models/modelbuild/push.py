"""Push one tag of an OCI layout to a registry over the distribution API, or with skopeo.

Owns the upload: each blob the manifest names (config, layers) is checked with ``HEAD``
and, if missing, uploaded in one streamed ``PUT`` read from the layout's file (multi-GB
weights never sit in memory); then the manifest bytes are put by tag, exactly as built,
so the registry's digest is the layout's digest. Answers ``Basic`` and ``Bearer``
challenges with the given credentials. ``skopeo_copy`` is the alternative for registries
that need more (TLS client certs, credential helpers).

Must not import ``rootfs``.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import subprocess
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from modelbuild.oci import Layout

__all__ = ["PushError", "Pushed", "RegistryPusher", "parse_reference", "skopeo_copy"]

_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')


class PushError(Exception):
    pass


@dataclass(frozen=True)
class Pushed:
    reference: str  # host/repository:tag
    digest: str  # the manifest's
    uploaded_bytes: int  # blobs the registry lacked
    blobs: int


def parse_reference(reference: str) -> tuple[str, str, str]:
    """``host[:port]/repo/name:tag`` → (host, repository, tag)."""
    host, _, rest = reference.partition("/")
    if not rest or ("." not in host and ":" not in host and host != "localhost"):
        raise ValueError(f"{reference!r}: the reference must start with a registry host")
    repository, _, tag = rest.rpartition(":")
    if not repository or "/" in tag:
        repository, tag = rest, "latest"
    return host, repository, tag


class RegistryPusher:
    """A distribution API client for ``url`` (``http://host:port`` or ``https://…``)."""

    def __init__(
        self,
        url: str,
        username: str | None = None,
        password: str | None = None,
        timeout: float = 600.0,
    ) -> None:
        parts = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
        self.scheme, self.netloc = parts.scheme, parts.netloc
        self.timeout = timeout
        self._basic = (
            "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()
            if username is not None
            else None
        )
        self._authorization: str | None = None

    def _connection(self, netloc: str | None = None, scheme: str | None = None) -> Any:
        netloc = netloc or self.netloc
        if (scheme or self.scheme) == "https":
            return http.client.HTTPSConnection(netloc, timeout=self.timeout, blocksize=1 << 20)
        return http.client.HTTPConnection(netloc, timeout=self.timeout, blocksize=1 << 20)

    def _request(
        self,
        method: str,
        target: str,
        headers: Mapping[str, str] | None = None,
        body: Any = None,
        retry_auth: bool = True,
    ) -> tuple[int, http.client.HTTPMessage, bytes]:
        parts = urllib.parse.urlsplit(target)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        merged = dict(headers or {})
        if self._authorization:
            merged.setdefault("Authorization", self._authorization)
        connection = self._connection(parts.netloc or None, parts.scheme or None)
        try:
            offset = body.tell() if hasattr(body, "tell") else None
            connection.request(method, path, body=body, headers=merged)
            response = connection.getresponse()
            data = response.read()
        finally:
            connection.close()
        if response.status == 401 and retry_auth:
            authorization = self._answer(response.headers.get("WWW-Authenticate", ""))
            if authorization and authorization != self._authorization:
                self._authorization = authorization
                if offset is not None:
                    body.seek(offset)
                return self._request(method, target, headers, body, retry_auth=False)
        return response.status, response.headers, data

    def _answer(self, challenge: str) -> str | None:
        scheme, _, params_text = challenge.partition(" ")
        if scheme.lower() == "basic":
            return self._basic
        if scheme.lower() != "bearer":
            return None
        params = dict(_CHALLENGE_PARAM.findall(params_text))
        query = urllib.parse.urlencode(
            [("service", params.get("service", ""))]
            + [("scope", s) for s in params.get("scope", "").split(" ") if s]
        )
        realm = urllib.parse.urlsplit(params.get("realm", ""))
        connection = self._connection(realm.netloc, realm.scheme)
        try:
            headers = {"Authorization": self._basic} if self._basic else {}
            connection.request("GET", f"{realm.path}?{query}", headers=headers)
            response = connection.getresponse()
            data = response.read()
        finally:
            connection.close()
        if response.status != 200:
            raise PushError(f"token server answered {response.status}: {data[:200]!r}")
        token = json.loads(data)
        return "Bearer " + str(token.get("token") or token["access_token"])

    def _blob_exists(self, repository: str, digest: str) -> bool:
        status, _, _ = self._request("HEAD", f"/v2/{repository}/blobs/{digest}")
        return status == 200

    def push_blob(self, repository: str, path: str, digest: str) -> int:
        """Upload the file ``path`` as blob ``digest`` unless there; returns bytes sent."""
        if self._blob_exists(repository, digest):
            return 0
        status, headers, data = self._request("POST", f"/v2/{repository}/blobs/uploads/")
        if status != 202:
            raise PushError(f"POST upload to {repository}: {status} {data[:300]!r}")
        location = headers["Location"]
        separator = "&" if "?" in location else "?"
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            status, _, data = self._request(
                "PUT",
                f"{location}{separator}digest={urllib.parse.quote(digest)}",
                {"Content-Type": "application/octet-stream", "Content-Length": str(size)},
                f,
            )
        if status != 201:
            raise PushError(f"PUT blob {digest} to {repository}: {status} {data[:300]!r}")
        return size

    def push(self, layout: Layout, ref_name: str, repository: str, tag: str) -> Pushed:
        """Push the layout's ``ref_name`` as ``repository:tag``."""
        descriptor = layout.resolve(ref_name)
        manifest_path = layout.blob_path(descriptor.digest)
        with open(manifest_path, "rb") as f:
            manifest_bytes = f.read()
        manifest = json.loads(manifest_bytes)
        blobs = [manifest["config"], *manifest["layers"]]
        uploaded = 0
        for blob in blobs:
            uploaded += self.push_blob(repository, layout.blob_path(blob["digest"]), blob["digest"])
        status, headers, data = self._request(
            "PUT",
            f"/v2/{repository}/manifests/{tag}",
            {"Content-Type": descriptor.media_type},
            manifest_bytes,
        )
        if status != 201:
            raise PushError(f"PUT manifest {repository}:{tag}: {status} {data[:500]!r}")
        digest = headers.get("Docker-Content-Digest") or descriptor.digest
        if digest != descriptor.digest:
            raise PushError(f"the registry stored {digest}, the layout has {descriptor.digest}")
        return Pushed(f"{self.netloc}/{repository}:{tag}", digest, uploaded, len(blobs))


def skopeo_copy(layout: Layout, ref_name: str, destination: str, tls_verify: bool = True) -> None:
    """``skopeo copy oci:<layout>:<ref> docker://<destination>``, digests preserved."""
    argv = [
        "skopeo",
        "copy",
        "--preserve-digests",
        f"--dest-tls-verify={str(tls_verify).lower()}",
        f"oci:{layout.path}:{ref_name}",
        f"docker://{destination}",
    ]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=3600)
    if result.returncode != 0:
        raise PushError(f"skopeo copy failed: {result.stderr.strip()[-2000:]}")
