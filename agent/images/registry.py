"""A client for the OCI distribution API: manifests and blobs, robustly.

For each request the client tries the registry's mirrors in order and then
the registry itself; on each endpoint it

* authenticates on demand (``auth.py``), caching tokens;
* follows redirects itself, dropping ``Authorization`` when the target is
  another origin (scheme, host or port: blob storage must never see the
  registry's token);
* retries 429/5xx answers and broken connections with exponential backoff.

Credentials go only where they were given for. The pull's (and the node
file's) credentials answer a challenge of the endpoint itself, never one from
a host a redirect led to; a bearer challenge's token realm receives them only
if it is ``https`` (or the registry itself is plain HTTP), not on a
link-local address, and not on loopback unless the registry is; token requests
do not follow redirects, and never get the registry's ``insecure_skip_verify`` when
the realm is elsewhere (its ``ca_file`` yes, unless the realm's host has settings).

Failures are translated once, here: unreachable or failing registries are
``RegistryUnavailable``, 401/403 after authenticating are
``Unauthenticated``/``PermissionDenied``, an unknown manifest is ``NotFound``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import ssl
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp

from agent.config import ImageSection, RegistryHost
from agent.errors import (
    InvalidArgument,
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
from agent.images.reference import DEFAULT_DOMAIN

__all__ = ["Endpoint", "RegistryClient", "describe"]

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

    @property
    def origin(self) -> tuple[str, str]:
        return _origin(self.base_url)


def _origin(url: str) -> tuple[str, str]:
    """(scheme, host:port) of a URL: what credentials and tokens are bound to."""
    parts = urllib.parse.urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    name = host.rsplit(":", 1)[0] if not host.startswith("[") else host[1:].split("]")[0]
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


def _check_realm(endpoint: Endpoint, realm: str) -> None:
    """Refuse a token realm the registry's credentials must not be sent to."""
    scheme, host = _origin(realm)
    if scheme not in ("http", "https") or not host:
        raise Unauthenticated(f"{endpoint.host} sent a bearer challenge without a usable realm")
    if scheme == "http" and endpoint.origin[0] == "https":
        raise Unauthenticated(
            f"{endpoint.host} (https) names the plain-http token realm {realm}; "
            "refusing to send credentials or trust a token over plain HTTP"
        )
    address = _ip(host)
    if address is not None and address.is_link_local:
        raise Unauthenticated(f"{endpoint.host} names a token realm on a link-local address")
    if address is not None and address.is_loopback and not _is_local(endpoint.host):
        raise Unauthenticated(
            f"{endpoint.host} names a token realm on this node's loopback ({host})"
        )


def _site(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port with the scheme's default filled in) of a URL."""
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    return scheme, (parts.hostname or ""), port or {"http": 80, "https": 443}.get(scheme)


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

    def child_settings(self) -> tuple[ImageSection, float, RetryPolicy, int]:
        """What a client in another process is made of (``download_process``): the same
        host settings, so the same trust, mirror and redirect rules."""
        return self._settings, self._read_timeout, self._retry, self._connections

    def tokens_for(self, scope: str) -> list[tuple[tuple[str, ...], str, float]]:
        return self._tokens.export(scope)

    def adopt_tokens(self, entries: list[tuple[tuple[str, ...], str, float]]) -> None:
        self._tokens.adopt(entries)

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

    def node_credentials(self) -> dict[str, Credentials]:
        """The node's credentials file, read now (it may change between pulls)."""
        return load_credentials_file(self._settings.credentials_file)

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
                last_error = describe(exc)
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
        challenger = _origin(str(resp.url))
        challenge = parse_challenge(resp.headers.get("WWW-Authenticate", ""))
        resp.release()
        if challenger != endpoint.origin:
            # A redirect led elsewhere and that host wants credentials: they were
            # given for the registry, not for whoever it redirects to.
            raise Unauthenticated(
                f"{challenger[1]} (reached by a redirect from {endpoint.host}) asks for "
                f"authentication; the credentials for {endpoint.host} are not sent there"
            )
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

    def _realm_ssl(self, endpoint: Endpoint, realm: str) -> ssl.SSLContext | bool:
        """The TLS trust for a token request: all of the endpoint's only on its origin.

        A realm elsewhere gets its own host's settings (``image.registries``, keyed
        ``host`` or ``host:port``); without any, the registry's CA (a private CA often
        signs both, as GitLab's registry and its auth) but never its
        ``insecure_skip_verify``: credentials never go over TLS nobody checked."""
        if _site(realm) == _site(endpoint.base_url):
            return endpoint.ssl
        scheme, host, port = _site(realm)
        default = {"http": 80, "https": 443}.get(scheme)
        host = f"[{host}]" if ":" in host else host  # as an IPv6 registry is keyed
        keys = [host, f"{host}:{port}"] if port == default else [f"{host}:{port}"]
        for key in keys:
            if key in self._settings.registries:
                return _ssl_for(self._settings.registries[key])
        return True if endpoint.ssl is False else endpoint.ssl

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
        _check_realm(endpoint, realm)
        realm_ssl = self._realm_ssl(endpoint, realm)
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
                ctx = http.post(realm, data=form, ssl=realm_ssl, allow_redirects=False)
            else:
                token_headers = {}
                if credentials is not None and credentials.has_basic:
                    token_headers["Authorization"] = credentials.basic_header()
                ctx = http.get(
                    realm,
                    params=query,
                    headers=token_headers,
                    ssl=realm_ssl,
                    allow_redirects=False,
                )
            async with ctx as resp:
                if resp.status in _REDIRECTS:
                    raise RegistryUnavailable(
                        f"token server {realm} redirected to "
                        f"{resp.headers.get('Location', '?')}; not followed (credentials stay)"
                    )
                body = await resp.content.read(1 << 20)
                if resp.status in (401, 403):
                    raise Unauthenticated(
                        f"token server {urllib.parse.urlsplit(realm).netloc} rejected the "
                        f"credentials for {scope}"
                    )
                if resp.status >= 400:
                    raise RegistryUnavailable(f"token server {realm} answered HTTP {resp.status}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise RegistryUnavailable(f"token server {realm}: {describe(exc)}") from None
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
        request_headers = dict(headers)
        if auth:
            request_headers["Authorization"] = auth
        for _ in range(_MAX_REDIRECTS + 1):
            same_host = _origin(url) == endpoint.origin
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
            if _origin(url) != endpoint.origin:
                # Blob storage elsewhere (S3, a CDN), or the same host over plain
                # HTTP, must never see the registry token; once dropped it stays dropped.
                request_headers.pop("Authorization", None)
        raise RegistryUnavailable(f"{endpoint.host}: too many redirects for {path}")


def _check_denied(resp: aiohttp.ClientResponse, endpoint: Endpoint) -> aiohttp.ClientResponse:
    if resp.status == 403:
        resp.release()
        raise PermissionDenied(f"{endpoint.host} denied access ({resp.url.path})")
    return resp


def describe(exc: BaseException) -> str:
    """A short, one-line account of a transport failure for an error message."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:300]
