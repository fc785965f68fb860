"""``network.default_network``: when the agent's own bridge network stands in for the cluster's.

A kubelet node runs with ``never``: NetworkReady stays false (and pods are refused) until the
cluster's CNI writes its config, as with containerd and CRI-O."""

from __future__ import annotations

import os
import uuid

import grpc
import pytest

from agent.api.cri.runtime.v1 import api_pb2 as pb
from agent.ctl.client import CriClient
from tests.integration.test_cri_server import write_bridge_conflist

pytestmark = pytest.mark.integration


async def network_condition(agent) -> tuple[pb.RuntimeCondition, dict[str, str]]:
    async with CriClient(agent.socket_path, timeout=10) as cri:
        resp = await cri.runtime.Status(pb.StatusRequest(verbose=True))
    return {c.type: c for c in resp.status.conditions}["NetworkReady"], dict(resp.info)


def own_conflist(agent) -> str:
    return os.path.join(agent.config.agent.root_dir, "cni", "net.d", "10-model-agent.conflist")


async def test_never_waits_for_the_clusters_cni_then_uses_it(start_agent, short_dir):
    agent = await start_agent(**{"network.default_network": "never"})
    network, _ = await network_condition(agent)
    assert network.status is False
    assert network.reason == "NetworkPluginNotReady"
    assert "default_network = never" in network.message
    async with CriClient(agent.socket_path, timeout=10) as cri:
        config = pb.PodSandboxConfig(
            metadata=pb.PodSandboxMetadata(name="p", uid=uuid.uuid4().hex, namespace="n")
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await cri.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=config))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "network not ready" in (err.value.details() or "")
        listed = await cri.runtime.ListPodSandbox(pb.ListPodSandboxRequest())
        assert list(listed.items) == []

    write_bridge_conflist(agent.config.network.cni_conf_dir)  # the cluster's CNI arrives
    network, info = await network_condition(agent)
    assert network.status is True
    assert info["cniConfig"] == os.path.join(agent.config.network.cni_conf_dir, "10-test.conflist")


async def test_auto_prefers_the_clusters_config(start_agent):
    agent = await start_agent()
    assert agent.config.network.default_network == "auto"
    network, info = await network_condition(agent)
    assert network.status is True and info["cniConfig"] == own_conflist(agent)
    write_bridge_conflist(agent.config.network.cni_conf_dir)
    network, info = await network_condition(agent)
    assert info["cniConfig"] == os.path.join(agent.config.network.cni_conf_dir, "10-test.conflist")


async def test_always_ignores_the_clusters_config(start_agent, short_dir):
    write_bridge_conflist(f"{short_dir}/cni")
    agent = await start_agent(**{"network.default_network": "always"})
    network, info = await network_condition(agent)
    assert network.status is True
    assert info["cniConfig"] == own_conflist(agent)
