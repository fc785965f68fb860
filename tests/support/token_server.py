"""A distribution token server (distribution docs/spec/auth/token.md) for the token registry.

The registry trusts tokens signed by a self-signed ES256 certificate made here. Distribution
2.8.2 finds the signing key through the ``x5c`` JOSE header, checks that the certificate
chains to ``rootcertbundle`` and has the digitalSignature key usage, and checks ``iss``,
``aud`` (= its ``service``), ``exp`` and ``nbf``; the ``access`` claim grants the actions.

It serves ``GET /token`` (HTTP Basic credentials or anonymous) and the OAuth2 ``POST /token``
(``grant_type=password`` or ``refresh_token``), and records every request so tests can
assert that a client caches tokens.
"""

from __future__ import annotations

import base64
import datetime
import json
import secrets
import threading
import time
import urllib.parse
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from tests.support._http import BackgroundServer, QuietHandler

SERVICE = "model-agent-test-registry"
ISSUER = "model-agent-test-token-issuer"
#: Actions an authenticated read-write user may be granted on a repository.
ALL_ACTIONS = ("pull", "push", "delete", "*")


@dataclass(frozen=True)
class TokenRequest:
    """One request the token server answered."""

    method: str
    path: str
    query: dict[str, list[str]]
    scopes: tuple[str, ...]
    authorization: bool  # an Authorization header was sent
    user: str | None  # the authenticated user; None when anonymous or refused
    status: int


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class _Signer:
    """An EC P-256 key and a self-signed certificate the registry is told to trust."""

    def __init__(self) -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "model-agent test token CA")])
        now = datetime.datetime.now(datetime.UTC)
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,  # distribution refuses a leaf without it
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self._key, hashes.SHA256())
        )
        self.certificate_pem = self.certificate.public_bytes(serialization.Encoding.PEM)

    def jwt(self, claims: Mapping[str, Any]) -> str:
        der = self.certificate.public_bytes(serialization.Encoding.DER)
        header = {"typ": "JWT", "alg": "ES256", "x5c": [base64.b64encode(der).decode()]}
        signing_input = (
            f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        )
        r, s = decode_dss_signature(
            self._key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        )
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")  # JWS wants raw r||s
        return f"{signing_input}.{_b64url(signature)}"


