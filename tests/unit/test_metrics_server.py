"""The ``/metrics`` endpoint on 127.0.0.1: negotiation, gzip, scrape auth, TLS, config checks.

A real ``MetricsServer`` over a registry with one counter, fetched with urllib; TLS with
a certificate authority and server/client certificates made here (``cryptography``).
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import socket
import ssl
import urllib.error
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from agent.config import MetricsSection
from agent.errors import ConfigError
from agent.metrics import MetricsServer
from agent.metrics.exposition import Family, FamilyBuilder, LabelCache
from tests.support.scrape import fetch, scrape

Start = Callable[..., Awaitable[MetricsServer]]


@pytest.fixture
async def start(tmp_path) -> AsyncIterator[Start]:
    servers: list[MetricsServer] = []

    async def start(source: Any = None, **keys: Any) -> MetricsServer:
        registry = CollectorRegistry()
        hits = Counter("demo_hits", "Hits.", ["path"], registry=registry)
        for i in range(200):  # a body big enough to be worth compressing
            hits.labels(f"/p{i}").inc(i)
        server = MetricsServer(
            registry, MetricsSection(address="127.0.0.1:0", **keys), source=source
        )
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()


def write(path: str, text: str | bytes) -> str:
    with open(path, "wb") as f:
        f.write(text.encode() if isinstance(text, str) else text)
    return path


async def get(url: str, **kwargs: Any) -> tuple[int, dict[str, str], bytes]:
    return await asyncio.to_thread(fetch, url, **kwargs)


class Source:
    """A scrape source with one family of its own, counting its refreshes."""

    def __init__(self) -> None:
        self.refreshed = 0

    async def refresh(self) -> None:
        self.refreshed += 1

    def families(self) -> list[Family]:
        cache = LabelCache()
        energy = FamilyBuilder("demo_energy_joules_total", "Energy.", "counter", ("gpu",), cache)
        energy.add(("0",), 12.5)
        odd = FamilyBuilder("demo_odd", 'A "quoted"\nhelp.', "unknown", ("v",), cache)
        odd.add(('a"b\\c\nd',), 1)
        return [energy.family, odd.family]


async def test_text_by_default_openmetrics_when_asked_and_gzip(start):
    source = Source()
    server = await start(source)
    status, headers, body = await get(server.url)
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = body.decode()
    assert 'demo_hits_total{path="/p7"} 7.0' in text
    assert "# TYPE demo_energy_joules_total counter\n" in text
    assert "# TYPE demo_odd untyped\n" in text
    assert "Content-Encoding" not in headers
    parsed = {f.name: f for f in text_string_to_metric_families(text)}
    assert parsed["demo_energy_joules"].samples[0].value == 12.5
    assert parsed["demo_odd"].samples[0].labels == {"v": 'a"b\\c\nd'}
    accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
    status, headers, body = await get(server.url, headers={"Accept": accept})
    assert headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
    text = body.decode()
    assert text.endswith("# EOF\n") and text.count("# EOF") == 1
    assert "# TYPE demo_energy_joules counter\ndemo_energy_joules_total" in text
    om = {f.name: f for f in openmetrics_families(text)}  # OpenMetrics' own, stricter parser
    assert om["demo_energy_joules"].type == "counter" and om["demo_odd"].type == "unknown"
    assert om["demo_hits"].samples[0].value == 0
    status, headers, body = await get(server.url, headers={"Accept-Encoding": "gzip"})
    assert headers["Content-Encoding"] == "gzip"  # fetch() decompressed it
    assert 'demo_hits_total{path="/p199"} 199.0' in body.decode()
    assert source.refreshed == 3  # each scrape gathered first
    metrics = await asyncio.to_thread(scrape, server.url)
    assert metrics.value("model_agent_metrics_requests_total", code="200") == 3


@pytest.mark.parametrize(
    ("accept_encoding", "gzipped"),
    [
        ("gzip;q=0", False),
        ("gzip; q=0.000, identity", False),
        ("*;q=0.5", True),
        ("*, gzip;q=0", False),  # named beats the wildcard
        ("*;q=0", False),
        ("deflate, GZIP;q=0.2", True),
        ("br", False),
    ],
)
async def test_gzip_follows_the_q_values_of_accept_encoding(start, accept_encoding, gzipped):
    server = await start()
    status, headers, body = await get(server.url, headers={"Accept-Encoding": accept_encoding})
    assert status == 200 and ("Content-Encoding" in headers) == gzipped
    assert 'demo_hits_total{path="/p199"} 199.0' in body.decode()


async def test_bearer_token_is_required_and_rotates_with_its_file(start, tmp_path):
    token = write(str(tmp_path / "token"), "s3cret-token\n")
    server = await start(bearer_token_file=token)
    status, headers, _ = await get(server.url)
    assert status == 401 and headers["WWW-Authenticate"] == 'Bearer realm="model-agent"'
    status, _, _ = await get(server.url, headers={"Authorization": "Bearer wrong"})
    assert status == 401
    status, _, body = await get(server.url, headers={"Authorization": "Bearer s3cret-token"})
    assert status == 200 and b"demo_hits_total" in body
    write(token + ".new", "rotated")
    os.replace(token + ".new", token)
    assert (await get(server.url, headers={"Authorization": "Bearer s3cret-token"}))[0] == 401
    assert (await get(server.url, headers={"Authorization": "Bearer rotated"}))[0] == 200
    # An unreadable file later keeps the last good token.
    os.unlink(token)
    assert (await get(server.url, headers={"Authorization": "Bearer rotated"}))[0] == 200
    metrics = await asyncio.to_thread(
        scrape, server.url, headers={"Authorization": "Bearer rotated"}
    )
    assert metrics.value("model_agent_metrics_requests_total", code="401") == 3


async def test_basic_auth(start, tmp_path):
    user = write(str(tmp_path / "user"), "prometheus")
    password = write(str(tmp_path / "password"), "pa:ss")
    server = await start(basic_auth_username_file=user, basic_auth_password_file=password)
    status, headers, _ = await get(server.url)
    assert status == 401 and headers["WWW-Authenticate"] == 'Basic realm="model-agent"'
    assert (await get(server.url, basic=("prometheus", "pa:ss")))[0] == 200
    assert (await get(server.url, basic=("prometheus", "pa:sss")))[0] == 401
    assert (await get(server.url, basic=("other", "pa:ss")))[0] == 401
    assert (await get(server.url, headers={"Authorization": "Basic !!notbase64"}))[0] == 401


class Pki:
    """A CA, and certificates it signs, written as PEM files."""

    def __init__(self, directory: str) -> None:
        self.dir = directory
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
        self.cert = self._build(name, name, self.key.public_key(), ca=True)
        self.ca_file = write(
            os.path.join(directory, "ca.pem"), self.cert.public_bytes(serialization.Encoding.PEM)
        )

    def _build(self, subject: x509.Name, issuer: x509.Name, public: Any, *, ca: bool) -> Any:
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False,
            )
        return builder.sign(self.key, hashes.SHA256())

    def issue(self, name: str) -> tuple[str, str]:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        cert = self._build(subject, self.cert.subject, key.public_key(), ca=False)
        cert_file = write(
            os.path.join(self.dir, f"{name}.pem"), cert.public_bytes(serialization.Encoding.PEM)
        )
        key_file = write(
            os.path.join(self.dir, f"{name}-key.pem"),
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )
        return cert_file, key_file


async def test_tls_with_client_certificates_and_certificate_rotation(start, tmp_path):
    pki = Pki(str(tmp_path))
    cert, key = pki.issue("server")
    server = await start(tls_cert_file=cert, tls_key_file=key, tls_client_ca_file=pki.ca_file)
    assert server.url.startswith("https://127.0.0.1:")
    client_cert, client_key = pki.issue("prometheus")
    context = ssl.create_default_context(cafile=pki.ca_file)
    context.load_cert_chain(client_cert, client_key)
    status, _, body = await get(server.url, context=context)
    assert status == 200 and b"demo_hits_total" in body
    anonymous = ssl.create_default_context(cafile=pki.ca_file)
    # The handshake demands a client certificate: refused (TLS 1.3 says so after it).
    with pytest.raises((ssl.SSLError, ConnectionError, urllib.error.URLError)):
        await get(server.url, context=anonymous)
    # A new certificate in place of the old one serves from the next handshake on.
    host, port = server.url.removeprefix("https://").split("/")[0].split(":")
    first = await asyncio.to_thread(peer_certificate, host, int(port), context)
    new_cert, new_key = pki.issue("server2")
    os.replace(new_key, key)
    os.replace(new_cert, cert)
    assert (await get(server.url, context=context))[0] == 200  # this request reloads
    second = await asyncio.to_thread(peer_certificate, host, int(port), context)
    assert first != second


def peer_certificate(host: str, port: int, context: ssl.SSLContext) -> bytes:
    with (
        socket.create_connection((host, port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der
    return der


async def test_files_that_cannot_be_read_stop_the_start(start, tmp_path):
    with pytest.raises(ConfigError, match=r"metrics\.bearer_token_file: cannot read"):
        await start(bearer_token_file=str(tmp_path / "missing"))
    empty = write(str(tmp_path / "empty"), "\n")
    with pytest.raises(ConfigError, match="is empty"):
        await start(bearer_token_file=empty)
    bad = write(str(tmp_path / "bad.pem"), "not a certificate")
    with pytest.raises(ConfigError, match=r"metrics\.tls_cert_file"):
        await start(tls_cert_file=bad, tls_key_file=bad)


def test_config_checks_pairs_and_paths():
    with pytest.raises(ConfigError, match="set both or neither"):
        MetricsSection(tls_cert_file="/etc/cert.pem")
    with pytest.raises(ConfigError, match="set both or neither"):
        MetricsSection(basic_auth_password_file="/etc/p")
    with pytest.raises(ConfigError, match="not an absolute path"):
        MetricsSection(bearer_token_file="token")
    with pytest.raises(ConfigError, match="needs tls_cert_file"):
        MetricsSection(tls_client_ca_file="/etc/ca.pem")
    with pytest.raises(ConfigError, match="must not be negative"):
        MetricsSection(min_collect_interval_seconds=-1)
    assert MetricsSection(bearer_token_file="/etc/t").bearer_token_file == "/etc/t"
