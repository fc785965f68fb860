"""Which token realms a registry's 401 may send its credentials to (the checks that need a
registry off this node, which the integration tests cannot start: they only reach 127.0.0.1)."""

from __future__ import annotations

import pytest

from agent.errors import Unauthenticated
from agent.images.registry import Endpoint, _check_realm


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
