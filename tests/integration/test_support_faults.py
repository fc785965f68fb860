"""The fault proxy forwards faithfully and each programmed fault fires as told."""

from __future__ import annotations

import http.client
import socket
import threading
import time
import urllib.request

import aiohttp
import pytest

from tests.support.faults import FaultProxy, HeaderRecorder
from tests.support.images import ACCEPT_ALL, busybox_image
from tests.support.push import RegistryClient, request
from tests.support.registry import DEFAULT_USERS, running_registry

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    with running_registry(tmp_path_factory.mktemp("faults")) as registry:
        yield registry


@pytest.fixture(scope="module")
def pushed(registry):
    return RegistryClient(registry.url).push_image("faults/busybox", busybox_image())


@pytest.fixture
def proxy(registry):
    threads_before = set(threading.enumerate())
    with FaultProxy(registry.url) as proxy:
        yield proxy
    assert set(threading.enumerate()) <= threads_before, "the proxy left threads running"


@pytest.fixture
def blob(pushed):
    """The busybox layer: (path, expected bytes)."""
    layer = pushed.image.layers[0]
    return f"/v2/{pushed.name}/blobs/{layer.digest}", layer.blob


def raw_get(url: str, path: str, timeout: float = 5.0) -> tuple[bytes, bytes, Exception | None]:
    """(head, body bytes received, the error that ended reading): sees resets as they are."""
    host, port = url.removeprefix("http://").split(":")
    head, body, error = b"", b"", None
    with socket.create_connection((host, int(port)), timeout=timeout) as conn:
        conn.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        try:
            while chunk := conn.recv(65536):
                data += chunk
        except OSError as e:
            error = e
    head, _, body = data.partition(b"\r\n\r\n")
    return head, body, error


def test_forwards_requests_and_records_them(proxy, pushed, blob):
    client = RegistryClient(proxy.url)
    manifest = client.get_manifest(pushed.name, "latest", ACCEPT_ALL)
    assert manifest.status == 200 and manifest.body == pushed.image.manifest
    assert manifest.headers["Docker-Content-Digest"] == pushed.digest
    path, data = blob
    part = request("GET", proxy.url + path, {"Range": "bytes=5-9", "Authorization": "Bearer x"})
    assert part.status == 206 and part.body == data[5:10]
    recorded = proxy.requests
    assert [(r.method, r.path, r.status) for r in recorded] == [
        ("GET", f"/v2/{pushed.name}/manifests/latest", 200),
        ("GET", path, 206),
    ]
    assert recorded[0].range is None and not recorded[0].authorization
    assert recorded[1].range == "bytes=5-9" and recorded[1].authorization


def test_push_goes_through_the_proxy_and_skips_existing_blobs(proxy):
    client = RegistryClient(proxy.url)
    image = busybox_image(labels={"via": "proxy"})
    client.push_image("faults/pushed", image)
    methods = [r.method for r in proxy.requests]
    assert methods.count("POST") == 2 and methods.count("PUT") == 4  # 2 blobs, 2 manifest refs
    proxy.clear_requests()
    client.push_image("faults/pushed", image)
    assert "POST" not in [r.method for r in proxy.requests]


def test_status_fault_fires_the_given_number_of_times(proxy, pushed):
    fault = proxy.fail("GET", r"/manifests/", 503, retry_after="2", times=2)
    url = f"{proxy.url}/v2/{pushed.name}/manifests/latest"
    first, second, third = (request("GET", url, {"Accept": ACCEPT_ALL}) for _ in range(3))
    assert first.status == second.status == 503 and first.headers["Retry-After"] == "2"
    assert first.json()["errors"][0]["code"] == "UNAVAILABLE"
    assert third.status == 200
    assert fault.fired == 2 and fault.hit.is_set()
    assert [r.fault for r in proxy.requests] == ["status", "status", None]


def test_unlimited_fault_any_method_until_cleared(proxy, pushed):
    proxy.fail(None, r"^/v2/", 500, times=None)
    url = f"{proxy.url}/v2/{pushed.name}/manifests/latest"
    assert [request(m, url).status for m in ("GET", "HEAD", "GET")] == [500, 500, 500]
    proxy.clear()
    assert request("HEAD", url, {"Accept": ACCEPT_ALL}).status == 200


def test_reset_after_some_body_bytes(proxy, blob):
    path, data = blob
    fault = proxy.reset("GET", r"/blobs/", after_bytes=1000)
    head, body, error = raw_get(proxy.url, path)
    assert head.startswith(b"HTTP/1.1 200")
    assert f"Content-Length: {len(data)}".encode() in head
    assert body == data[:1000]
    assert isinstance(error, ConnectionResetError)
    assert fault.hit.is_set() and proxy.requests[-1].status is None
    _, body, error = raw_get(proxy.url, path)  # fired once only
    assert body == data and error is None