class _TokenHandler(QuietHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self._answer(self.headers.get("Authorization"), form=None)

    def do_POST(self) -> None:
        form = urllib.parse.parse_qs(self.read_body().decode())
        self._answer(self.headers.get("Authorization"), form=form)

    def _answer(self, authorization: str | None, form: dict[str, list[str]] | None) -> None:
        server: TokenServer = self.server.owner  # type: ignore[attr-defined]
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        status, body, user, scopes = server.handle(url.path, query, authorization, form)
        record = TokenRequest(
            self.command, url.path, query, tuple(scopes), authorization is not None, user, status
        )
        server.record(record)  # before answering: the client may look as soon as it has it
        headers = {"Content-Type": "application/json"}
        if status == 401:
            headers["WWW-Authenticate"] = 'Basic realm="model-agent-test-token"'
        self.send_simple(status, json.dumps(body).encode(), headers)


class TokenServer(BackgroundServer):
    """Issues registry tokens; ``users`` maps user name to password.

    Authenticated users get every requested action on any repository (pull only for
    ``readonly_users``) and ``registry:catalog:*``; anonymous clients get ``pull`` on the
    ``anonymous_pull`` repositories and nothing else, so the registry still answers 401.
    Wrong credentials get 401 from the token server itself.
    """

    def __init__(
        self,
        users: Mapping[str, str],
        *,
        readonly_users: Collection[str] = (),
        anonymous_pull: Collection[str] = (),
        expires_in: int = 300,
        service: str = SERVICE,
        issuer: str = ISSUER,
        host: str = "127.0.0.1",
    ) -> None:
        super().__init__(_TokenHandler, host)
        self.users = dict(users)
        self.readonly_users = frozenset(readonly_users)
        self.anonymous_pull = frozenset(anonymous_pull)
        self.expires_in = expires_in
        self.service = service
        self.issuer = issuer
        self.realm = f"{self.url}/token"
        self._signer = _Signer()
        self.certificate_pem = self._signer.certificate_pem
        self._lock = threading.Lock()
        self._requests: list[TokenRequest] = []
        self._refresh_tokens: dict[str, str] = {}

    @property
    def requests(self) -> list[TokenRequest]:
        """Every request so far, oldest first (a copy)."""
        with self._lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    def record(self, request: TokenRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def issue_refresh_token(self, user: str) -> str:
        """An OAuth2 refresh token for ``user``: what a CRI ``identity_token`` carries."""
        token = secrets.token_urlsafe(24)
        with self._lock:
            self._refresh_tokens[token] = user
        return token

    def issue_token(self, user: str | None, scopes: Collection[str]) -> str:
        """A signed registry token granting ``user`` what this server would grant."""
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": user or "",
            "aud": self.service,
            "exp": now + self.expires_in,
            "nbf": now - 10,
            "iat": now,
            "jti": secrets.token_hex(16),
            "access": [grant for scope in scopes if (grant := self._grant(user, scope))],
        }
        return self._signer.jwt(claims)

    def handle(
        self,
        path: str,
        query: dict[str, list[str]],
        authorization: str | None,
        form: dict[str, list[str]] | None,
    ) -> tuple[int, dict[str, Any], str | None, list[str]]:
        """(status, JSON body, user, scopes) for one request; runs on a handler thread."""
        if path != "/token":
            return 404, {"errors": [{"code": "NOT_FOUND"}]}, None, []
        if form is None:
            scopes = query.get("scope", [])
            user = self._basic_user(authorization)
            if user is None and authorization is not None:
                return 401, {"details": "invalid credentials"}, None, scopes
            return 200, self._token_body(user, scopes), user, scopes
        scopes = " ".join(form.get("scope", [])).split()
        user, refresh = self._oauth_user(form)
        if user is None:
            return 401, {"error": "invalid_grant"}, None, scopes
        body = self._token_body(user, scopes)
        del body["token"]  # the OAuth2 answer carries only access_token
        if refresh:
            body["refresh_token"] = self.issue_refresh_token(user)
        return 200, body, user, scopes

    def _token_body(self, user: str | None, scopes: Collection[str]) -> dict[str, Any]:
        token = self.issue_token(user, scopes)
        issued_at = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return {
            "token": token,
            "access_token": token,
            "expires_in": self.expires_in,
            "issued_at": issued_at,
        }

    def _basic_user(self, authorization: str | None) -> str | None:
        if authorization is None or not authorization.startswith("Basic "):
            return None
        try:
            user, _, password = base64.b64decode(authorization[6:]).decode().partition(":")
        except ValueError:
            return None
        return user if self.users.get(user) == password else None

    def _oauth_user(self, form: dict[str, list[str]]) -> tuple[str | None, bool]:
        """(user, whether to issue a refresh token) for an OAuth2 form."""
        grant_type = form.get("grant_type", [""])[0]
        if grant_type == "password":
            user = form.get("username", [""])[0]
            password = form.get("password", [""])[0]
            offline = form.get("access_type", [""])[0] == "offline"
            return (user if self.users.get(user) == password else None), offline
        if grant_type == "refresh_token":
            with self._lock:
                return self._refresh_tokens.get(form.get("refresh_token", [""])[0]), False
        return None, False

    def _grant(self, user: str | None, scope: str) -> dict[str, Any] | None:
        kind, _, rest = scope.partition(":")
        name, _, actions_text = rest.rpartition(":")
        requested = [a for a in actions_text.split(",") if a]
        if kind == "repository":
            if user is None:
                allowed: Collection[str] = ("pull",) if name in self.anonymous_pull else ()
            elif user in self.readonly_users:
                allowed = ("pull",)
            else:
                allowed = ALL_ACTIONS
        elif kind == "registry":
            allowed = requested if user is not None else ()
        else:
            allowed = ()
        granted = [a for a in requested if a in allowed]
        return {"type": kind, "name": name, "actions": granted} if granted else None

    def registry_config(self, rootcertbundle: str) -> dict[str, Any]:
        """The registry's ``auth`` section; the certificate must be written to the path."""
        return {
            "token": {
                "realm": self.realm,
                "service": self.service,
                "issuer": self.issuer,
                "rootcertbundle": rootcertbundle,
            }
        }
