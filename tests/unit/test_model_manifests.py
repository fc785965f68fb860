"""The example model servers' Kubernetes manifests: valid for Kubernetes 1.36, and wired up.

Core objects are validated with ``kubernetes-validate`` against the 1.36 schemas in strict
mode (unknown fields are errors). KEDA's ScaledObject is a CRD whose schema that package
does not carry, so its test checks the fields KEDA's Prometheus scaler requires.
"""

from __future__ import annotations

import glob
import os
from typing import Any

import kubernetes_validate
import pytest
import yaml

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "models")
KUBERNETES = "1.36.0"
CRD_KINDS = {"ScaledObject"}


def _documents() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(glob.glob(os.path.join(EXAMPLES, "*", "k8s", "*.yaml"))):
        with open(path) as f:
            for document in yaml.safe_load_all(f):
                if document:
                    name = f"{os.path.relpath(path, EXAMPLES)}:{document['kind']}"
                    found.append((name, document))
    return found


DOCUMENTS = _documents()
CORE = [(name, doc) for name, doc in DOCUMENTS if doc["kind"] not in CRD_KINDS]


def _by(example: str, kind: str, file: str | None = None) -> dict[str, Any]:
    for name, document in DOCUMENTS:
        wanted_file = file is None or name.startswith(f"{example}/k8s/{file}:")
        if name.startswith(f"{example}/") and document["kind"] == kind and wanted_file:
            return document
    raise AssertionError(f"no {kind} for {example}")


def test_every_example_has_its_manifests() -> None:
    kinds = {
        example: {doc["kind"] for name, doc in DOCUMENTS if name.startswith(f"{example}/")}
        for example in ("sklearn-iris", "minilm-embedding")
    }
    common = {"Deployment", "Service", "ScaledObject", "HorizontalPodAutoscaler"}
    assert kinds["sklearn-iris"] == common
    assert kinds["minilm-embedding"] == common | {"ResourceClaimTemplate"}


@pytest.mark.parametrize(("name", "document"), CORE, ids=[name for name, _ in CORE])
def test_core_objects_validate_against_kubernetes_1_36(name: str, document: dict[str, Any]) -> None:
    try:
        kubernetes_validate.validate(document, KUBERNETES, strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"{name} does not validate against Kubernetes {KUBERNETES}: {exc}")


def test_validation_catches_a_mistake() -> None:
    """The validator is not a rubber stamp: a misspelt field of a probe fails strict mode."""
    broken = yaml.safe_load(yaml.safe_dump(_by("sklearn-iris", "Deployment")))
    probe = broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
    probe["httpGett"] = probe.pop("httpGet")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES, strict=True)


@pytest.mark.parametrize("example", ["sklearn-iris", "minilm-embedding"])
def test_deployment_probes_volume_and_service_agree(example: str) -> None:
    deployment = _by(example, "Deployment", "deployment.yaml")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8080, "metrics": 8082}  # the image labels' ports
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    assert container["resources"]["requests"]["cpu"]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["model"]["mountPath"] == f"/models/{example}"  # the server's MODEL_DIR
    assert mounts["model"]["readOnly"] is True
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["model"]["image"]["reference"].endswith(f"/{example}-model:v1")
    assert volumes["model"]["image"]["pullPolicy"] == "IfNotPresent"
    labels = deployment["spec"]["selector"]["matchLabels"]
    service = _by(example, "Service")
    assert service["spec"]["selector"] == labels
    assert {p["targetPort"] for p in service["spec"]["ports"]} == {"http", "metrics"}
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(ports["metrics"])


def test_minilm_asks_for_a_gpu_both_ways() -> None:
    plugin = _by("minilm-embedding", "Deployment", "deployment.yaml")
    (container,) = plugin["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    dra = _by("minilm-embedding", "Deployment", "deployment-dra.yaml")
    pod = dra["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert "nvidia.com/gpu" not in container["resources"].get("limits", {})
    assert container["resources"]["claims"] == [{"name": "gpu"}]
    template = _by("minilm-embedding", "ResourceClaimTemplate")
    assert pod["resourceClaims"] == [
        {"name": "gpu", "resourceClaimTemplateName": template["metadata"]["name"]}
    ]
    (request,) = template["spec"]["spec"]["devices"]["requests"]
    assert request["exactly"]["deviceClassName"] == "gpu.model-agent.io"


@pytest.mark.parametrize("example", ["sklearn-iris", "minilm-embedding"])
def test_autoscalers_scale_the_deployment_on_queue_length(example: str) -> None:
    deployment = _by(example, "Deployment", "deployment.yaml")
    target = {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment["metadata"]["name"]}
    scaled = _by(example, "ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["spec"]["scaleTargetRef"] == target
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    metadata = trigger["metadata"]
    assert metadata["serverAddress"].startswith("http")
    # Scoped to one namespace (as the chart's template does), the one kubectl's default
    # puts every manifest of the example in: none of them pins another.
    assert all("namespace" not in doc["metadata"] for _, doc in DOCUMENTS)
    assert metadata["query"] == (
        f'sum(model_server_queue_length{{namespace="default",model="{example}"}})'
    )
    assert all(isinstance(metadata[key], str) for key in ("threshold", "activationThreshold"))
    float(metadata["threshold"])
    assert 1 <= scaled["spec"]["minReplicaCount"] < scaled["spec"]["maxReplicaCount"]
    hpa = _by(example, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == target
    (metric,) = hpa["spec"]["metrics"]
    assert metric["pods"]["metric"]["name"] == "model_server_queue_length"
