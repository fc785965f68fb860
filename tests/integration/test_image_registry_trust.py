"""Where registry credentials may go, and what a failing mirror chain reports (issues 10, 11).

Real registries, the token server and the fault proxy on 127.0.0.1; "another host" is
127.0.0.2 (a different origin to the agent, the same machine to the test).
"""

from __future__ import annotations

import base64
import json
import uuid

import grpc
import pytest

from agent.api.cri.runtime.v1 import api_pb2 as pb
from agent.ctl.client import CriClient
from tests.support.faults import FaultProxy
from tests.support.images import build_image
from tests.support.layers import File, layer
from tests.support.registry import running_registry
from tests.support.tls import ChallengingRegistry
from tests.support.token_server import TokenServer

pytestmark = pytest.mark.integration

USER, PASSWORD = "tester", "s3cret-pw"


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


async def pull_error(cri: CriClient, image: str, **auth: str) -> grpc.aio.AioRpcError:
    request = pb.PullImageRequest(image=pb.ImageSpec(image=image))
    if auth:
        request.auth.CopyFrom(pb.AuthConfig(**auth))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await cri.images.PullImage(request, timeout=60)
    return info.value


@pytest.fixture(scope="module")
def token_registry(tmp_path_factory):
    with running_registry(
        tmp_path_factory.mktemp("trust-token"), auth="token", users={USER: PASSWORD}
    ) as registry:
        yield registry


async def test_a_host_reached_by_redirect_never_gets_the_pull_credentials(
    cri, pusher, registry, token_registry
):
    # The registry the image names redirects its manifest to another host, which
    # challenges for a token from a realm of its own choosing.
    name = unique("redirected")
    pusher.push_image(name, build_image([layer([File("r", b"r")])]))
    server = token_registry.token_server
    assert server is not None
    server.clear_requests()
    with (
        FaultProxy(registry.url) as origin,
        FaultProxy(token_registry.url, host="127.0.0.2") as elsewhere,
    ):
        origin.redirect("GET", r"/manifests/", lambda path: elsewhere.url + path, times=None)
        error = await pull_error(cri, f"{origin.host}/{name}", username=USER, password=PASSWORD)
        assert elsewhere.requests, "the redirect was followed"
        assert not any(r.authorization for r in elsewhere.requests)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "redirect" in (error.details() or "")
    # The realm the other host named never saw the credentials (nor any request).
    assert [r for r in server.requests if r.authorization] == []


async def test_a_plain_http_realm_of_an_https_registry_is_refused(start_agent, short_dir):
    with TokenServer({USER: PASSWORD}) as server:
        challenge = f'Bearer realm="{server.realm}",service="x"'  # http://127.0.0.1:<port>/token
        with ChallengingRegistry(short_dir, challenge) as https:
            auths = {https.host: {"auth": base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}}
            with open(f"{short_dir}/auth.json", "w") as f:
                json.dump({"auths": auths}, f)
            agent = await start_agent(
                **{
                    "image.credentials_file": f"{short_dir}/auth.json",
                    "image.registries": {
                        "127.0.0.1:1": {"mirrors": [https.url]},
                        https.host: {"ca_file": https.cert_path},
                    },
                }
            )
            assert agent.images is not None
            agent.images.client._retry.base_delay = 0.01
            server.clear_requests()
            async with CriClient(agent.socket_path) as cri:
                error = await pull_error(cri, "127.0.0.1:1/secret/model")
            assert https.requests, "the https mirror was asked first"
    assert server.requests == []  # neither credentials nor a token request over plain HTTP
    assert "plain-http token realm" in (error.details() or "")


async def test_a_mirror_that_lacks_the_image_is_named_when_the_registry_is_unreachable(
    start_agent, registry
):
    agent = await start_agent(**{"image.registries": {"127.0.0.1:1": {"mirrors": [registry.url]}}})
    assert agent.images is not None
    agent.images.client._retry.base_delay = 0.01
    async with CriClient(agent.socket_path) as cri:
        error = await pull_error(cri, f"127.0.0.1:1/{unique('nowhere')}:v1")
    details = error.details() or ""
    assert details.startswith("RegistryUnavailable: ")
    assert "127.0.0.1:1" in details  # the registry itself: unreachable
    assert f"mirror {registry.host}" in details and "404" in details  # and what the mirror said
