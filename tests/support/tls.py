"""HTTPS test doubles: a self-signed certificate, and a registry front that only challenges.

``ChallengingRegistry`` is an ``https://127.0.0.1:<port>`` server that answers every request
``401`` with the ``WWW-Authenticate`` header it was given and records what it received: the
piece a test needs to see what a client does with a challenge from an https registry
(e.g. one naming a plain-http token realm) without a full TLS registry.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
import threading
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support._http import BackgroundServer, QuietHandler


def self_signed(directory: str, host: str = "127.0.0.1") -> tuple[str, str]:
    """``(cert.pem, key.pem)`` written to ``directory``: a CA-less cert valid for ``host``."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path = os.path.join(directory, "tls-cert.pem")
    key_path = os.path.join(directory, "tls-key.pem")
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return cert_path, key_path


@dataclass(frozen=True)
class SeenRequest:
    method: str
    path: str
    authorization: str | None


class _ChallengeHandler(QuietHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        owner: ChallengingRegistry = self.server.owner  # type: ignore[attr-defined]
        owner.record(SeenRequest(self.command, self.path, self.headers.get("Authorization")))
        self.send_simple(401, b'{"errors":[{"code":"UNAUTHORIZED"}]}', owner.headers)

    do_HEAD = do_GET


class ChallengingRegistry(BackgroundServer):
    """HTTPS on 127.0.0.1; every request gets ``401`` with ``WWW-Authenticate: challenge``."""

    def __init__(self, directory: str, challenge: str) -> None:
        super().__init__(_ChallengeHandler, "127.0.0.1")
        self.cert_path, key_path = self_signed(directory)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert_path, key_path)
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.url = f"https://{self.host}"
        self.headers = {"WWW-Authenticate": challenge, "Content-Type": "application/json"}
        self._lock = threading.Lock()
        self._requests: list[SeenRequest] = []

    @property
    def requests(self) -> list[SeenRequest]:
        with self._lock:
            return list(self._requests)

    def record(self, request: SeenRequest) -> None:
        with self._lock:
            self._requests.append(request)
