"""The serving path end to end, as the README's walkthrough does it.

The sklearn-iris server image (no weights in it) and its ModelPack model artifacts v1 and
v2 are built hermetically and pushed to the session registry; the agent pulls both
through the CRI, runs the server as a pod on the CNI network with the weights mounted as
an image volume at ``/models/sklearn-iris``, the test waits for readiness, sends
inference requests to the pod IP, moves the model to v2 (only the artifact's bytes are
downloaded again; the server image stays) and lets a real ``prometheus`` on 127.0.0.1
scrape the agent's container metrics and the server's request metrics, then evaluates
the PromQL the autoscaling objects in ``examples/models/sklearn-iris/k8s`` use.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from agent.api.cri.runtime.v1 import api_pb2 as pb
from tests.integration.test_pods import Env, environment, images  # noqa: F401
from tests.support.images import OCI_MANIFEST
from tests.support.models import PushedExample, build_and_push, post_json
from tests.support.prometheus import Prometheus
from tests.support.push import RegistryClient
from tests.support.registry import Registry

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL = "sklearn-iris"
MOUNT = f"/models/{MODEL}"
MODELPACK = "application/vnd.cncf.model.manifest.v1+json"
SETOSA, VIRGINICA = [5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]
REQUEST = {
    "inputs": [
        {"name": "input-0", "datatype": "FP32", "shape": [2, 4], "data": [SETOSA, VIRGINICA]}
    ]
}


@pytest.fixture(scope="module")
def iris(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> PushedExample:
    """The server image without weights, and the weights as artifacts v1 and v2."""
    out = str(tmp_path_factory.mktemp("iris-e2e"))
    return build_and_push(MODEL, registry.url, out, weights="none", repository_prefix="e2e")


@pytest.fixture
async def env(short_dir: str, images: dict[str, str]) -> AsyncIterator[Env]:  # noqa: F811
    async with environment(short_dir, images) as env:
        yield env


@pytest.fixture
def prometheus_dir(short_dir: str) -> str:
    path = os.path.join(short_dir, "prometheus")
    os.makedirs(path)
    return path


async def pull(env: Env, reference: str) -> str:
    response = await env.cri.images.PullImage(
        pb.PullImageRequest(image=pb.ImageSpec(image=reference))
    )
    return response.image_ref


def artifact_layers(registry: Registry, reference: str) -> list[dict[str, Any]]:
    _, _, rest = reference.partition("/")
    name, _, tag = rest.rpartition(":")
    response = RegistryClient(registry.url).get_manifest(name, tag, OCI_MANIFEST)
    assert response.status == 200, response.body
    layers: list[dict[str, Any]] = response.json()["layers"]
    return layers


def pulled_bytes(agent_metrics_url: str) -> float:
    with urllib.request.urlopen(agent_metrics_url, timeout=10) as response:
        text = response.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("model_agent_image_pull_bytes_total{")
    )


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


async def wait_ready(url: str, timeout: float = 120.0) -> float:
    """Poll the readiness route as the kubelet's probe would; seconds until 200."""
    started = time.monotonic()
    while True:
        try:
            status, _ = await asyncio.to_thread(get, url)
        except OSError:
            status = 0
        if status == 200:
            return time.monotonic() - started
        assert time.monotonic() - started < timeout, f"{url} not ready after {timeout}s"
        await asyncio.sleep(0.2)


def server_config(env: Env, name: str, image: str, artifact: str) -> pb.ContainerConfig:
    config = pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name=name),
        image=pb.ImageSpec(image=image),
        log_path=f"{name}/0.log",
        mounts=[pb.Mount(container_path=MOUNT, image=pb.ImageSpec(image=artifact), readonly=True)],
    )
    return config


