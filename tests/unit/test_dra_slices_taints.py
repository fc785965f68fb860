"""The pool against an API server with and without the DRADeviceTaints feature: where
taints are dropped, an unhealthy GPU must not stay schedulable, nor the pool be rewritten
on every resync."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import Any

import pytest

from agent.gpu.dra.kube import ResourceApi, connect
from agent.gpu.dra.slices import SlicePublisher
from tests.support.apiserver import APIServerStandIn

HEALTHY = {"name": "gpu-0", "attributes": {"type": {"string": "gpu"}}}
TAINTED = {
    "name": "gpu-1",
    "attributes": {"type": {"string": "gpu"}},
    "taints": [
        {
            "key": "gpu.model-agent.io/xid",
            "value": "79",
            "effect": "NoExecute",
            "timeAdded": "2023-11-14T22:13:20Z",
        }
    ],
}


@pytest.fixture
def clients(tmp_path) -> Iterator[tuple[APIServerStandIn, ResourceApi, ResourceApi]]:
    """A taint-dropping stand-in, a client of it, and one of a taint-keeping stand-in."""
    with APIServerStandIn(drop_device_taints=True) as old, APIServerStandIn() as new:
        old_api = connect(old.write_kubeconfig(os.path.join(tmp_path, "old.json")))
        new_api = connect(new.write_kubeconfig(os.path.join(tmp_path, "new.json")))
        try:
            yield old, old_api, new_api
        finally:
            old_api.close()
            new_api.close()


def publisher(api: ResourceApi) -> SlicePublisher:
    return SlicePublisher(lambda: api, driver="gpu.model-agent.io", node="node-a", retry_max=1)


def stored_devices(server: APIServerStandIn) -> list[dict[str, Any]]:
    [item] = server.slices()
    devices: list[dict[str, Any]] = item["spec"]["devices"]
    return devices


def test_without_the_taints_feature_unhealthy_devices_leave_the_pool_and_stay_out(clients, caplog):
    server, api, _ = clients
    slices = publisher(api)
    caplog.set_level(logging.WARNING, "agent.gpu.dra.slices")
    slices._sync([HEALTHY, TAINTED])
    assert stored_devices(server) == [HEALTHY]  # the unhealthy GPU is not schedulable
    assert slices.taints_supported is False
    slices._devices = [HEALTHY, TAINTED]  # what set_devices would store
    assert [s["spec"]["devices"] for s in slices.wanted()] == [[HEALTHY]]  # Status agrees
    writes, generation = slices.writes, slices.generation
    for _ in range(3):  # resyncs find the pool as wanted
        slices._sync([HEALTHY, TAINTED])
    assert (slices.writes, slices.generation) == (writes, generation)
    healed = {k: v for k, v in TAINTED.items() if k != "taints"}
    slices._sync([HEALTHY, healed])  # healthy again: offered again
    assert [d["name"] for d in stored_devices(server)] == ["gpu-0", "gpu-1"]
    warnings = [r for r in caplog.records if "drops device taints" in r.getMessage()]
    assert len(warnings) == 1


def test_with_the_taints_feature_unhealthy_devices_are_published_tainted(clients):
    _, _, api = clients
    slices = publisher(api)
    slices._sync([HEALTHY, TAINTED])
    assert slices.taints_supported is True
    writes = slices.writes
    slices._sync([HEALTHY, TAINTED])
    assert slices.writes == writes == 1
    [item] = api.list_slices("node-a", "gpu.model-agent.io")
    assert item["spec"]["devices"] == [HEALTHY, TAINTED]
