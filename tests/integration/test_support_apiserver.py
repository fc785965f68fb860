"""The API-server stand-in answers the official ``kubernetes`` client as a 1.36 server would.

Every call goes through ``kubernetes.client.ResourceV1Api`` (the DRA driver's client) over
HTTP on 127.0.0.1: ResourceSlice create / get / list with the selectors a driver uses /
update with resourceVersion conflicts / delete / deletecollection, ResourceClaim reads
with allocation results, schema and server-side validation answered 422, credentials
from a kubeconfig, injected failures for retry tests.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import kubernetes
import pytest
from kubernetes.client import ResourceV1Api
from kubernetes.client.exceptions import ApiException

from tests.support.apiserver import APIServerStandIn, allocated_claim

pytestmark = pytest.mark.integration

DRIVER = "gpu.model-agent.io"


@pytest.fixture
def stand_in() -> Iterator[APIServerStandIn]:
    with APIServerStandIn() as server:
        yield server


@pytest.fixture
def api(stand_in: APIServerStandIn) -> Iterator[ResourceV1Api]:
    with kubernetes.client.ApiClient(stand_in.configuration()) as client:
        yield ResourceV1Api(client)


def gpu(index: int, **extra: Any) -> dict[str, Any]:
    """A device with the attribute and capacity names NVIDIA's DRA driver publishes."""
    string = {
        "type": "gpu",
        "uuid": f"GPU-{index:08d}-0000-0000-0000-000000000000",
        "productName": "NVIDIA H200",
        "brand": "Nvidia",
        "architecture": "Hopper",
        "pciBusID": f"0000:{index + 0x18:02x}:00.0",
    }
    attributes: dict[str, Any] = {k: {"string": v} for k, v in string.items()}
    attributes |= {
        "index": {"int": index},
        "minor": {"int": index},
        "cudaComputeCapability": {"version": "9.0.0"},
        "driverVersion": {"version": "570.124.6"},
        "cudaDriverVersion": {"version": "12.8.0"},
    }
    return {
        "name": f"gpu-{index}",
        "attributes": attributes,
        "capacity": {"memory": {"value": "141Gi"}},
    } | extra


def resource_slice(
    node: str, driver: str = DRIVER, devices: int = 2, **spec: Any
) -> dict[str, Any]:
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceSlice",
        "metadata": {"name": f"{node}-{driver}-slice", "labels": {"node": node, "tier": "gpu"}},
        "spec": {
            "driver": driver,
            "nodeName": node,
            "pool": {"name": node, "generation": 1, "resourceSliceCount": 1},
            "devices": [gpu(i) for i in range(devices)],
        }
        | spec,
    }


