"""Which token realms a registry's 401 may send its credentials to (the checks that need a
registry off this node, which the integration tests cannot start: they only reach 127.0.0.1)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl

import pytest

from agent.config import ImageSection, RegistryHost
from agent.errors import Unauthenticated
from agent.images.auth import Challenge, Credentials
from agent.images.registry import Endpoint, RegistryClient, _check_realm


def endpoint(base_url: str) -> Endpoint:
    return Endpoint(base_url=base_url, mirror=False, ssl=True)


@pytest.mark.parametrize(
    ("registry", "realm"),
    [
        ("https://registry.example.com", "https://auth.example.com/token"),
        ("https://registry.example.com", "https://10.0.0.5/token"),  # a private address
        ("http://127.0.0.1:5000", "http://127.0.0.1:5001/token"),  # a local registry, local auth
        ("https://localhost:5000", "https://[::1]:5001/token"),
    ],
)
def test_realms_a_registry_may_name(registry, realm):
    try:
        _check_realm(endpoint(registry), realm)
    except Unauthenticated as exc:
        raise AssertionError(f"{realm} was refused for {registry}: {exc}") from None


@pytest.mark.parametrize(
    ("registry", "realm", "why"),
    [
        ("https://registry.example.com", "http://auth.example.com/token", "plain-http"),
        # A cloud metadata service: credentials and a token request must never go there.
        ("https://registry.example.com", "http://169.254.169.254/token", "plain-http"),
        ("https://registry.example.com", "https://169.254.169.254/token", "link-local"),
        ("https://registry.example.com", "https://[fe80::1]/token", "link-local"),
        ("http://registry.example.com:5000", "http://169.254.169.254/token", "link-local"),
        # A remote registry naming something on this node's loopback.
        ("https://registry.example.com", "https://127.0.0.1:8080/token", "loopback"),
        ("https://registry.example.com", "https://[::1]/token", "loopback"),
        ("https://registry.example.com", "ftp://auth.example.com/token", "usable realm"),
        ("https://registry.example.com", "/token", "usable realm"),
    ],
)
def test_realms_that_are_refused(registry, realm, why):
    with pytest.raises(Unauthenticated, match=why):
        _check_realm(endpoint(registry), realm)


class _TokenServer:
    """A stand-in session: records the TLS setting each token request was made with."""

    def __init__(self) -> None:
        self.ssl: list[object] = []

    @contextlib.asynccontextmanager
    async def _answer(self):
        class Content:
            async def read(self, n):
                return b'{"token": "t"}'

        class Response:
            status = 200
            headers: dict[str, str] = {}
            content = Content()

        yield Response()

    def get(self, url, **kwargs):
        self.ssl.append(kwargs["ssl"])
        return self._answer()

    post = get


def _token_ssl(registry: str, realm: str, settings: ImageSection | None = None) -> object:
    """The ``ssl`` a bearer challenge from an ``insecure_skip_verify`` registry got."""
    client = RegistryClient(settings or ImageSection(), read_timeout=10)
    server = _TokenServer()
    client._session = server  # type: ignore[assignment]
    endpoint = Endpoint(base_url=registry, mirror=False, ssl=False)
    challenge = Challenge("bearer", {"realm": realm, "service": "s"})
    for credentials in (Credentials(username="u", password="p"), Credentials(identity_token="r")):
        header, _ = asyncio.run(
            client._authenticate(endpoint, challenge, "repo:a:pull", credentials)
        )
        assert header == "Bearer t"
    assert len(set(map(repr, server.ssl))) == 1, server.ssl  # GET and refresh-token POST agree
    return server.ssl[0]


@pytest.mark.parametrize(
    "realm",
    ["https://registry.example.com/token", "https://registry.example.com:443/token"],
)
def test_a_realm_on_the_registry_itself_keeps_its_tls_settings(realm):
    assert _token_ssl("https://registry.example.com", realm) is False


@pytest.mark.parametrize(
    "realm",
    [
        "https://auth.example.com/token",  # another host
        "https://registry.example.com:8443/token",  # another port
    ],
)
def test_a_realm_elsewhere_is_verified_by_default(realm):
    """Basic credentials must not go over TLS nobody checked because the registry's is."""
    assert _token_ssl("https://registry.example.com", realm) is True


def test_a_realm_elsewhere_keeps_the_registrys_ca_but_not_its_skip_verify():
    """A private CA that signs the registry usually signs its auth server too."""
    client = RegistryClient(ImageSection(), read_timeout=10)
    context = ssl.create_default_context()
    endpoint = Endpoint(base_url="https://registry.corp", mirror=False, ssl=context)
    assert client._realm_ssl(endpoint, "https://gitlab.corp/jwt/auth") is context
    skipping = Endpoint(base_url="https://registry.corp", mirror=False, ssl=False)
    assert client._realm_ssl(skipping, "https://gitlab.corp/jwt/auth") is True


@pytest.mark.parametrize("key", ["auth.example.com", "auth.example.com:443"])
def test_a_realm_host_is_found_with_or_without_its_default_port(key):
    settings = ImageSection(registries={key: RegistryHost(insecure_skip_verify=True)})
    client = RegistryClient(settings, read_timeout=10)
    endpoint = Endpoint(base_url="https://registry.example.com", mirror=False, ssl=True)
    assert client._realm_ssl(endpoint, "https://auth.example.com/token") is False
    assert client._realm_ssl(endpoint, "https://auth.example.com:443/token") is False


def test_an_ipv6_realm_host_is_found_as_it_is_keyed():
    settings = ImageSection(registries={"[fd00::1]:5000": RegistryHost(insecure_skip_verify=True)})
    client = RegistryClient(settings, read_timeout=10)
    endpoint = Endpoint(base_url="https://registry.example.com", mirror=False, ssl=True)
    assert client._realm_ssl(endpoint, "https://[fd00::1]:5000/token") is False


def test_a_realm_elsewhere_gets_its_own_hosts_tls_settings():
    settings = ImageSection(
        registries={
            "registry.example.com": RegistryHost(insecure_skip_verify=True),
            "auth.example.com": RegistryHost(insecure_skip_verify=True),
        }
    )
    assert (
        _token_ssl("https://registry.example.com", "https://auth.example.com/t", settings) is False
    )
