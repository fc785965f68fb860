"""Who may scrape ``/metrics``: TLS (server and optional client certificates) and scrape auth.

Credentials and certificates live in files (the chart's installer writes them from a
Secret) and are re-read when a file changes, so rotating a token or a certificate
needs no restart: a changed certificate applies to the next TLS handshake, a
changed token to the next request. A file that cannot be read at start is a
``ConfigError`` naming its key; one that becomes unreadable later keeps the last
good value and logs why. Imports only ``config`` and ``errors``.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import os
import ssl
import threading
from dataclasses import dataclass

from agent.config import MetricsSection
from agent.errors import ConfigError

__all__ = ["ScrapeAuth", "TlsFiles", "Verdict"]

log = logging.getLogger(__name__)


def _stamp(path: str) -> tuple[int, int, int]:
    st = os.stat(path)
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class _WatchedFile:
    """A small secret file, re-read when its inode, size or mtime changes."""

    def __init__(self, key: str, path: str) -> None:
        self.key = key
        self.path = path
        try:
            self._stamp = _stamp(path)
            self._value = self._read()
        except OSError as exc:
            raise ConfigError(f"metrics.{key}: cannot read {path}: {exc.strerror}") from None

    def _read(self) -> bytes:
        with open(self.path, "rb") as f:
            return f.read().strip()

    def value(self) -> bytes:
        try:
            stamp = _stamp(self.path)
            if stamp != self._stamp:
                self._value, self._stamp = self._read(), stamp
                log.info("metrics: re-read %s (%s)", self.path, self.key)
        except OSError as exc:
            log.warning("metrics: keeping the previous %s: %s: %s", self.key, self.path, exc)
        return self._value


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    #: ``WWW-Authenticate`` challenge for a refused request
    challenge: str = ""


class ScrapeAuth:
    """Bearer token and/or basic auth; with neither configured every request is allowed."""

    def __init__(self, settings: MetricsSection) -> None:
        self._token = (
            _WatchedFile("bearer_token_file", settings.bearer_token_file)
            if settings.bearer_token_file
            else None
        )
        self._user: _WatchedFile | None = None
        self._password: _WatchedFile | None = None
        if settings.basic_auth_username_file:
            self._user = _WatchedFile("basic_auth_username_file", settings.basic_auth_username_file)
            self._password = _WatchedFile(
                "basic_auth_password_file", settings.basic_auth_password_file
            )
        if self._token is not None and not self._token.value():
            raise ConfigError(f"metrics.bearer_token_file: {self._token.path} is empty")

    @property
    def enabled(self) -> bool:
        return self._token is not None or self._user is not None

    def check(self, authorization: str) -> Verdict:
        """Judge one request by its ``Authorization`` header (constant-time comparisons)."""
        if not self.enabled:
            return Verdict(True)
        scheme, _, credentials = authorization.strip().partition(" ")
        scheme = scheme.lower()
        credentials = credentials.strip()
        if scheme == "bearer" and self._token is not None:
            if hmac.compare_digest(credentials.encode(), self._token.value()):
                return Verdict(True)
        elif scheme == "basic" and self._user is not None and self._password is not None:
            try:
                decoded = base64.b64decode(credentials, validate=True)
            except (binascii.Error, ValueError):
                decoded = b""
            user, sep, password = decoded.partition(b":")
            user_ok = hmac.compare_digest(user, self._user.value())
            password_ok = hmac.compare_digest(password, self._password.value())
            if sep and user_ok and password_ok:
                return Verdict(True)
        challenges = []
        if self._token is not None:
            challenges.append('Bearer realm="model-agent"')
        if self._user is not None:
            challenges.append('Basic realm="model-agent"')
        return Verdict(False, ", ".join(challenges))


class TlsFiles:
    """The server's ``SSLContext``, with its certificate re-loaded when the files change."""

    def __init__(self, settings: MetricsSection) -> None:
        self._cert = settings.tls_cert_file
        self._key = settings.tls_key_file
        self._lock = threading.Lock()
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        if settings.tls_client_ca_file:
            try:
                self.context.load_verify_locations(cafile=settings.tls_client_ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(
                    f"metrics.tls_client_ca_file: {settings.tls_client_ca_file}: {exc}"
                ) from None
            self.context.verify_mode = ssl.CERT_REQUIRED
        try:
            self._stamps = self._load()
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"metrics.tls_cert_file/tls_key_file: {self._cert}, {self._key}: {exc}"
            ) from None

    def _load(self) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
        stamps = (_stamp(self._cert), _stamp(self._key))
        self.context.load_cert_chain(self._cert, self._key)
        return stamps

    def refresh(self) -> None:
        """Load the certificate again if either file changed (cheap: two stats)."""
        with self._lock:
            try:
                if (_stamp(self._cert), _stamp(self._key)) == self._stamps:
                    return
                self._stamps = self._load()
                log.info("metrics: reloaded the TLS certificate %s", self._cert)
            except (OSError, ssl.SSLError) as exc:
                # A rotation that writes the key and the certificate one after the other
                # is briefly inconsistent: keep serving the previous pair.
                log.warning("metrics: keeping the previous TLS certificate: %s", exc)