def test_stall_until_released(proxy, blob):
    path, data = blob
    fault = proxy.stall("GET", r"/blobs/", after_bytes=70_000)
    result: list[bytes] = []
    reader = threading.Thread(target=lambda: result.append(raw_get(proxy.url, path)[1]))
    reader.start()
    assert fault.wait_hit(5)
    time.sleep(0.1)
    assert reader.is_alive()
    fault.release()
    reader.join(5)
    assert result == [data]


def test_stall_for_some_seconds_and_before_headers(proxy, blob):
    path, data = blob
    proxy.stall("GET", r"/blobs/", after_bytes=10, seconds=0.3)
    started = time.monotonic()
    assert raw_get(proxy.url, path)[1] == data
    assert time.monotonic() - started >= 0.3
    proxy.stall("GET", r"/blobs/", after_bytes=None)  # until stop: the client times out
    conn = http.client.HTTPConnection(proxy.host, timeout=0.3)
    conn.request("GET", path)
    with pytest.raises(TimeoutError):
        conn.getresponse()
    conn.close()


def test_stop_ends_stalled_responses(registry, blob):
    path, _ = blob
    threads_before = set(threading.enumerate())
    proxy = FaultProxy(registry.url).start()
    fault = proxy.stall("GET", r"/blobs/", after_bytes=100)
    reader = threading.Thread(target=raw_get, args=(proxy.url, path))
    reader.start()
    assert fault.wait_hit(5)
    proxy.stop()
    reader.join(5)
    assert not reader.is_alive()
    assert set(threading.enumerate()) <= threads_before


def test_corrupt_flips_one_byte(proxy, blob):
    path, data = blob
    proxy.corrupt("GET", r"/blobs/", offset=70_000)
    got = request("GET", proxy.url + path).body
    assert len(got) == len(data) and got != data
    assert [i for i in range(len(data)) if got[i] != data[i]] == [70_000]


def test_replace_body_serves_a_huge_manifest(proxy, pushed):
    huge = b"{" + b" " * (5 * 1024 * 1024) + b"}"
    proxy.replace_body("GET", r"/manifests/", huge, headers={"Docker-Content-Digest": None})
    got = RegistryClient(proxy.url).get_manifest(pushed.name, "latest", ACCEPT_ALL)
    assert got.status == 200 and got.body == huge
    assert got.headers["Content-Type"] == pushed.image.media_type
    assert "Docker-Content-Digest" not in got.headers


async def test_redirect_to_another_host_without_the_token(registry, proxy, blob):
    path, data = blob
    with HeaderRecorder(registry) as recorder:
        assert recorder.host.startswith("127.0.0.2:")
        proxy.redirect("GET", r"/blobs/", lambda p: recorder.url + p, times=None)
        async with (
            aiohttp.ClientSession() as session,
            session.get(proxy.url + path, headers={"Authorization": "Bearer secret"}) as got,
        ):
            assert got.status == 200 and await got.read() == data
        assert proxy.requests[-1].authorization and proxy.requests[-1].status == 307
        (seen,) = recorder.requests
        assert seen.path == path and seen.authorization is None  # aiohttp dropped it


def test_recorder_catches_a_client_that_forwards_the_token(registry, proxy, blob):
    path, data = blob
    with HeaderRecorder(registry) as recorder:
        proxy.redirect("GET", r"/blobs/", lambda p: recorder.url + p)
        careless = urllib.request.Request(proxy.url + path, headers={"Authorization": "Bearer x"})
        careless.add_header("Range", "bytes=0-9")
        with urllib.request.urlopen(careless, timeout=5) as response:  # urllib keeps it
            assert response.status == 206 and response.read() == data[:10]
        (seen,) = recorder.requests
        assert seen.authorization == "Bearer x" and seen.headers["Range"] == "bytes=0-9"


def test_token_registry_behind_the_proxy(short_dir):
    with running_registry(short_dir, auth="token") as registry, FaultProxy(registry.url) as proxy:
        ((user, password),) = DEFAULT_USERS.items()
        client = RegistryClient(proxy.url, user, password)
        pushed = client.push_image("faults/private", busybox_image())
        assert client.get_manifest(pushed.name, "latest", ACCEPT_ALL).status == 200
        assert proxy.requests[0].status == 401 and proxy.requests[-1].authorization
        assert registry.token_server is not None
        assert {r.user for r in registry.token_server.requests} == {user}
