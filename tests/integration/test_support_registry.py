"""The registry test doubles work: real pushes and pulls over plain HTTP, token and basic auth."""

from __future__ import annotations

import base64
import gzip
import io
import json
import os
import tarfile
import urllib.parse
from typing import Any

import pytest
import zstandard

from tests.support.images import ACCEPT_ALL, Platform, build_index, busybox_image
from tests.support.layers import Layer, sha256_digest
from tests.support.push import RegistryClient, request
from tests.support.registry import Registry, running_registry

pytestmark = pytest.mark.integration

USERS = {"tester": "s3cret-pw", "reader": "read-only-pw"}


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    with running_registry(tmp_path_factory.mktemp("plain")) as registry:
        yield registry


@pytest.fixture(scope="module")
def token_registry(tmp_path_factory):
    with running_registry(
        tmp_path_factory.mktemp("token"),
        auth="token",
        users=USERS,
        readonly_users={"reader"},
        anonymous_pull={"public/busybox"},
    ) as registry:
        yield registry


@pytest.fixture(scope="module")
def pushed_private(token_registry):
    """busybox in a repository only authenticated users may pull."""
    client = RegistryClient(token_registry.url, "tester", USERS["tester"])
    return client.push_image("private/busybox", busybox_image())


def unpacked(layer: Layer, blob: bytes) -> bytes:
    if layer.compression == "gzip":
        return gzip.decompress(blob)
    if layer.compression == "zstd":
        return zstandard.ZstdDecompressor().decompress(blob)
    return blob


def jwt_part(token: str, index: int) -> dict[str, Any]:
    part = token.split(".")[index]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def test_registry_listens_on_loopback_and_stops_for_good(short_dir):
    registry = Registry(short_dir)
    with registry:
        assert registry.host.startswith("127.0.0.1:")
        assert registry.url == f"http://{registry.host}"
        assert request("GET", f"{registry.url}/v2/").status == 200
        pid = registry.pid
        assert pid is not None
    assert registry.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


@pytest.mark.parametrize(
    ("flavor", "compression"),
    [("oci", "gzip"), ("docker", "gzip"), ("oci", "zstd"), ("oci", "none"), ("docker", "none")],
)
def test_pushed_image_reads_back(registry, flavor, compression):
    client = RegistryClient(registry.url)
    image = busybox_image(flavor, compression, user="1000", entrypoint=["/bin/sh", "-c"])
    pushed = client.push_image(f"support/busybox-{flavor}-{compression}", image, tag="v1")
    assert pushed.ref() == f"{registry.host}/support/busybox-{flavor}-{compression}:v1"
    assert pushed.ref_by_digest().endswith(f"@{image.manifest_digest}")

    manifest = client.get_manifest(pushed.name, "v1", ACCEPT_ALL)
    assert manifest.status == 200 and manifest.body == image.manifest
    assert manifest.headers["Content-Type"] == image.media_type
    assert manifest.headers["Docker-Content-Digest"] == pushed.digest
    config = client.get_blob(pushed.name, pushed.image_id)
    assert sha256_digest(config.body) == pushed.image_id
    assert json.loads(config.body)["config"]["User"] == "1000"

    (layer,) = image.layers
    blob = client.get_blob(pushed.name, layer.digest)
    assert blob.status == 200 and sha256_digest(blob.body) == layer.digest
    tar = unpacked(layer, blob.body)
    assert sha256_digest(tar) == layer.diff_id
    with tarfile.open(fileobj=io.BytesIO(tar)) as reader:
        assert reader.getmember("bin/sh").linkname == "busybox"

    part = client.get_blob(pushed.name, layer.digest, "bytes=100-199")
    assert part.status == 206 and part.body == layer.blob[100:200]
    assert part.headers["Content-Range"] == f"bytes 100-199/{layer.size}"
    assert os.path.exists(registry.blob_path(layer.digest))


@pytest.mark.parametrize("flavor", ["oci", "docker"])
def test_pushed_index_lists_platform_manifests(registry, flavor):
    client = RegistryClient(registry.url)
    arm = Platform(architecture="arm64", variant="v8")
    index = build_index(
        [busybox_image(flavor), busybox_image(flavor, platform=arm, cmd=["echo", "arm"])],
        flavor=flavor,
    )
    pushed = client.push_index(f"support/multi-{flavor}", index)
    got = client.get_manifest(pushed.name, "latest", ACCEPT_ALL)
    assert got.status == 200 and got.body == index.manifest
    assert got.headers["Content-Type"] == index.media_type
    assert got.headers["Docker-Content-Digest"] == pushed.digest
    for image in index.images:
        child = client.get_manifest(pushed.name, image.manifest_digest, ACCEPT_ALL)
        assert child.status == 200 and child.headers["Content-Type"] == image.media_type