async def test_serve_a_model_from_an_artifact_update_it_and_scale_on_its_metrics(
    env: Env, iris: PushedExample, registry: Registry, prometheus_dir: str
) -> None:
    metrics_url = env.agent.metrics_server.url if env.agent.metrics_server else ""
    assert metrics_url
    image_id = await pull(env, iris.image)
    v1_id = await pull(env, iris.artifact_ref("1"))
    assert v1_id == iris.artifact_digests["1"]  # an artifact's id is its manifest digest

    # The artifact is listed and inspected like an image, and says what it is.
    listed = {i.id: i for i in (await env.cri.images.ListImages(pb.ListImagesRequest())).images}
    assert {image_id, v1_id} <= set(listed)
    assert listed[v1_id].repo_tags == [iris.artifact_ref("1")]
    status = await env.cri.images.ImageStatus(
        pb.ImageStatusRequest(image=pb.ImageSpec(image=iris.artifact_ref("1")), verbose=True)
    )
    info = json.loads(status.info["info"])
    assert info["artifactType"] == MODELPACK
    assert info["labels"]["org.cncf.model.version"] == "1"
    assert status.image.size > 0

    sid = await env.run_pod(env.sandbox_config("iris"))
    pod = await env.cri.runtime.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=sid))
    ip = pod.status.network.ip
    assert ip

    # A container cannot run an artifact: it has no rootfs.
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await env.create(
            sid,
            pb.ContainerConfig(
                metadata=pb.ContainerMetadata(name="x"),
                image=pb.ImageSpec(image=iris.artifact_ref("1")),
            ),
        )
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "OCI artifact" in (refused.value.details() or "")

    cid = await env.create(sid, server_config(env, "server", iris.image, iris.artifact_ref("1")))
    await env.start(cid)
    await wait_ready(f"http://{ip}:8080/v2/health/ready")
    answer_status, answer = await asyncio.to_thread(
        post_json, f"http://{ip}:8080/v2/models/{MODEL}/infer", REQUEST
    )
    assert answer_status == 200, answer
    assert answer["model_version"] == "1"
    labels = next(o for o in answer["outputs"] if o["name"] == "label")["data"]
    assert labels == ["setosa", "virginica"]
    # The weights are the artifact's files, read-only, named by their titles.
    listing = await env.exec(cid, "ls", MOUNT)
    assert sorted(listing.stdout.decode().split()) == ["model.joblib", "model.json"]
    container = await env.status(cid)
    (volume,) = [m for m in container.mounts if m.container_path == MOUNT]
    assert (volume.image.image, volume.image.image_ref, volume.readonly) == (
        iris.artifact_ref("1"),
        v1_id,
        True,
    )
    with pytest.raises(grpc.aio.AioRpcError) as in_use:
        await env.cri.images.RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image=v1_id)))
    assert in_use.value.code() is grpc.StatusCode.FAILED_PRECONDITION

    # Model v2: only the artifact's changed files come down; the server image stays.
    v1_layers = {
        (x["digest"], x["annotations"]["org.opencontainers.image.title"])
        for x in artifact_layers(registry, iris.artifact_ref("1"))
    }
    changed = [
        x
        for x in artifact_layers(registry, iris.artifact_ref("2"))
        if (x["digest"], x["annotations"]["org.opencontainers.image.title"]) not in v1_layers
    ]
    assert changed  # the weights differ
    before = await asyncio.to_thread(pulled_bytes, metrics_url)
    v2_id = await pull(env, iris.artifact_ref("2"))
    assert await pull(env, iris.image) == image_id  # already there: nothing to fetch
    downloaded = await asyncio.to_thread(pulled_bytes, metrics_url) - before
    assert downloaded == sum(x["size"] for x in changed)
    assert downloaded < iris.image_size / 100
    await env.cri.runtime.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=10))
    await env.cri.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=cid))
    cid = await env.create(sid, server_config(env, "server", iris.image, iris.artifact_ref("2")))
    await env.start(cid)
    await wait_ready(f"http://{ip}:8080/v2/health/ready")
    answer_status, answer = await asyncio.to_thread(
        post_json, f"http://{ip}:8080/v2/models/{MODEL}/infer", REQUEST
    )
    assert answer_status == 200 and answer["model_version"] == "2", answer
    assert v2_id != v1_id
    # v1 is no longer mounted: the kubelet's image GC may take it.
    await env.cri.images.RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image=v1_id)))

    # A real Prometheus scrapes the agent and the server; the autoscaler's queries answer.
    agent_target = metrics_url.split("://", 1)[1].split("/", 1)[0]
    # The server as a PodMonitor finds it: Kubernetes discovery labels its series by pod.
    server_target = f"{ip}:8082"
    pod_labels = {server_target: {"namespace": "test", "pod": "iris"}}
    with Prometheus(
        prometheus_dir, [agent_target, server_target], target_labels=pod_labels
    ) as prometheus:
        for _ in range(5):
            await asyncio.to_thread(post_json, f"http://{ip}:8080/v2/models/{MODEL}/infer", REQUEST)
        served = await asyncio.to_thread(
            prometheus.wait_for,
            f'model_server_requests_total{{model="{MODEL}",status="200"}} >= 6',
            1,
        )
        assert served, prometheus.log()
        # KEDA's trigger (examples/models/sklearn-iris/k8s/scaledobject.yaml).
        queue = await asyncio.to_thread(
            prometheus.wait_for, f'sum(model_server_queue_length{{model="{MODEL}"}})', 1
        )
        assert [float(s["value"][1]) for s in queue] == [0.0]  # idle: no one waits
        # prometheus-adapter's rule (examples/models/sklearn-iris/k8s/hpa.yaml), as the HPA
        # asks it for the pods of the Deployment: one series per pod, named by the pod.
        per_pod = await asyncio.to_thread(
            prometheus.wait_for,
            'sum(model_server_queue_length{namespace="test",pod=~"iris"}) by (pod)',
            1,
        )
        assert [(s["metric"], float(s["value"][1])) for s in per_pod] == [({"pod": "iris"}, 0.0)]
        for _ in range(3):  # after Prometheus has a first sample of the counter
            await asyncio.to_thread(post_json, f"http://{ip}:8080/v2/models/{MODEL}/infer", REQUEST)
        busy = await asyncio.to_thread(
            prometheus.wait_for,
            f'sum(increase(model_server_requests_total{{namespace="test",model="{MODEL}"}}[1m]))'
            " by (pod) > 0",
            1,
        )
        assert [s["metric"] for s in busy] == [{"pod": "iris"}], busy
        memory = await asyncio.to_thread(
            prometheus.wait_for,
            'container_memory_working_set_bytes{pod="iris",container="server"}',
            1,
        )
        assert float(memory[0]["value"][1]) > 10 << 20  # the server and its model in memory
    await env.remove_pod(sid)
