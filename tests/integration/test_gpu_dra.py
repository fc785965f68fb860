"""The agent's DRA driver against the kubelet stand-in and the API-server stand-in.

Real gRPC over unix sockets in a temporary kubelet dir (``tests.support.kubelet``), the
official ``kubernetes`` client against the one simulated Kubernetes part
(``tests.support.apiserver``), a simulated two-GPU node (``tests.support.gpu_node``)
under a real agent — and, for the claim that is prepared, a real runc container
created through the CRI with the CDI ids the driver answered.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import kubernetes
import pytest

from agent.api.cri.runtime.v1 import api_pb2 as pb
from agent.gpu.dra.kube import ResourceApi
from tests.integration.test_gpu_containers import (
    GPU1_NODES,
    inspected_info,
    nvidia_nodes,
    verbose_gpu,
)
from tests.integration.test_pods import environment, images  # noqa: F401
from tests.support.apiserver import APIServerStandIn, allocated_claim
from tests.support.gpu_node import GPU0, GPU1, GpuNode, make_gpu_node, simulation_toml
from tests.support.kubelet import DRA_SERVICES, ClaimRef, Kubelet
from tests.support.kubelet_dra import PRE_V1_KUBELET_SERVICES

pytestmark = pytest.mark.integration

DRIVER = "gpu.model-agent.io"
NODE = "node-a"
CLAIM_KIND = "k8s.gpu.model-agent.io/claim"


@pytest.fixture
def node(short_dir: str) -> GpuNode:
    return make_gpu_node(os.path.join(short_dir, "gpunode"))


@pytest.fixture
def api() -> Iterator[APIServerStandIn]:
    with APIServerStandIn(token="driver-token") as server:
        yield server


@pytest.fixture
async def kubelet(short_dir: str) -> AsyncIterator[Kubelet]:
    # The agent's kubelet dir is <base>/kubelet (tests.conftest.make_config).
    async with Kubelet(f"{short_dir}/kubelet", health_version="v1alpha1", health_retry=0.5) as k:
        yield k


def dra_keys(node: GpuNode, api: APIServerStandIn, base: str, **extra: Any) -> dict[str, Any]:
    keys = node.config_keys(kubelet_api="dra")
    keys |= {
        "gpu.dra.kubeconfig": api.write_kubeconfig(os.path.join(base, "kubeconfig")),
        "gpu.dra.node_name": NODE,
        "gpu.kubelet.dir": f"{base}/kubelet",  # every agent of a test, the same kubelet
        "gpu.health.recovery_seconds": 1.0,
        "gpu.health.check_interval_seconds": 0.2,
    }
    return keys | extra


async def eventually(check: Callable[[], Any], timeout: float = 15.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what or check}"
        await asyncio.sleep(0.05)


def pool(api: APIServerStandIn) -> dict[str, dict[str, Any]]:
    """This node's devices by name, from the stand-in's stored slices."""
    return {
        d["name"]: d
        for s in api.slices()
        if s["spec"]["nodeName"] == NODE
        for d in s["spec"].get("devices") or []
    }


def generation(api: APIServerStandIn) -> int:
    [item] = api.slices()
    return int(item["spec"]["pool"]["generation"])


def spec_files(node: GpuNode) -> list[str]:
    return sorted(f for f in os.listdir(node.run_cdi) if f.startswith("k8s.gpu.model-agent.io"))


async def test_prepare_a_claim_into_a_real_container_unprepare_after_a_restart(
    short_dir,
    images,  # noqa: F811
    node,
    api,
    kubelet,
):
    keys = dra_keys(node, api, short_dir)
    async with environment(short_dir, images, **keys) as env:
        plugin = await kubelet.watcher.wait_registered(DRIVER)
        assert plugin.service == "v1.DRAPlugin"
        assert plugin.supported_versions == ("v1.DRAPlugin", "v1beta1.DRAPlugin")
        assert plugin.endpoint == kubelet.dra_socket(DRIVER)
        devices = await eventually(lambda: pool(api), what="the ResourceSlice")
        assert sorted(devices) == ["gpu-0", "gpu-1"]
        assert devices["gpu-1"]["attributes"]["uuid"] == {"string": GPU1}
        [published] = api.slices()
        assert published["spec"]["pool"] == {"name": NODE, "generation": 1, "resourceSliceCount": 1}
        listed = api.requests_to("GET", "/resourceslices$")
        assert listed[0].query["fieldSelector"] == f"spec.nodeName={NODE},spec.driver={DRIVER}"

        claim = api.add_claim(
            allocated_claim(
                "test",
                "shared-gpu",
                driver=DRIVER,
                pool=NODE,
                devices=["gpu-1"],
                reserved_for=[("pod-a", "uid-a"), ("pod-b", "uid-b")],
            )
        )
        ref = ClaimRef("test", "shared-gpu", claim["metadata"]["uid"])
        cdi_id = f"{CLAIM_KIND}={ref.uid}-gpu-1"
        prepared = await plugin.prepare([ref])
        [device] = prepared[ref.uid].devices
        assert (device.pool_name, device.device_name, device.request_names) == (
            NODE,
            "gpu-1",
            ("gpu",),
        )
        assert device.cdi_device_ids == (cdi_id,)
        # Idempotent, and a shared claim is prepared once: no second read of the claim.
        assert (await plugin.prepare([ref]))[ref.uid] == prepared[ref.uid]
        assert len(api.requests_to("GET", "/resourceclaims/shared-gpu$")) == 1
        assert spec_files(node) == [f"k8s.gpu.model-agent.io-claim_{ref.uid}.json"]

        # The GPU-in-containers path resolves the CDI id: two pods share the claim.
        cids = []
        for name in ("pod-a", "pod-b"):
            sid = await env.run_pod(env.sandbox_config(name))
            cid = await env.run(
                sid, "dra", "sleep", "1000", CDI_devices=[pb.CDIDevice(name=cdi_id)]
            )
            assert await nvidia_nodes(env, cid) == GPU1_NODES
            grants = (await verbose_gpu(env, cid))["grants"]
            assert isinstance(grants, list)
            assert [(g["uuid"], g["via"], g["request"]) for g in grants] == [(GPU1, "cdi", cdi_id)]
            cids.append(cid)
        # ``ctl inspect`` shows the same: which GPU, and through which claim.
        inspected = [info["gpu"]["grants"] for info in await inspected_info(env, *cids)]
        assert [[(g["uuid"], g["request"]) for g in grants] for grants in inspected] == [
            [(GPU1, cdi_id)],
            [(GPU1, cdi_id)],
        ]
        assert env.agent.db is not None
        [row] = env.agent.db.dra_devices()
        assert (row.claim_uid, row.device, row.device_uuid, row.cdi_device) == (
            ref.uid,
            "gpu-1",
            GPU1,
            cdi_id,
        )
        assert not row.admin_access

        # The agent restarts between prepare and unprepare: it registers again (new
        # sockets), and unprepare works from the checkpoint alone.
        await env.restart_agent()
        again = await kubelet.watcher.wait_registered(DRIVER, after=plugin)
        assert (await again.prepare([ref]))[ref.uid] == prepared[ref.uid]
        assert len(api.requests_to("GET", "/resourceclaims/shared-gpu$")) == 1
        assert await again.unprepare([ref]) == {ref.uid: ""}
        assert spec_files(node) == []
        assert env.agent.db is not None and env.agent.db.dra_devices() == []
        assert await again.unprepare([ref]) == {ref.uid: ""}  # unknown now: still fine
        # The containers keep what they were given.
        assert await nvidia_nodes(env, cids[0]) == GPU1_NODES


async def test_claims_the_driver_cannot_prepare_say_why(api, start_agent, node, kubelet, short_dir):
    agent = await start_agent(**dra_keys(node, api, short_dir))
    plugin = await kubelet.watcher.wait_registered(DRIVER)

    def add(name: str, **kwargs: Any) -> ClaimRef:
        body = allocated_claim("test", name, driver=DRIVER, **({"pool": NODE} | kwargs))
        return ClaimRef("test", name, api.add_claim(body)["metadata"]["uid"])

    unallocated = add("unallocated", devices=["gpu-0"])
    api.update_claim("test", "unallocated", lambda c: c.pop("status"))
    elsewhere = add("elsewhere", devices=["gpu-0"], pool="node-b")
    missing = add("missing", devices=["gpu-7"])
    replaced = ClaimRef("test", "missing", "00000000-0000-0000-0000-000000000000")
    admin = add("monitor", devices=["gpu-0", "gpu-1"], admin_access=True)
    answers = await plugin.prepare([unallocated, elsewhere, missing, replaced, admin], check=False)
    assert "is not allocated" in answers[unallocated.uid].error
    assert "pool node-b, not from this node's pool node-a" in answers[elsewhere.uid].error
    assert "device gpu-7 of pool node-a is not offered" in answers[missing.uid].error
    assert "deleted and created again" in answers[replaced.uid].error
    assert answers[admin.uid].error == ""
    assert [d.device_name for d in answers[admin.uid].devices] == ["gpu-0", "gpu-1"]
    assert agent.db is not None
    assert {(r.device, r.admin_access) for r in agent.db.dra_devices()} == {
        ("gpu-0", True),
        ("gpu-1", True),
    }
    assert await plugin.unprepare([admin]) == {admin.uid: ""}


def claim_spec_document(node: GpuNode, uid: str) -> dict[str, Any]:
    with open(os.path.join(node.run_cdi, f"k8s.gpu.model-agent.io-claim_{uid}.json")) as f:
        document: dict[str, Any] = json.load(f)
    return document


async def test_a_kubelet_before_1_34_prepares_and_unprepares_over_v1beta1(
    api, start_agent, node, kubelet, short_dir
):
    """Such a kubelet has no v1.DRAPlugin; the agent's v1beta1 service must answer the same."""
    agent = await start_agent(**dra_keys(node, api, short_dir))
    plugin = await kubelet.watcher.wait_registered(DRIVER)
    assert plugin.choose_service(PRE_V1_KUBELET_SERVICES) == "v1beta1.DRAPlugin"
    body = allocated_claim("test", "old-kubelet", driver=DRIVER, pool=NODE, devices=["gpu-0"])
    ref = ClaimRef("test", "old-kubelet", api.add_claim(body)["metadata"]["uid"])
    cdi_id = f"{CLAIM_KIND}={ref.uid}-gpu-0"

    prepared = await plugin.prepare([ref])
    [device] = prepared[ref.uid].devices
    assert (device.pool_name, device.device_name, device.request_names) == (NODE, "gpu-0", ("gpu",))
    assert device.cdi_device_ids == (cdi_id,)
    assert spec_files(node) == [f"k8s.gpu.model-agent.io-claim_{ref.uid}.json"]
    spec = claim_spec_document(node, ref.uid)
    assert spec["kind"] == CLAIM_KIND
    assert [d["name"] for d in spec["devices"]] == [f"{ref.uid}-gpu-0"]
    assert agent.db is not None
    assert [(r.claim_uid, r.device_uuid) for r in agent.db.dra_devices()] == [(ref.uid, GPU0)]
    assert await plugin.unprepare([ref]) == {ref.uid: ""}
    assert spec_files(node) == [] and agent.db.dra_devices() == []

    # A 1.36 kubelet (v1) gets the same answer and the same spec for the same claim.
    assert plugin.choose_service(DRA_SERVICES) == "v1.DRAPlugin"
    assert await plugin.prepare([ref]) == prepared
    assert claim_spec_document(node, ref.uid) == spec
    assert await plugin.unprepare([ref]) == {ref.uid: ""}
    assert spec_files(node) == []