def test_manifests_can_be_deleted(registry):
    client = RegistryClient(registry.url)
    pushed = client.push_image("support/deleted", busybox_image(labels={"x": "y"}))
    assert client.delete_manifest(pushed.name, pushed.digest).status == 202
    assert client.get_manifest(pushed.name, pushed.digest, ACCEPT_ALL).status == 404


def test_token_registry_refuses_anonymous_pull(token_registry, pushed_private):
    manifest_url = f"{token_registry.url}/v2/{pushed_private.name}/manifests/latest"
    challenge = request("GET", manifest_url, {"Accept": ACCEPT_ALL})
    assert challenge.status == 401
    server = token_registry.token_server
    assert challenge.headers["WWW-Authenticate"] == (
        f'Bearer realm="{server.realm}",service="{server.service}",'
        f'scope="repository:{pushed_private.name}:pull"'
    )
    scope = f"repository:{pushed_private.name}:pull"
    query = urllib.parse.urlencode({"service": server.service, "scope": scope})
    answer = request("GET", f"{server.realm}?{query}")
    assert answer.status == 200
    body = json.loads(answer.body)
    assert body["token"] == body["access_token"] and body["expires_in"] == 300
    assert jwt_part(body["token"], 0)["alg"] == "ES256"
    assert jwt_part(body["token"], 1)["access"] == []
    bearer = {"Authorization": f"Bearer {body['token']}", "Accept": ACCEPT_ALL}
    assert request("GET", manifest_url, bearer).status == 401
    assert server.requests[-1].authorization is False and server.requests[-1].user is None


def test_token_flow_with_credentials(token_registry, pushed_private):
    server = token_registry.token_server
    server.clear_requests()
    client = RegistryClient(token_registry.url, "reader", USERS["reader"])
    got = client.get_manifest(pushed_private.name, pushed_private.digest, ACCEPT_ALL)
    assert got.status == 200 and got.body == pushed_private.image.manifest
    config = client.get_blob(pushed_private.name, pushed_private.image_id)
    assert config.status == 200
    (token_request,) = server.requests  # one token, reused for the blob
    assert token_request.authorization and token_request.user == "reader"
    assert token_request.scopes == (f"repository:{pushed_private.name}:pull",)
    assert token_request.query["service"] == [server.service]


def test_token_server_refuses_wrong_password(token_registry):
    server = token_registry.token_server
    basic = base64.b64encode(b"tester:wrong").decode()
    answer = request("GET", f"{server.realm}?service=x", {"Authorization": f"Basic {basic}"})
    assert answer.status == 401
    assert server.requests[-1].status == 401 and server.requests[-1].user is None


def test_readonly_user_cannot_push(token_registry):
    client = RegistryClient(token_registry.url, "reader", USERS["reader"])
    started = client.request("POST", "/v2/private/other/blobs/uploads/")
    assert started.status == 401


def test_anonymous_pull_repository(token_registry):
    RegistryClient(token_registry.url, "tester", USERS["tester"]).push_image(
        "public/busybox", busybox_image()
    )
    anonymous = RegistryClient(token_registry.url)
    assert anonymous.get_manifest("public/busybox", "latest", ACCEPT_ALL).status == 200


def test_oauth2_password_and_refresh_grants(token_registry, pushed_private):
    server = token_registry.token_server
    scope = f"repository:{pushed_private.name}:pull"
    form = {
        "grant_type": "password",
        "username": "tester",
        "password": USERS["tester"],
        "service": server.service,
        "scope": scope,
        "access_type": "offline",
        "client_id": "tests",
    }
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    answer = request("POST", server.realm, headers, urllib.parse.urlencode(form).encode())
    assert answer.status == 200
    body = json.loads(answer.body)
    refresh = {"grant_type": "refresh_token", "refresh_token": body["refresh_token"]}
    refreshed = request(
        "POST",
        server.realm,
        headers,
        urllib.parse.urlencode({**refresh, "service": server.service, "scope": scope}).encode(),
    )
    token = json.loads(refreshed.body)["access_token"]
    manifest_url = f"{token_registry.url}/v2/{pushed_private.name}/manifests/latest"
    got = request("GET", manifest_url, {"Authorization": f"Bearer {token}", "Accept": ACCEPT_ALL})
    assert got.status == 200


def test_basic_auth_registry(short_dir):
    with running_registry(short_dir, auth="basic", users=USERS) as registry:
        client = RegistryClient(registry.url, "tester", USERS["tester"])
        pushed = client.push_image("basic/busybox", busybox_image())
        manifest_path = f"/v2/{pushed.name}/manifests/latest"
        anonymous = request("GET", registry.url + manifest_path)
        assert anonymous.status == 401
        assert anonymous.headers["WWW-Authenticate"] == 'Basic realm="model-agent-test"'
        wrong = RegistryClient(registry.url, "tester", "wrong")
        assert wrong.get_manifest(pushed.name, "latest", ACCEPT_ALL).status == 401
        assert client.get_manifest(pushed.name, "latest", ACCEPT_ALL).status == 200