def error_of(call: Any, *args: Any, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    with pytest.raises(ApiException) as info:
        call(*args, **kwargs)
    return info.value.status, json.loads(info.value.body)


def test_create_get_and_server_set_metadata(api):
    created = api.create_resource_slice(resource_slice("node-a"))
    assert created.metadata.uid and created.metadata.creation_timestamp
    assert created.metadata.generation == 1
    assert created.spec.devices[0].attributes["productName"].string == "NVIDIA H200"
    assert created.spec.devices[0].attributes["driverVersion"].version == "570.124.6"
    assert created.spec.devices[0].capacity["memory"].value == "141Gi"
    read = api.read_resource_slice("node-a-gpu.model-agent.io-slice")
    assert read.metadata.resource_version == created.metadata.resource_version
    assert read.to_dict() == created.to_dict()
    status, body = error_of(api.create_resource_slice, resource_slice("node-a"))
    assert (status, body["reason"]) == (409, "AlreadyExists")
    status, body = error_of(api.read_resource_slice, "nope")
    assert (status, body["reason"], body["details"]["kind"]) == (404, "NotFound", "resourceslices")


def test_generate_name_makes_unique_names(api):
    body = resource_slice("node-a")
    body["metadata"] = {"generateName": "node-a-gpu.model-agent.io-"}
    first, second = api.create_resource_slice(body), api.create_resource_slice(body)
    assert first.metadata.name != second.metadata.name
    assert first.metadata.name.startswith("node-a-gpu.model-agent.io-")


def test_list_with_the_driver_s_field_and_label_selectors(api):
    for node in ("node-a", "node-b"):
        for driver in (DRIVER, "other.example.com"):
            api.create_resource_slice(resource_slice(node, driver))

    def names(**selectors: str) -> list[str]:
        return sorted(s.metadata.name for s in api.list_resource_slice(**selectors).items)

    mine = f"spec.nodeName=node-a,spec.driver={DRIVER}"
    assert names(field_selector=mine) == ["node-a-gpu.model-agent.io-slice"]
    assert len(names(field_selector="spec.nodeName=node-b")) == 2
    assert len(names(field_selector=f"spec.driver!={DRIVER}")) == 2
    assert names(
        label_selector="node in (node-b),tier=gpu", field_selector=f"spec.driver=={DRIVER}"
    ) == ["node-b-gpu.model-agent.io-slice"]
    assert len(names(label_selector="!missing,node notin (node-a)")) == 2
    status, body = error_of(api.list_resource_slice, field_selector="spec.pool.name=node-a")
    assert (status, body["message"]) == (400, "field label not supported: spec.pool.name")

    listed = api.list_resource_slice()
    assert int(listed.metadata.resource_version) >= 4
    page = api.list_resource_slice(limit=3)
    assert len(page.items) == 3 and page.metadata.remaining_item_count == 1
    rest = api.list_resource_slice(limit=3, _continue=page.metadata._continue)
    assert len(rest.items) == 1 and rest.metadata._continue is None


def test_update_conflicts_on_a_stale_resource_version(api):
    created = api.create_resource_slice(resource_slice("node-a"))
    name, first_version = created.metadata.name, created.metadata.resource_version

    created.spec.pool.generation = 2
    created.spec.devices[1].taints = [
        kubernetes.client.V1DeviceTaint(
            key="gpu.model-agent.io/xid", value="79", effect="NoSchedule"
        )
    ]
    updated = api.replace_resource_slice(name, created)
    assert int(updated.metadata.resource_version) > int(first_version)
    assert updated.metadata.generation == 2  # the spec changed
    assert updated.spec.devices[1].taints[0].key == "gpu.model-agent.io/xid"

    created.metadata.resource_version = first_version  # what a writer that did not re-read holds
    status, body = error_of(api.replace_resource_slice, name, created)
    assert (status, body["reason"]) == (409, "Conflict")
    assert "the object has been modified" in body["message"]

    unchanged = api.replace_resource_slice(name, updated)  # a no-op writes nothing
    assert unchanged.metadata.resource_version == updated.metadata.resource_version

    body = api.api_client.sanitize_for_serialization(updated)
    body["metadata"].pop("resourceVersion")
    body["spec"]["pool"]["generation"] = 3
    assert api.replace_resource_slice(name, body).spec.pool.generation == 3

    status, body = error_of(api.replace_resource_slice, "other", resource_slice("node-a"))
    assert (status, body["reason"]) == (400, "BadRequest")  # the body names another object
    missing = resource_slice("node-z")
    status, body = error_of(api.replace_resource_slice, missing["metadata"]["name"], missing)
    assert (status, body["reason"]) == (404, "NotFound")  # update never creates a slice


def test_delete_and_delete_collection(api):
    for node in ("node-a", "node-b"):
        for driver in (DRIVER, "other.example.com"):
            api.create_resource_slice(resource_slice(node, driver))
    stale = kubernetes.client.V1DeleteOptions(
        preconditions=kubernetes.client.V1Preconditions(resource_version="1")
    )
    status, body = error_of(api.delete_resource_slice, "node-b-other.example.com-slice", body=stale)
    assert (status, body["reason"]) == (409, "Conflict")
    deleted = api.delete_resource_slice("node-b-other.example.com-slice")
    assert deleted.metadata.name == "node-b-other.example.com-slice"
    status, _ = error_of(api.delete_resource_slice, "node-b-other.example.com-slice")
    assert status == 404

    api.delete_collection_resource_slice(
        field_selector=f"spec.nodeName=node-a,spec.driver={DRIVER}"
    )
    left = sorted(s.metadata.name for s in api.list_resource_slice().items)
    assert left == ["node-a-other.example.com-slice", "node-b-gpu.model-agent.io-slice"]
    api.delete_collection_resource_slice(field_selector="spec.nodeName=node-a")
    assert [s.metadata.name for s in api.list_resource_slice().items] == [
        "node-b-gpu.model-agent.io-slice"
    ]


def invalid(**edits: Any) -> dict[str, Any]:
    body = resource_slice("node-a")
    for path, value in edits.items():
        target: Any = body
        *parents, last = path.split("__")
        for part in parents:
            target = target[int(part)] if part.isdigit() else target[part]
        if value is None:
            del target[last]
        else:
            target[last] = value
    return body


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (invalid(spec__devices__0__frequency={"string": "x"}), "spec.devices.0"),  # unknown field
        (invalid(spec__pool=None), "spec"),
        (invalid(spec__pool__resourceSliceCount=0), "spec.pool.resourceSliceCount"),
        (invalid(spec__allNodes=True), "spec"),
        (invalid(spec__nodeName=None), "spec"),
        (invalid(spec__driver="GPU_Driver"), "spec.driver"),
        (invalid(spec__devices__0__name="GPU-0"), "spec.devices[0].name"),
        (invalid(spec__devices__1__name="gpu-0"), "spec.devices[1].name"),
        (
            invalid(spec__devices__0__attributes__driverVersion={"version": "570.124.06"}),
            "spec.devices[0].attributes[driverVersion].version",
        ),
        (
            invalid(spec__devices__0__attributes__uuid={"string": "x", "int": 1}),
            "spec.devices[0].attributes[uuid]",
        ),
        (
            invalid(
                spec__devices__0__taints=[
                    {"key": "gpu.model-agent.io/xid", "effect": "PreferNoSchedule"}
                ]
            ),
            "spec.devices[0].taints[0].effect",
        ),
        (resource_slice("node-a", devices=129), "spec.devices"),
    ],
)
def test_invalid_slices_are_answered_422(api, stand_in, body, field):
    status, answer = error_of(api.create_resource_slice, body)
    assert (status, answer["reason"]) == (422, "Invalid"), answer["message"]
    if field is not None:
        assert field in [c["field"] for c in answer["details"]["causes"]], answer["message"]
    assert stand_in.slices() == []


