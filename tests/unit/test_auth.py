"""Registry auth pieces: challenges, credentials, token answers and caching."""

from __future__ import annotations

import base64
import json
import time

import pytest

from agent.errors import InvalidArgument
from agent.images.auth import (
    Credentials,
    TokenCache,
    load_credentials_file,
    parse_challenge,
    token_from_response,
)


def test_bearer_challenge():
    header = (
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:samalba/my-app:pull,push"'
    )
    challenge = parse_challenge(header)
    assert challenge is not None
    assert challenge.scheme == "bearer"
    assert dict(challenge.params) == {
        "realm": "https://auth.docker.io/token",
        "service": "registry.docker.io",
        "scope": "repository:samalba/my-app:pull,push",
    }


def test_other_challenges():
    basic = parse_challenge('Basic realm="Registry Realm"')
    assert basic is not None and basic.scheme == "basic"
    assert basic.params["realm"] == "Registry Realm"
    unquoted = parse_challenge("bearer realm=http://127.0.0.1:1/token, service=x")
    assert unquoted is not None and unquoted.params == {
        "realm": "http://127.0.0.1:1/token",
        "service": "x",
    }
    assert parse_challenge("Negotiate abc") is None
    assert parse_challenge("") is None


def test_credentials_from_cri():
    auth = base64.b64encode(b"user:pa:ss").decode()
    assert Credentials.from_cri(auth=auth) == Credentials("user", "pa:ss")
    assert Credentials.from_cri() is None
    assert Credentials.from_cri(registry_token="t") == Credentials(registry_token="t")
    with pytest.raises(InvalidArgument, match="base64"):
        Credentials.from_cri(auth="***")
    with pytest.raises(InvalidArgument, match="base64"):
        Credentials.from_cri(auth=base64.b64encode(b"no-colon").decode())
    a, b = Credentials("u", "s3cret-one"), Credentials("u", "s3cret-two")
    assert a.fingerprint() != b.fingerprint()
    assert "s3cret" not in a.fingerprint()


def test_token_answers():
    assert token_from_response(b'{"token": "t", "expires_in": 300}') == ("t", 300.0)
    assert token_from_response(b'{"access_token": "a"}') == ("a", 60.0)
    with pytest.raises(ValueError, match="without a token"):
        token_from_response(b"{}")
    with pytest.raises(ValueError, match="not JSON"):
        token_from_response(b"<html>")


def test_token_cache_expires(monkeypatch):
    cache = TokenCache()
    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    cache.put(("realm", "scope"), "token", 60)
    assert cache.get(("realm", "scope")) == "token"
    assert cache.get(("realm", "other")) is None
    now[0] += 55  # renewed a little before the server's expiry
    assert cache.get(("realm", "scope")) is None


def test_credentials_file(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(
        json.dumps(
            {
                "auths": {
                    "https://index.docker.io/v1/": {"auth": base64.b64encode(b"hub:pw").decode()},
                    "127.0.0.1:5000": {"username": "u", "password": "p"},
                    "empty.example": {},
                }
            }
        )
    )
    creds = load_credentials_file(str(path))
    assert creds == {
        "registry-1.docker.io": Credentials("hub", "pw"),
        "127.0.0.1:5000": Credentials("u", "p"),
    }
    assert load_credentials_file(str(tmp_path / "missing.json")) == {}
    path.write_text("{oops")
    with pytest.raises(InvalidArgument, match="credentials file"):
        load_credentials_file(str(path))
