"""Push test images over the distribution HTTP API, synchronously, from any test.

``RegistryClient`` answers the registry's 401 challenges itself: ``Bearer`` (fetches a
token from the realm with the credentials, cached per scope) or ``Basic``. It is also a
plain reader for tests that check what the registry serves.
"""

from __future__ import annotations

import base64
import http.client
import json
import re
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tests.support.images import Image, Index
from tests.support.layers import sha256_digest

_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')


@dataclass(frozen=True)
class Response:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def request(
    method: str,
    url: str,
    headers: Mapping[str, str] | None = None,
    body: bytes | None = None,
    timeout: float = 30.0,
) -> Response:
    """One HTTP request, no redirects followed, no exception on 4xx/5xx."""
    parts = urllib.parse.urlsplit(url)
    assert parts.hostname is not None, url
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        conn.request(method, path or "/", body=body, headers=dict(headers or {}))
        response = conn.getresponse()
        return Response(response.status, response.headers, response.read())
    finally:
        conn.close()


@dataclass(frozen=True)
class PushedImage:
    """Where an image went: ``host`` and ``name`` as pushed, and the image itself."""

    host: str
    name: str
    tag: str | None
    image: Image

    @property
    def digest(self) -> str:
        return self.image.manifest_digest

    @property
    def image_id(self) -> str:
        return self.image.config_digest

    def ref(self, host: str | None = None) -> str:
        """``host/name:tag`` (``host`` defaults to where it was pushed; a proxy's also works)."""
        return f"{host or self.host}/{self.name}:{self.tag}"

    def ref_by_digest(self, host: str | None = None) -> str:
        return f"{host or self.host}/{self.name}@{self.digest}"


@dataclass(frozen=True)
class PushedIndex:
    host: str
    name: str
    tag: str | None
    index: Index

    @property
    def digest(self) -> str:
        return self.index.digest

    def ref(self, host: str | None = None) -> str:
        return f"{host or self.host}/{self.name}:{self.tag}"

    def ref_by_digest(self, host: str | None = None) -> str:
        return f"{host or self.host}/{self.name}@{self.digest}"


class PushError(Exception):
    pass


class RegistryClient:
    """A distribution API client for ``url`` ("http://host:port"), with optional credentials."""

    def __init__(self, url: str, username: str | None = None, password: str | None = None):
        self.url = url.rstrip("/")
        self.host = urllib.parse.urlsplit(self.url).netloc
        self._basic = (
            "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()
            if username is not None
            else None
        )
        self._tokens: dict[tuple[str, str, str], str] = {}
        self._authorization: str | None = None  # tried first; replaced on a new challenge

    def request(
        self,
        method: str,
        path_or_url: str,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
    ) -> Response:
        """A request to the registry, answering one 401 challenge if there is one."""
        url = path_or_url if "://" in path_or_url else self.url + path_or_url
        response = request(method, url, self._with_auth(headers), body)
        if response.status != 401:
            return response
        authorization = self._answer_challenge(response.headers.get("WWW-Authenticate", ""))
        if authorization is None or authorization == self._authorization:
            return response
        self._authorization = authorization
        return request(method, url, self._with_auth(headers), body)

    def _with_auth(self, headers: Mapping[str, str] | None) -> dict[str, str]:
        merged = dict(headers or {})
        if self._authorization is not None:
            merged.setdefault("Authorization", self._authorization)
        return merged

    def _answer_challenge(self, challenge: str) -> str | None:
        scheme, _, params_text = challenge.partition(" ")
        if scheme.lower() == "basic":
            return self._basic
        if scheme.lower() != "bearer":
            return None
        params = dict(_CHALLENGE_PARAM.findall(params_text))
        key = (params.get("realm", ""), params.get("service", ""), params.get("scope", ""))
        if key not in self._tokens:
            query = urllib.parse.urlencode(
                [("service", key[1])] + [("scope", s) for s in key[2].split(" ") if s]
            )
            headers = {"Authorization": self._basic} if self._basic else {}
            answer = request("GET", f"{key[0]}?{query}", headers)
            if answer.status != 200:
                raise PushError(f"token server answered {answer.status}: {answer.body!r}")
            body = json.loads(answer.body)
            self._tokens[key] = body.get("token") or body["access_token"]
        return "Bearer " + self._tokens[key]

    def blob_exists(self, name: str, digest: str) -> bool:
        return self.request("HEAD", f"/v2/{name}/blobs/{digest}").status == 200

    def push_blob(self, name: str, data: bytes) -> str:
        """Upload ``data`` monolithically (POST, then PUT ?digest=) unless it is there."""
        digest = sha256_digest(data)
        if self.blob_exists(name, digest):
            return digest
        started = self.request("POST", f"/v2/{name}/blobs/uploads/")
        if started.status != 202:
            raise PushError(f"POST upload for {name}: {started.status} {started.body!r}")
        location = started.headers["Location"]
        separator = "&" if "?" in location else "?"
        finished = self.request(
            "PUT",
            f"{location}{separator}digest={urllib.parse.quote(digest)}",
            {"Content-Type": "application/octet-stream", "Content-Length": str(len(data))},
            data,
        )
        if finished.status != 201:
            raise PushError(f"PUT blob {digest} to {name}: {finished.status} {finished.body!r}")
        return digest

    def put_manifest(self, name: str, reference: str, body: bytes, media_type: str) -> str:
        """PUT raw manifest bytes under a tag or digest; returns the registry's digest."""
        response = self.request(
            "PUT", f"/v2/{name}/manifests/{reference}", {"Content-Type": media_type}, body
        )
        if response.status != 201:
            raise PushError(f"PUT manifest {name}:{reference}: {response.status} {response.body!r}")
        return response.headers.get("Docker-Content-Digest") or sha256_digest(body)

    def push_image(self, name: str, image: Image, tag: str | None = "latest") -> PushedImage:
        """Layers and config, then the manifest by digest and, if given, by ``tag``."""
        for item in image.layers:
            self.push_blob(name, item.blob)
        self.push_blob(name, image.config)
        for reference in _references(image.manifest_digest, tag):
            self.put_manifest(name, reference, image.manifest, image.media_type)
        return PushedImage(self.host, name, tag, image)

    def push_index(self, name: str, index: Index, tag: str | None = "latest") -> PushedIndex:
        """Every child image by digest, then the index by digest and, if given, by ``tag``."""
        for image in index.images:
            self.push_image(name, image, tag=None)
        for reference in _references(index.digest, tag):
            self.put_manifest(name, reference, index.manifest, index.media_type)
        return PushedIndex(self.host, name, tag, index)

    def get_manifest(self, name: str, reference: str, accept: str | Sequence[str]) -> Response:
        accept_header = accept if isinstance(accept, str) else ", ".join(accept)
        return self.request("GET", f"/v2/{name}/manifests/{reference}", {"Accept": accept_header})

    def get_blob(self, name: str, digest: str, range_header: str | None = None) -> Response:
        headers = {"Range": range_header} if range_header else {}
        return self.request("GET", f"/v2/{name}/blobs/{digest}", headers)

    def delete_manifest(self, name: str, digest: str) -> Response:
        return self.request("DELETE", f"/v2/{name}/manifests/{digest}")


def _references(digest: str, tag: str | None) -> list[str]:
    return [digest] if tag is None else [digest, tag]