def test_attribute_name_rules_and_limits(api):
    too_many = invalid()
    too_many["spec"]["devices"][0]["attributes"] |= {f"extra{i}": {"int": i} for i in range(22)}
    status, answer = error_of(api.create_resource_slice, too_many)
    assert status == 422 and "must not exceed 32" in answer["message"]
    domain = invalid()
    domain["spec"]["devices"][0]["attributes"]["gpu.model-agent.io/healthy"] = {"bool": True}
    domain["spec"]["devices"][0]["attributes"]["1bad"] = {"bool": True}
    status, answer = error_of(api.create_resource_slice, domain)
    assert [c["field"] for c in answer["details"]["causes"]] == ["spec.devices[0].attributes[1bad]"]


def test_bad_quantities_are_answered_400_like_the_decoder(api):
    body = invalid(spec__devices__0__capacity={"memory": {"value": "141 GiB"}})
    status, answer = error_of(api.create_resource_slice, body)
    assert status == 400 and "quantities must match" in answer["message"]


def test_node_driver_and_pool_are_immutable(api):
    created = api.create_resource_slice(resource_slice("node-a"))
    body = api.api_client.sanitize_for_serialization(created)
    body["spec"]["nodeName"] = "node-b"
    status, answer = error_of(api.replace_resource_slice, created.metadata.name, body)
    assert status == 422 and answer["details"]["causes"] == [
        {"reason": "FieldValueInvalid", "message": "field is immutable", "field": "spec.nodeName"}
    ]
    body["spec"] |= {
        "nodeName": "node-a",
        "driver": "other.example.com",
        "pool": {"name": "p2", "generation": 1, "resourceSliceCount": 1},
    }
    status, answer = error_of(api.replace_resource_slice, created.metadata.name, body)
    assert {c["field"] for c in answer["details"]["causes"]} == {"spec.driver", "spec.pool.name"}


