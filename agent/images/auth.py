"""Registry authentication: credentials, challenges, and bearer tokens.

Flow (distribution ``docs/spec/auth/token.md``): a request without a usable
token gets ``401`` with ``WWW-Authenticate``; for ``Bearer`` we ask the realm
for a token for ``repository:<name>:pull`` (with HTTP Basic credentials if
we have some, or an OAuth2 refresh token), cache it until it expires, and
retry; for ``Basic`` we send the credentials directly. Tokens are cached per
(realm, service, scope, credentials), never shared between credentials.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass

from agent.errors import InvalidArgument

__all__ = [
    "Challenge",
    "Credentials",
    "TokenCache",
    "load_credentials_file",
    "parse_challenge",
]

_PARAM = re.compile(r'([A-Za-z][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')
#: distribution's default token lifetime when the server names none
DEFAULT_TOKEN_SECONDS = 60


@dataclass(frozen=True, slots=True)
class Credentials:
    username: str = ""
    password: str = ""
    #: an OAuth2 refresh token for the realm ("identity token")
    identity_token: str = ""
    #: a bearer token to send as is ("registry token")
    registry_token: str = ""

    @classmethod
    def from_cri(
        cls,
        *,
        username: str = "",
        password: str = "",
        auth: str = "",
        identity_token: str = "",
        registry_token: str = "",
    ) -> Credentials | None:
        """The CRI ``AuthConfig`` fields; ``auth`` is base64 ``user:password``."""
        if auth and not username:
            try:
                decoded = base64.b64decode(auth, validate=True).decode()
            except (ValueError, UnicodeDecodeError):
                raise InvalidArgument("auth.auth is not base64 of 'username:password'") from None
            username, sep, password = decoded.partition(":")
            if not sep:
                raise InvalidArgument("auth.auth is not base64 of 'username:password'")
        creds = cls(username, password, identity_token, registry_token)
        return creds if creds != cls() else None

    @property
    def has_basic(self) -> bool:
        return bool(self.username)

    def basic_header(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()

    def fingerprint(self) -> str:
        """A stable key for caches; never the secret itself."""
        blob = "\0".join((self.username, self.password, self.identity_token, self.registry_token))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Challenge:
    scheme: str  # "bearer" or "basic", lower case
    params: Mapping[str, str]


def parse_challenge(header: str) -> Challenge | None:
    """The first ``Bearer`` or ``Basic`` challenge of a ``WWW-Authenticate`` header."""
    scheme, _, rest = header.strip().partition(" ")
    scheme = scheme.lower()
    if scheme not in ("bearer", "basic"):
        return None
    params = {
        m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3)).replace(
            '\\"', '"'
        )
        for m in _PARAM.finditer(rest)
    }
    return Challenge(scheme, params)


class TokenCache:
    """Bearer tokens by (realm, service, scope, credentials) until shortly before expiry."""

    def __init__(self) -> None:
        self._tokens: dict[tuple[str, ...], tuple[str, float]] = {}

    def get(self, key: tuple[str, ...]) -> str | None:
        entry = self._tokens.get(key)
        if entry is None:
            return None
        token, expires = entry
        if time.monotonic() >= expires:
            self._tokens.pop(key, None)
            return None
        return token

    def put(self, key: tuple[str, ...], token: str, expires_in: float) -> None:
        # Renew a little early so a token never expires between check and use.
        margin = min(10.0, expires_in / 10)
        self._tokens[key] = (token, time.monotonic() + max(1.0, expires_in - margin))

    def export(self, scope: str) -> list[tuple[tuple[str, ...], str, float]]:
        """The live tokens for ``scope``, with the seconds each has left (for the
        download process: a token fetched for a pull's manifest serves its blobs)."""
        now = time.monotonic()
        return [
            (key, token, expires - now)
            for key, (token, expires) in list(self._tokens.items())
            if len(key) > 1 and key[1] == scope and expires > now
        ]

    def adopt(self, entries: list[tuple[tuple[str, ...], str, float]]) -> None:
        """Tokens another process exported, expiring when they would have there."""
        now = time.monotonic()
        for key, token, left in entries:
            self._tokens[key] = (token, now + left)


def token_from_response(body: bytes) -> tuple[str, float]:
    """``(token, expires_in)`` from a token endpoint's JSON answer."""
    try:
        doc = json.loads(body)
    except ValueError:
        raise ValueError("token endpoint answered something that is not JSON") from None
    token = doc.get("token") or doc.get("access_token")
    if not isinstance(token, str) or not token:
        raise ValueError("token endpoint answered without a token")
    expires = doc.get("expires_in")
    if not isinstance(expires, int | float) or expires <= 0:
        expires = DEFAULT_TOKEN_SECONDS
    return token, float(expires)


def _normalise_host(key: str) -> str:
    host = re.sub(r"^[a-z]+://", "", key).split("/", 1)[0]
    if host in ("index.docker.io", "docker.io"):
        return "registry-1.docker.io"
    return host


def load_credentials_file(path: str) -> dict[str, Credentials]:
    """Credentials by registry host from a docker ``config.json``; missing file = none."""
    if not path or not os.path.exists(path):
        return {}
    try:
        with open(path, "rb") as f:
            doc = json.load(f)
    except (OSError, ValueError) as exc:
        raise InvalidArgument(f"credentials file {path}: {exc}") from None
    result: dict[str, Credentials] = {}
    for key, entry in (doc.get("auths") or {}).items():
        if not isinstance(entry, dict):
            continue
        creds = Credentials.from_cri(
            username=str(entry.get("username") or ""),
            password=str(entry.get("password") or ""),
            auth=str(entry.get("auth") or ""),
            identity_token=str(entry.get("identitytoken") or ""),
            registry_token=str(entry.get("registrytoken") or ""),
        )
        if creds is not None:
            result[_normalise_host(key)] = creds
    return result
