"""The sklearn-iris example image, built hermetically and pushed to a real registry.

One build (mmdebstrap rootfs from the build cache, or bootstrapped on a fresh machine:
about 3 minutes here, then seconds) makes the image and its model artifacts v1 and v2;
the tests read back what the registry serves, run the image's own entrypoint from its
unpacked layers (chroot, as its user, on 127.0.0.1) on the weights baked into it and then
on an artifact placed where an image volume would show it, and check that a rebuild is
byte-identical. minilm-embedding's image is built the same way but not here (its rootfs
adds another 2-3 minutes); ``MODEL_AGENT_TEST_MINILM_IMAGE=1`` runs its test too.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.images import OCI_MANIFEST
from tests.support.models import (
    DEFAULT_CACHE,
    PushedExample,
    build_and_push,
    place_artifact,
    post_json,
    run_server,
    unpack_image,
)
from tests.support.push import RegistryClient
from tests.support.registry import Registry

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODELPACK = "application/vnd.cncf.model.manifest.v1+json"
LABEL = "io.model-agent.model."
SETOSA, VIRGINICA = [5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]


@pytest.fixture(scope="module")
def out_dir() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="model-images-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def iris(registry: Registry, out_dir: str) -> PushedExample:
    return build_and_push("sklearn-iris", registry.url, os.path.join(out_dir, "first"))


def _manifest(client: RegistryClient, reference: str) -> tuple[dict[str, Any], str]:
    _, _, rest = reference.partition("/")
    name, _, tag = rest.rpartition(":")
    response = client.get_manifest(name, tag, OCI_MANIFEST)
    assert response.status == 200, response.body
    return response.json(), name


def test_iris_image_in_the_registry(iris: PushedExample, registry: Registry) -> None:
    client = RegistryClient(registry.url)
    manifest, name = _manifest(client, iris.image)
    assert manifest["mediaType"] == OCI_MANIFEST
    assert manifest["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json"
    layers = manifest["layers"]
    assert [layer["mediaType"].rsplit(".", 1)[1] for layer in layers] == [
        "tar+gzip", "tar+gzip", "tar+gzip", "tar",
    ]  # fmt: skip  # base, deps, code: gzip; the weights: uncompressed
    assert [info.name for info in iris.build.layers] == ["base", "deps", "code", "weights"]
    config = client.get_blob(name, manifest["config"]["digest"]).json()
    runtime = config["config"]
    labels = runtime["Labels"]
    assert labels["org.opencontainers.image.title"] == "sklearn-iris"
    assert labels[LABEL + "name"] == "sklearn-iris"
    assert labels[LABEL + "version"] == "1"
    assert labels[LABEL + "framework"] == "scikit-learn"
    assert labels[LABEL + "metrics-port"] == "8082"
    assert labels[LABEL + "gpu"] == "none"
    assert labels[LABEL + "weights"] == "layer"
    assert runtime["User"] == "65534:65534"
    assert runtime["Entrypoint"] == ["python3", "-m", "model_server"]
    assert set(runtime["ExposedPorts"]) == {"8080/tcp", "8082/tcp"}
    assert "MODEL_DIR=/models/sklearn-iris" in runtime["Env"]
    assert config["rootfs"]["diff_ids"] == [info.diff_id for info in iris.build.layers]
    for layer in layers:  # every blob is there, with the size the manifest says
        blob = client.get_blob(name, layer["digest"])
        assert blob.status == 200 and len(blob.body) == layer["size"]
    assert iris.image_size == sum(layer["size"] for layer in layers)
    print(
        f"\nsklearn-iris: {iris.image_size / 1e6:.1f} MB compressed, "
        f"{iris.unpacked_size / 1e6:.1f} MB unpacked, built in {iris.build_seconds:.1f}s "
        f"(rootfs built: {list(iris.build.rootfs_built) or 'from cache'}), "
        f"pushed in {iris.push_seconds:.1f}s"
    )


def test_iris_artifacts_are_modelpack_and_differ_only_in_weights(
    iris: PushedExample, registry: Registry
) -> None:
    client = RegistryClient(registry.url)
    files = {}
    for version in ("1", "2"):
        manifest, name = _manifest(client, iris.artifacts[version])
        assert manifest["artifactType"] == MODELPACK
        assert manifest["config"]["mediaType"] == "application/vnd.cncf.model.config.v1+json"
        assert manifest["annotations"]["org.cncf.model.version"] == version
        config = client.get_blob(name, manifest["config"]["digest"]).json()
        assert config["descriptor"]["version"] == version
        assert config["modelfs"]["diffIds"] == [layer["digest"] for layer in manifest["layers"]]
        files[version] = {
            layer["annotations"]["org.opencontainers.image.title"]: layer
            for layer in manifest["layers"]
        }
        assert set(files[version]) == {"model.joblib", "model.json"}
        assert (
            files[version]["model.joblib"]["mediaType"]
            == "application/vnd.cncf.model.weight.v1.raw"
        )
        card = json.loads(client.get_blob(name, files[version]["model.json"]["digest"]).body)
        assert card["version"] == version
    assert files["1"]["model.joblib"]["digest"] != files["2"]["model.joblib"]["digest"]
    image_manifest, _ = _manifest(client, iris.image)
    image_blobs = {layer["digest"] for layer in image_manifest["layers"]}
    assert not image_blobs & {layer["digest"] for layer in files["2"].values()}


def test_iris_image_serves_its_baked_weights_then_an_artifact(
    iris: PushedExample, out_dir: str
) -> None:
    rootfs = os.path.join(out_dir, "run", "rootfs")
    config = unpack_image(iris.build.image_layout, iris.build.image_ref, rootfs)
    assert os.path.isfile(os.path.join(rootfs, "opt/model/sklearn-iris/model.joblib"))
    assert not os.path.exists(os.path.join(rootfs, "models"))
    request = {
        "inputs": [
            {"name": "input-0", "datatype": "FP32", "shape": [2, 4], "data": [SETOSA, VIRGINICA]}
        ]
    }
    with run_server(rootfs, config) as server:  # MODEL_DIR is empty: the baked v1 layer
        status, answer = post_json(f"{server.url}/v2/models/sklearn-iris/infer", request)
        assert status == 200, answer
        assert answer["model_version"] == "1"
        labels = next(o for o in answer["outputs"] if o["name"] == "label")["data"]
        assert labels == ["setosa", "virginica"]
        assert "using the weights baked into the image" in server.log()
    assert server.process.returncode == 0, server.log()  # SIGTERM: a clean exit (uvicorn 0.17)
    volume = os.path.join(rootfs, "models", "sklearn-iris")
    placed = place_artifact(iris.build.artifact_layout, "v2", volume)
    assert sorted(placed) == ["model.joblib", "model.json"]
    with run_server(rootfs, config) as server:
        status, answer = post_json(f"{server.url}/v2/models/sklearn-iris/infer", request)
        assert status == 200 and answer["model_version"] == "2"
        with open(os.path.join(out_dir, "run", "metrics.txt"), "w") as f:
            import urllib.request

            with urllib.request.urlopen(f"{server.metrics_url}/metrics") as r:
                text = r.read().decode()
            f.write(text)
        assert 'model_server_requests_total{model="sklearn-iris",status="200"} 1.0' in text


def test_iris_rebuild_is_byte_identical(iris: PushedExample, out_dir: str) -> None:
    from modelbuild.examples import build_example

    again = build_example(
        "sklearn-iris", os.path.join(out_dir, "again"), cache_dir=DEFAULT_CACHE,
        artifact_versions=("1", "2"),
    )  # fmt: skip
    assert again.image_digest == iris.image_digest
    assert {v: d for v, (d, _) in again.artifacts.items()} == dict(iris.artifact_digests)
    assert again.rootfs_built == ()  # from the cache
    assert again.seconds["total"] < 60


@pytest.mark.skipif(
    os.environ.get("MODEL_AGENT_TEST_MINILM_IMAGE") != "1",
    reason="the minilm image adds a 2-3 minute rootfs build; MODEL_AGENT_TEST_MINILM_IMAGE=1 "
    "runs it",
)
def test_minilm_image_serves_its_artifact(registry: Registry, out_dir: str) -> None:
    minilm = build_and_push("minilm-embedding", registry.url, os.path.join(out_dir, "minilm"))
    assert [info.name for info in minilm.build.layers] == ["base", "deps", "code"]
    rootfs = os.path.join(out_dir, "minilm-run", "rootfs")
    config = unpack_image(minilm.build.image_layout, minilm.build.image_ref, rootfs)
    # built without Docker: no CuPy, so no use for a GPU
    assert config["config"]["Labels"][LABEL + "gpu"] == "none"
    place_artifact(
        minilm.build.artifact_layout, "v1", os.path.join(rootfs, "models/minilm-embedding")
    )
    request = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["Hello"]}]}
    with run_server(rootfs, config) as server:
        status, answer = post_json(f"{server.url}/v2/models/minilm-embedding/infer", request)
    assert status == 200 and answer["outputs"][0]["shape"] == [1, 384]