def test_claims_are_read_with_their_allocation(api, stand_in):
    stand_in.add_claim(
        allocated_claim(
            "team-a",
            "gpus",
            driver=DRIVER,
            pool="node-a",
            devices=["gpu-0", "gpu-1"],
            node="node-a",
            reserved_for=[("pod-1", "uid-p1")],
        )
    )
    stand_in.add_claim(
        allocated_claim(
            "team-a", "monitor", driver=DRIVER, pool="node-a", devices=["gpu-0"], admin_access=True
        )
    )
    shared = stand_in.add_claim(
        allocated_claim(
            "team-b",
            "shared",
            driver=DRIVER,
            pool="node-a",
            devices=["gpu-1"],
            share_ids=["5f2a1c9e-0b7d-4e3a-9c1f-6d8e2b4a7c30"],
        )
    )
    claim = api.read_namespaced_resource_claim("gpus", "team-a")
    results = claim.status.allocation.devices.results
    assert [(r.driver, r.pool, r.device, r.request) for r in results] == [
        (DRIVER, "node-a", "gpu-0", "gpu"),
        (DRIVER, "node-a", "gpu-1", "gpu"),
    ]
    assert claim.status.reserved_for[0].uid == "uid-p1"
    assert claim.metadata.uid and claim.metadata.resource_version
    monitor = api.read_namespaced_resource_claim("monitor", "team-a")
    assert monitor.status.allocation.devices.results[0].admin_access is True
    assert monitor.spec.devices.requests[0].exactly.admin_access is True
    read_shared = api.read_namespaced_resource_claim("shared", "team-b")
    assert (
        read_shared.status.allocation.devices.results[0].share_id
        == "5f2a1c9e-0b7d-4e3a-9c1f-6d8e2b4a7c30"
    )
    assert read_shared.metadata.uid == shared["metadata"]["uid"]
    assert [c.metadata.name for c in api.list_namespaced_resource_claim("team-a").items] == [
        "gpus",
        "monitor",
    ]
    assert len(api.list_resource_claim_for_all_namespaces().items) == 3

    before = claim.metadata.resource_version
    stand_in.update_claim("team-a", "gpus", lambda c: c["status"].pop("reservedFor"))
    again = api.read_namespaced_resource_claim("gpus", "team-a")
    assert int(again.metadata.resource_version) > int(before) and again.status.reserved_for is None
    assert again.metadata.uid == claim.metadata.uid

    status, body = error_of(api.read_namespaced_resource_claim, "gone", "team-a")
    assert (status, body["reason"], body["details"]["kind"]) == (404, "NotFound", "resourceclaims")
    with pytest.raises(ValueError, match="must be the name of a request"):
        stand_in.add_claim(
            allocated_claim("team-a", "bad", driver=DRIVER, pool="p", devices=["d"])
            | {"spec": {"devices": {"requests": []}}}
        )


def test_a_kubeconfig_with_a_token_reaches_it_and_no_token_is_401(tmp_path):
    with APIServerStandIn(token="s3cret-token") as stand_in:
        path = stand_in.write_kubeconfig(str(tmp_path / "kubeconfig"))
        with kubernetes.config.new_client_from_config(config_file=path) as client:
            api = ResourceV1Api(client)
            api.create_resource_slice(resource_slice("node-a"))
            assert len(api.list_resource_slice().items) == 1
        anonymous = kubernetes.client.Configuration(host=stand_in.url)
        with kubernetes.client.ApiClient(anonymous) as client:
            status, body = error_of(ResourceV1Api(client).list_resource_slice)
        assert (status, body["reason"]) == (401, "Unauthorized")
        assert stand_in.requests[-1].status == 401


def test_injected_failures_are_answered_then_cleared(api, stand_in):
    stand_in.fail("POST", r"/resourceslices$", status=503, reason="ServiceUnavailable", times=2)
    for _ in range(2):
        status, body = error_of(api.create_resource_slice, resource_slice("node-a"))
        assert (status, body["reason"]) == (503, "ServiceUnavailable")
    api.create_resource_slice(resource_slice("node-a"))
    assert [r.status for r in stand_in.requests_to("POST", "resourceslices")] == [503, 503, 201]


def test_patch_and_watch_say_they_are_not_implemented(api):
    api.create_resource_slice(resource_slice("node-a"))
    status, body = error_of(
        api.patch_resource_slice,
        "node-a-gpu.model-agent.io-slice",
        {"metadata": {"labels": {"a": "b"}}},
    )
    assert status == 405 and "not implemented" in body["message"]
    status, body = error_of(api.list_resource_slice, watch=True)
    assert status == 400 and "watch is not implemented" in body["message"]
