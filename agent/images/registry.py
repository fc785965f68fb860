"""A client for the OCI distribution API: manifests and blobs, robustly.

For each request the client tries the registry's mirrors in order and then
the registry itself; on each endpoint it

* authenticates on demand (``auth.py``), caching tokens;
* follows redirects itself, dropping ``Authorization`` when the target is
  another host (blob storage must never see the registry's token);
* retries 429/5xx answers and broken connections with exponential backoff.

Failures are translated once, here: unreachable or failing registries are
``RegistryUnavailable``, 401/403 after authenticating are
``Unauthenticated``/``PermissionDenied``, an unknown manifest is ``NotFound``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import logging
import random
import ssl
import urllib.parse
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

import aiohttp

from agent.config import ImageSection, RegistryHost
from agent.errors import (
    AgentError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    RegistryUnavailable,
    Unauthenticated,
)
from agent.images.auth import (
    Challenge,
    Credentials,
    TokenCache,
    load_credentials_file,
    parse_challenge,
    token_from_response,
)
from agent.images.content import DigestMismatch
from agent.images.manifest import ACCEPT, MAX_MANIFEST_BYTES, media_type_of
from agent.images.reference import DEFAULT_DOMAIN, Reference

__all__ = ["Endpoint", "RegistryClient", "Repository"]

log = logging.getLogger(__name__)

_RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_MAX_REDIRECTS = 5
_USER_AGENT = "model-agent/0.1.0"


@dataclass(frozen=True, slots=True)
class Endpoint:
    base_url: str  # "https://registry-1.docker.io"
    mirror: bool
    ssl: ssl.SSLContext | bool

    @property
    def host(self) -> str:
        return urllib.parse.urlsplit(self.base_url).netloc


def _is_local(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if not host.startswith("[") else host[1:].split("]")[0]
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _ssl_for(settings: RegistryHost) -> ssl.SSLContext | bool:
    if settings.insecure_skip_verify:
        return False
    if settings.ca_file:
        context = ssl.create_default_context()
        try:
            context.load_verify_locations(cafile=settings.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise InvalidArgument(f"CA file {settings.ca_file}: {exc}") from None
        return context
    return True  # the system's default verification


class RetryPolicy:
    def __init__(self, attempts: int = 5, base_delay: float = 0.25, max_delay: float = 8.0):
        self.attempts = attempts
        self.base_delay = base_delay
        self.max_delay = max_delay

    def delay(self, attempt: int, retry_after: str | None = None) -> float:
        if retry_after and retry_after.isdigit():
            return min(self.max_delay, float(retry_after))
        backoff = min(self.max_delay, self.base_delay * 2.0**attempt)
        return backoff * (0.5 + random.random() / 2)


class RegistryClient:
    """One per agent: the HTTP connection pool, token cache and host settings."""

    def __init__(
        self,
        settings: ImageSection,
        *,
        read_timeout: float,
        retry: RetryPolicy | None = None,
        connections: int = 64,
    ) -> None:
        self._settings = settings
        self._retry = retry or RetryPolicy()
        self._tokens = TokenCache()
        self._read_timeout = read_timeout
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._connections, ttl_dns_cache=60),
                timeout=aiohttp.ClientTimeout(
                    total=None, connect=30, sock_connect=30, sock_read=self._read_timeout
                ),
                headers={"User-Agent": _USER_AGENT},
                auto_decompress=False,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def endpoints(self, domain: str) -> list[Endpoint]:
        """Mirrors first (in order), then the registry itself."""
        settings = self._settings.registries.get(domain, RegistryHost())
        result = []
        for mirror in settings.mirrors:
            mirror_host = urllib.parse.urlsplit(mirror).netloc
            mirror_settings = self._settings.registries.get(mirror_host, RegistryHost())
            result.append(Endpoint(mirror.rstrip("/"), True, _ssl_for(mirror_settings)))
        host = "registry-1.docker.io" if domain == DEFAULT_DOMAIN else domain
        scheme = "http" if settings.plain_http or _is_local(host) else "https"
        result.append(Endpoint(f"{scheme}://{host}", False, _ssl_for(settings)))
        return result

    def repository(self, ref: Reference, credentials: Credentials | None) -> Repository:
        node_credentials = load_credentials_file(self._settings.credentials_file)
        return Repository(self, ref, credentials, node_credentials)

    # -- one request on one endpoint --------------------------------------

    async def send(
        self,
        endpoint: Endpoint,
        method: str,
        path: str,
        headers: Mapping[str, str],
        *,
        scope: str,
        credentials: Credentials | None,
    ) -> aiohttp.ClientResponse:
        """A response with status < 400 (unread), retrying and authenticating as needed."""
        last_error = ""
        for attempt in range(self._retry.attempts):
            try:
                resp = await self._authorized(endpoint, method, path, headers, scope, credentials)
            except (aiohttp.ClientError, TimeoutError) as exc:
                last_error = _describe(exc)
                log.info(
                    "%s %s%s: %s (attempt %d)", method, endpoint.host, path, last_error, attempt + 1
                )
            else:
                if resp.status not in _RETRY_STATUSES:
                    return resp
                last_error = f"HTTP {resp.status}"
                retry_after = resp.headers.get("Retry-After")
                resp.release()
                log.info(
                    "%s %s%s: %s (attempt %d)", method, endpoint.host, path, last_error, attempt + 1
                )
                if attempt + 1 < self._retry.attempts:
                    await asyncio.sleep(self._retry.delay(attempt, retry_after))
                continue
            if attempt + 1 < self._retry.attempts:
                await asyncio.sleep(self._retry.delay(attempt))
        raise RegistryUnavailable(f"{endpoint.host}: {last_error}")

    async def _authorized(
        self,
        endpoint: Endpoint,
        method: str,
        path: str,
        headers: Mapping[str, str],
        scope: str,
        credentials: Credentials | None,
    ) -> aiohttp.ClientResponse:
        key = (endpoint.host, scope, credentials.fingerprint() if credentials else "")
        auth = self._tokens.get(key)
        resp = await self._follow(endpoint, method, path, headers, auth)
        if resp.status != 401:
            return _check_denied(resp, endpoint)
        challenge = parse_challenge(resp.headers.get("WWW-Authenticate", ""))
        resp.release()
        if challenge is None:
            raise Unauthenticated(f"{endpoint.host} requires authentication it does not name")
        auth, lifetime = await self._authenticate(endpoint, challenge, scope, credentials)
        self._tokens.put(key, auth, lifetime)
        resp = await self._follow(endpoint, method, path, headers, auth)
        if resp.status == 401:
            resp.release()
            who = (
                f"as '{credentials.username}'"
                if credentials and credentials.username
                else ("with the given token" if credentials else "anonymously")
            )
            raise Unauthenticated(f"{endpoint.host} refused access to {scope} {who}")
        return _check_denied(resp, endpoint)

    async def _authenticate(
        self,
        endpoint: Endpoint,
        challenge: Challenge,
        scope: str,
        credentials: Credentials | None,
    ) -> tuple[str, float]:
        """The Authorization value to retry with, and how long it may be reused."""
        if challenge.scheme == "basic":
            if credentials is None or not credentials.has_basic:
                raise Unauthenticated(f"{endpoint.host} requires credentials (basic auth)")
            return credentials.basic_header(), 3600.0
        if credentials is not None and credentials.registry_token:
            return f"Bearer {credentials.registry_token}", 3600.0
        realm = challenge.params.get("realm", "")
        if not realm.startswith(("http://", "https://")):
            raise Unauthenticated(f"{endpoint.host} sent a bearer challenge without a realm")
        query = {"scope": scope}
        if challenge.params.get("service"):
            query["service"] = challenge.params["service"]
        http = self._http()
        try:
            if credentials is not None and credentials.identity_token:
                form = {
                    **query,
                    "grant_type": "refresh_token",
                    "client_id": "model-agent",
                    "refresh_token": credentials.identity_token,
                }
                ctx = http.post(realm, data=form, ssl=endpoint.ssl)
            else:
                token_headers = {}
                if credentials is not None and credentials.has_basic:
                    token_headers["Authorization"] = credentials.basic_header()
                ctx = http.get(realm, params=query, headers=token_headers, ssl=endpoint.ssl)
            async with ctx as resp:
                body = await resp.content.read(1 << 20)
                if resp.status in (401, 403):
                    raise Unauthenticated(
                        f"token server {urllib.parse.urlsplit(realm).netloc} rejected the "
                        f"credentials for {scope}"
                    )
                if resp.status >= 400:
                    raise RegistryUnavailable(f"token server {realm} answered HTTP {resp.status}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise RegistryUnavailable(f"token server {realm}: {_describe(exc)}") from None
        try:
            token, lifetime = token_from_response(body)
        except ValueError as exc:
            raise RegistryUnavailable(f"token server {realm}: {exc}") from None
        return f"Bearer {token}", lifetime

    async def _follow(
        self,
        endpoint: Endpoint,
        method: str,
        path: str,
        headers: Mapping[str, str],
        auth: str | None,
    ) -> aiohttp.ClientResponse:
        url = endpoint.base_url + path
        origin = endpoint.host
        request_headers = dict(headers)
        if auth:
            request_headers["Authorization"] = auth
        for _ in range(_MAX_REDIRECTS + 1):
            target = urllib.parse.urlsplit(url)
            same_host = target.netloc == origin
            resp = await self._http().request(
                method,
                url,
                headers=request_headers,
                allow_redirects=False,
                ssl=endpoint.ssl if same_host else True,
            )
            if resp.status not in _REDIRECTS:
                return resp
            location = resp.headers.get("Location", "")
            resp.release()
            if not location:
                raise RegistryUnavailable(f"{endpoint.host} redirected without a Location")
            url = urllib.parse.urljoin(url, location)
            if urllib.parse.urlsplit(url).netloc != origin:
                # Blob storage elsewhere (S3, a CDN) must never see the registry token.
                request_headers.pop("Authorization", None)
        raise RegistryUnavailable(f"{endpoint.host}: too many redirects for {path}")


def _check_denied(resp: aiohttp.ClientResponse, endpoint: Endpoint) -> aiohttp.ClientResponse:
    if resp.status == 403:
        resp.release()
        raise PermissionDenied(f"{endpoint.host} denied access ({resp.url.path})")
    return resp


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:300]


class Repository:
    """One image repository (``domain/path``) with the credentials of one pull."""

    def __init__(
        self,
        client: RegistryClient,
        ref: Reference,
        credentials: Credentials | None,
        node_credentials: Mapping[str, Credentials],
    ) -> None:
        self.client = client
        self.ref = ref
        self.scope = f"repository:{ref.path}:pull"
        self._credentials = credentials
        self._node_credentials = node_credentials

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
        mirror_error: AgentError | None = None
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
                    mirror_error = exc
                    continue
                if mirror_error is not None and isinstance(exc, RegistryUnavailable):
                    raise RegistryUnavailable(
                        f"{exc} (a mirror failed too: {mirror_error})"
                    ) from None
                raise
            if resp.status < 400:
                return resp
            resp.release()
            if endpoint.mirror:
                log.info("mirror %s: HTTP %d for %s", endpoint.host, resp.status, what)
                continue
            if resp.status == 404:
                raise NotFound(f"{what} not found on {endpoint.host}")
            raise RegistryUnavailable(f"{endpoint.host} answered HTTP {resp.status} for {what}")
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
            raise RegistryUnavailable(f"reading {what}: {_describe(exc)}") from None
        finally:
            resp.release()

    async def get_blob(self, digest: str, size: int) -> bytes:
        """A small blob (an image config), read whole and verified."""
        what = f"blob {digest}"
        resp = await self._open("GET", f"/v2/{self.ref.path}/blobs/{digest}", {}, what)
        try:
            body = await resp.content.read(size + 1)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise RegistryUnavailable(f"reading {what}: {_describe(exc)}") from None
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