async def test_re_registers_when_its_socket_is_removed_and_when_the_kubelet_restarts(
    api, start_agent, node, short_dir
):
    async with Kubelet(
        f"{short_dir}/kubelet", health_version="v1beta1", health_retry=0.5
    ) as kubelet:
        await start_agent(**dra_keys(node, api, short_dir))
        first = await kubelet.watcher.wait_registered(DRIVER)
        os.unlink(kubelet.registration_socket(DRIVER))
        second = await kubelet.watcher.wait_registered(DRIVER, after=first)
        assert os.path.exists(kubelet.registration_socket(DRIVER))
        await kubelet.restart()
        third = await kubelet.watcher.wait_registered(DRIVER, after=second)
        assert third.health is not None  # the 1.37 health stream works on the new one too
        reports = await third.health.wait_for(lambda latest: len(latest) == 2)
        assert {k: r.health for k, r in reports.items()} == {
            (NODE, "gpu-0"): "Healthy",
            (NODE, "gpu-1"): "Healthy",
        }


def xid_events(xid: int) -> str:
    return f'[[events]]\ngpu = 1\nkind = "xid"\nxid = {xid}\nat_seconds = 0\n'


async def test_an_xid_taints_the_device_and_the_health_stream_says_so_until_recovery(
    api, start_agent, node, kubelet, short_dir, monkeypatch
):
    # Once armed, another client updates the slice just before the driver's next write,
    # so that write is a genuine resourceVersion conflict the stand-in answers 409.
    armed: list[bool] = []
    original = ResourceApi.replace_slice

    def racing_replace(self: ResourceApi, name: str, body: dict[str, Any]) -> dict[str, Any]:
        if armed == [True]:
            armed[0] = False
            with kubernetes.client.ApiClient(api.configuration()) as client:
                other = kubernetes.client.ResourceV1Api(client)
                current = other.read_resource_slice(name)
                current.metadata.labels = {"touched-by": "someone-else"}
                other.replace_resource_slice(name, current)
        return original(self, name, body)

    monkeypatch.setattr(ResourceApi, "replace_slice", racing_replace)
    await start_agent(**dra_keys(node, api, short_dir, **{"gpu.dra.delete_slices_on_stop": True}))
    plugin = await kubelet.watcher.wait_registered(DRIVER)
    await eventually(lambda: pool(api), what="the ResourceSlice")
    assert plugin.health is not None
    await plugin.health.wait_for(lambda latest: len(latest) == 2)

    armed.append(True)
    node.write_simulation(simulation_toml(events=xid_events(63)))
    tainted = await eventually(lambda: pool(api).get("gpu-1", {}).get("taints"), what="a taint")
    assert [(t["key"], t["value"], t["effect"]) for t in tainted] == [
        ("gpu.model-agent.io/xid", "63", "NoSchedule")
    ]
    assert "taints" not in pool(api)["gpu-0"]
    assert generation(api) == 2
    # The other client's update, the driver's stale one (409), the driver's after a re-read.
    puts = await eventually(
        lambda: [r for r in api.requests_to("PUT", "/resourceslices/") if r.status == 200][1:],
        what="the driver's update to be recorded",
    )
    puts = api.requests_to("PUT", "/resourceslices/")
    assert [r.status for r in puts] == [200, 409, 200]
    assert [bool(r.body["metadata"].get("labels")) for r in puts] == [True, False, False]
    reports = await plugin.health.wait_for(
        lambda latest: (
            latest.get((NODE, "gpu-1")) is not None
            and latest[(NODE, "gpu-1")].health == "Unhealthy"
        )
    )
    assert "XID 63" in reports[(NODE, "gpu-1")].message
    assert reports[(NODE, "gpu-0")].health == "Healthy"

    # No further critical XID for recovery_seconds (1 s) while NVML answers: healthy again.
    await eventually(lambda: "taints" not in pool(api).get("gpu-1", {"taints": 1}), what="recovery")
    assert generation(api) == 3
    await plugin.health.wait_for(lambda latest: latest[(NODE, "gpu-1")].health == "Healthy")

    # Someone deletes the slice; the kubelet registering the driver again republishes it.
    [item] = api.slices()
    with kubernetes.client.ApiClient(api.configuration()) as client:
        kubernetes.client.ResourceV1Api(client).delete_resource_slice(item["metadata"]["name"])
    await kubelet.restart()
    await eventually(lambda: pool(api), what="the slice published again")
    assert generation(api) == 4


