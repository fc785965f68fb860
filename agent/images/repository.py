"""One image repository on a registry: manifests and blobs, mirrors first.

A ``Repository`` is ``domain/path`` with the credentials of one pull. Each
request tries the registry's mirrors in order and then the registry itself;
a mirror that fails or lacks the object is skipped (what it said goes into
the final error, so "the mirror had no such image and the registry was
unreachable" reads as that), the registry itself has the last word.
Manifests and small blobs are read whole and verified; layer blobs are
streamed (``open_blob``) for ``download``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

import aiohttp

from agent.errors import (
    InvalidArgument,
    NotFound,
    PermissionDenied,
    RegistryUnavailable,
    Unauthenticated,
)
from agent.images.auth import Credentials
from agent.images.content import DigestMismatch
from agent.images.manifest import ACCEPT, MAX_MANIFEST_BYTES, media_type_of
from agent.images.reference import Reference
from agent.images.registry import Endpoint, RegistryClient, describe

__all__ = ["BlobBody", "Repository"]

log = logging.getLogger(__name__)


class Repository:
    """One image repository (``domain/path``) with the credentials of one pull."""

    def __init__(
        self,
        client: RegistryClient,
        ref: Reference,
        credentials: Credentials | None,
        node_credentials: Mapping[str, Credentials] | None = None,
    ) -> None:
        self.client = client
        self.ref = ref
        self.scope = f"repository:{ref.path}:pull"
        self._credentials = credentials
        self._node_credentials = (
            client.node_credentials() if node_credentials is None else node_credentials
        )

    def credentials_for_child(self) -> tuple[Credentials | None, Mapping[str, Credentials]]:
        """This pull's credentials and the node's, for the same repository in the download
        process (they go only where this side would send them: the same rules run there)."""
        return self._credentials, dict(self._node_credentials)

    def _credentials_for(self, endpoint: Endpoint) -> Credentials | None:
        # The pull's own credentials (from the kubelet) are for the registry, not
        # for a mirror run by someone else; the node's file may name both.
        node = self._node_credentials.get(endpoint.host)
        if endpoint.mirror:
            return node
        return self._credentials or node

    async def _open(
        self, method: str, path: str, headers: Mapping[str, str], what: str
    ) -> aiohttp.ClientResponse:
        """An open response for ``what`` from the first endpoint that has it.

        A mirror that fails or lacks the object is skipped; the registry
        itself has the last word. The caller releases the response.
        """
        mirrors: list[str] = []  # what each mirror said, for the final error
        for endpoint in self.client.endpoints(self.ref.domain):
            try:
                resp = await self.client.send(
                    endpoint,
                    method,
                    path,
                    headers,
                    scope=self.scope,
                    credentials=self._credentials_for(endpoint),
                )
            except (RegistryUnavailable, Unauthenticated, PermissionDenied) as exc:
                if endpoint.mirror:
                    log.info("mirror %s failed for %s: %s", endpoint.host, what, exc)
                    mirrors.append(f"mirror {endpoint.host}: {exc}")
                    continue
                if mirrors:
                    raise type(exc)(f"{exc} ({'; '.join(mirrors)})") from None
                raise
            if resp.status < 400:
                return resp
            resp.release()
            if endpoint.mirror:
                log.info("mirror %s: HTTP %d for %s", endpoint.host, resp.status, what)
                said = "not found (HTTP 404)" if resp.status == 404 else f"HTTP {resp.status}"
                mirrors.append(f"mirror {endpoint.host}: {said}")
                continue
            tried = f" ({'; '.join(mirrors)})" if mirrors else ""
            if resp.status == 404:
                raise NotFound(f"{what} not found on {endpoint.host}{tried}")
            raise RegistryUnavailable(
                f"{endpoint.host} answered HTTP {resp.status} for {what}{tried}"
            )
        raise RegistryUnavailable(f"no endpoint for {self.ref.domain}")  # pragma: no cover

    async def get_manifest(self, reference: str) -> tuple[bytes, str, str]:
        """``(body, media type, digest)`` of a manifest or index, verified."""
        sep = "@" if reference.startswith("sha256:") else ":"
        what = f"manifest {self.ref.name}{sep}{reference}"
        resp = await self._open(
            "GET", f"/v2/{self.ref.path}/manifests/{reference}", {"Accept": ACCEPT}, what
        )
        try:
            length = resp.content_length
            if length is not None and length > MAX_MANIFEST_BYTES:
                raise InvalidArgument(f"{what} is {length} bytes, over the 4 MiB limit")
            body = await resp.content.read(MAX_MANIFEST_BYTES + 1)
            if len(body) > MAX_MANIFEST_BYTES:
                raise InvalidArgument(f"{what} is over the 4 MiB limit")
            digest = "sha256:" + hashlib.sha256(body).hexdigest()
            expected = reference if sep == "@" else resp.headers.get("Docker-Content-Digest", "")
            if expected.startswith("sha256:") and expected != digest:
                raise DigestMismatch(f"{what} has digest {digest}, expected {expected}")
            return body, media_type_of(body, resp.headers.get("Content-Type", "")), digest
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise RegistryUnavailable(f"reading {what}: {describe(exc)}") from None
        finally:
            resp.release()

    async def get_blob(self, digest: str, size: int) -> bytes:
        """A small blob (an image config), read whole and verified."""
        what = f"blob {digest}"
        resp = await self._open("GET", f"/v2/{self.ref.path}/blobs/{digest}", {}, what)
        try:
            body = await resp.content.read(size + 1)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise RegistryUnavailable(f"reading {what}: {describe(exc)}") from None
        finally:
            resp.release()
        if len(body) != size:
            raise DigestMismatch(f"{what} is {len(body)} bytes, the manifest says {size}")
        actual = "sha256:" + hashlib.sha256(body).hexdigest()
        if actual != digest:
            raise DigestMismatch(f"{what} has digest {actual}")
        return body

    @contextlib.asynccontextmanager
    async def open_blob(self, digest: str, start: int, end: int) -> AsyncIterator[BlobBody]:
        """Bytes ``[start, end)`` of a blob as a stream; ``ranged`` says if the range held."""
        resp = await self._open(
            "GET",
            f"/v2/{self.ref.path}/blobs/{digest}",
            {"Range": f"bytes={start}-{end - 1}"},
            f"blob {digest}",
        )
        try:
            if resp.status == 206:
                content_range = resp.headers.get("Content-Range", "")
                if not content_range.startswith(f"bytes {start}-"):
                    raise RegistryUnavailable(
                        f"blob {digest}: unexpected Content-Range '{content_range}'"
                    )
                yield BlobBody(resp, ranged=True)
            elif resp.status == 200:
                yield BlobBody(resp, ranged=False)
            else:
                raise RegistryUnavailable(f"blob {digest}: unexpected HTTP {resp.status}")
        finally:
            resp.release()


@dataclass(slots=True)
class BlobBody:
    response: aiohttp.ClientResponse
    ranged: bool

    async def chunks(self) -> AsyncIterator[bytes]:
        async for chunk in self.response.content.iter_any():
            yield chunk