async def test_slices_are_deleted_on_stop_when_configured_and_kept_otherwise(
    api, start_agent, node, kubelet, short_dir
):
    agent = await start_agent(**dra_keys(node, api, short_dir, **{"gpu.sharing.replicas": 2}))
    devices = await eventually(lambda: pool(api), what="the ResourceSlice")
    assert sorted(devices) == [f"gpu-{g}-replica-{r}" for g in (0, 1) for r in (0, 1)]
    assert agent.kubelet_plugins is not None and agent.kubelet_plugins.dra is not None
    await asyncio.wait_for(agent.kubelet_plugins.dra.publisher.synced.wait(), 10)
    status = agent.kubelet_plugins.status_info()
    assert status["paths"] == {GPU0: "dra", GPU1: "dra"}
    assert status["dra"]["node"] == NODE and status["dra"]["poolGeneration"] == 1
    await agent.stop(grace=0)
    assert len(api.slices()) == 1  # kept across restarts and upgrades by default
    again = await start_agent(
        **dra_keys(node, api, short_dir, **{"gpu.dra.delete_slices_on_stop": True})
    )
    await again.stop(grace=0)
    assert api.slices() == []
    assert not os.path.exists(kubelet.registration_socket(DRIVER))


async def test_the_kubelet_deletes_the_slices_of_an_uninstalled_driver_not_of_a_restarted_one(
    short_dir,
    images,  # noqa: F811
    node,
    api,
):
    """With ``delete_slices_on_stop = false`` the agent leaves its slices to the kubelet,
    which deletes a driver's slices once its plugin has been gone for a grace period (30 s;
    here 4 s): an agent restart is back in time and keeps them, an uninstall is not."""

    def wipe(driver: str) -> None:  # the kubelet's deletecollection, by node and driver
        fields = f"spec.nodeName={NODE},spec.driver={driver}"
        api.store.delete_slices({"fieldSelector": fields})

    async with Kubelet(f"{short_dir}/kubelet", slice_wiper=wipe, wipe_delay=4.0) as kubelet:
        keys = dra_keys(node, api, short_dir)
        async with environment(short_dir, images, **keys) as env:
            first = await kubelet.watcher.wait_registered(DRIVER)
            await eventually(lambda: pool(api), what="the ResourceSlice")
            await env.restart_agent()
            again = await kubelet.watcher.wait_registered(DRIVER, after=first, timeout=30)
            assert again.generation > first.generation
            await asyncio.sleep(5.0)  # past the grace period of the restart's gap
            assert kubelet.watcher.wiped == [] and sorted(pool(api)) == ["gpu-0", "gpu-1"]
        # The agent is gone (as after `model-agent uninstall`): its sockets went with it.
        await eventually(lambda: kubelet.watcher.wiped == [DRIVER], timeout=20, what="a wipe")
        assert api.slices() == []
