"""The CRI server end to end: a real agent on a temp unix socket, a real gRPC client."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import urllib.request
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from agent.api.cri.runtime.v1 import api_pb2 as pb
from agent.app import Agent
from agent.ctl.client import CriClient
from agent.errors import FailedPrecondition
from agent.health import NodeHealth
from tests.conftest import make_config
from tests.support import run

pytestmark = pytest.mark.integration


def details(error: grpc.aio.AioRpcError) -> str:
    return error.details() or ""


#: RPCs this agent answers; every other one must say UNIMPLEMENTED clearly.
IMPLEMENTED = {
    "Version",
    "Status",
    "RuntimeConfig",
    "UpdateRuntimeConfig",
    "RunPodSandbox",
    "StopPodSandbox",
    "RemovePodSandbox",
    "PodSandboxStatus",
    "ListPodSandbox",
    "StreamPodSandboxes",
    "UpdatePodSandboxResources",
    "CreateContainer",
    "StartContainer",
    "StopContainer",
    "RemoveContainer",
    "ContainerStatus",
    "ListContainers",
    "StreamContainers",
    "UpdateContainerResources",
    "ReopenContainerLog",
    "ExecSync",
    "Exec",
    "Attach",
    "PortForward",
    "ContainerStats",
    "ListContainerStats",
    "StreamContainerStats",
    "PodSandboxStats",
    "ListPodSandboxStats",
    "StreamPodSandboxStats",
    "ListMetricDescriptors",
    "ListPodSandboxMetrics",
    "StreamPodSandboxMetrics",
    "GetContainerEvents",
    "ListImages",
    "StreamImages",
    "ImageStatus",
    "PullImage",
    "RemoveImage",
    "ImageFsInfo",
}


def write_bridge_conflist(directory: str) -> None:
    os.makedirs(directory, exist_ok=True)
    conflist = {
        "cniVersion": "1.0.0",
        "name": "test-net",
        "plugins": [
            {"type": "bridge", "bridge": run.bridge("ma-c"), "ipam": {"type": "host-local"}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }
    with open(os.path.join(directory, "10-test.conflist"), "w") as f:
        json.dump(conflist, f)


@pytest.fixture
async def agent(config):
    agent = Agent(config)
    await agent.start()
    try:
        yield agent
    finally:
        await agent.stop(grace=1)


@pytest.fixture
async def cri(agent):
    async with CriClient(agent.socket_path, timeout=10) as client:
        yield client


async def test_version(cri):
    resp = await cri.runtime.Version(pb.VersionRequest(version="0.1.0"))
    assert resp.version == "0.1.0"
    assert resp.runtime_name == "model-agent"
    assert resp.runtime_version == "0.1.0"
    assert resp.runtime_api_version == "v1"


async def test_status_reports_ready_with_the_agents_default_network(agent, cri):
    resp = await cri.runtime.Status(pb.StatusRequest(verbose=True))
    conditions = {c.type: c for c in resp.status.conditions}
    assert conditions["RuntimeReady"].status is True
    assert conditions["NetworkReady"].status is True
    own = os.path.join(agent.config.agent.root_dir, "cni", "net.d", "10-model-agent.conflist")
    assert resp.info["cniConfig"] == own
    assert [h.name for h in resp.runtime_handlers][:2] == ["", "crun"]


async def test_status_network_not_ready_without_usable_plugins(short_dir):
    os.makedirs(f"{short_dir}/no-plugins")
    agent = Agent(make_config(short_dir, **{"network.cni_bin_dirs": [f"{short_dir}/no-plugins"]}))
    await agent.start()
    try:
        async with CriClient(agent.socket_path) as cri:
            resp = await cri.runtime.Status(pb.StatusRequest())
    finally:
        await agent.stop(grace=0)
    network = {c.type: c for c in resp.status.conditions}["NetworkReady"]
    assert network.status is False
    assert network.reason == "NetworkPluginNotReady"
    assert "plugin 'bridge' not found" in network.message
    assert dict(resp.info) == {}


async def test_status_network_ready_with_a_usable_cni_config(agent, cri):
    write_bridge_conflist(agent.config.network.cni_conf_dir)
    resp = await cri.runtime.Status(pb.StatusRequest(verbose=True))
    conditions = {c.type: c for c in resp.status.conditions}
    assert conditions["NetworkReady"].status is True
    assert resp.info["cniConfig"].endswith("10-test.conflist")
    versions = json.loads(resp.info["versions"])
    assert versions["runc"].startswith("runc version")
    assert versions["conmon"].startswith("conmon version")
    assert "1.0.0" in versions["cni/bridge"]
    assert json.loads(resp.info["config"])["agent"]["socket"] == agent.socket_path


async def test_status_reports_a_missing_runtime_binary(short_dir):
    config = make_config(short_dir, **{"runtime.handlers": {"runc": {"path": "/nope/runc"}}})
    agent = Agent(config)
    await agent.start()
    try:
        async with CriClient(agent.socket_path) as cri:
            resp = await cri.runtime.Status(pb.StatusRequest())
        runtime = {c.type: c for c in resp.status.conditions}["RuntimeReady"]
        assert runtime.status is False
        assert runtime.reason == "RuntimeBinaryUnusable"
        assert "/nope/runc" in runtime.message
        assert "runc" not in [h.name for h in resp.runtime_handlers]
    finally:
        await agent.stop(grace=0)


@pytest.mark.parametrize(
    ("driver", "expected"), [("cgroupfs", pb.CGROUPFS), ("systemd", pb.SYSTEMD)]
)
async def test_runtime_config_reports_the_configured_cgroup_driver(short_dir, driver, expected):
    agent = Agent(make_config(short_dir, **{"runtime.cgroup_driver": driver}))
    await agent.start()
    try:
        async with CriClient(agent.socket_path) as cri:
            resp = await cri.runtime.RuntimeConfig(pb.RuntimeConfigRequest())
        assert resp.linux.cgroup_driver == expected
    finally:
        await agent.stop(grace=0)


async def list_services(channel) -> dict[str, list[descriptor_pb2.MethodDescriptorProto]]:
    stub: Any = reflection_pb2_grpc.ServerReflectionStub(channel)  # stubs type it sync-only

    async def ask(**kwargs):
        async for resp in stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(**kwargs)])
        ):
            return resp
        raise AssertionError("no reflection answer")

    names = [s.name for s in (await ask(list_services="")).list_services_response.service]
    result = {}
    for name in names:
        if not name.startswith("runtime.v1."):
            continue
        resp = await ask(file_containing_symbol=name)
        for blob in resp.file_descriptor_response.file_descriptor_proto:
            fd = descriptor_pb2.FileDescriptorProto.FromString(blob)
            for service in fd.service:
                if f"{fd.package}.{service.name}" == name:
                    result[name] = list(service.method)
    return result


async def test_reflection_shows_41_rpcs_and_each_answers(agent, cri):
    services = await list_services(cri.channel)
    assert set(services) == {"runtime.v1.RuntimeService", "runtime.v1.ImageService"}
    methods = [(svc, m) for svc, ms in services.items() for m in ms]
    assert len(methods) == 41
    for service, method in methods:
        request_cls = getattr(pb, method.input_type.rsplit(".", 1)[-1])
        path = f"/{service}/{method.name}"
        if method.server_streaming:
            call = cri.channel.unary_stream(
                path,
                request_serializer=request_cls.SerializeToString,
                response_deserializer=lambda b: b,
            )
            # GetContainerEvents never ends by itself: it must still be open at its deadline.
            endless = method.name == "GetContainerEvents"
            stream = call(request_cls(), timeout=2 if endless else 10)

            async def drain(stream=stream):
                return [item async for item in stream]

            coro = drain()
        else:
            call = cri.channel.unary_unary(
                path,
                request_serializer=request_cls.SerializeToString,
                response_deserializer=lambda b: b,
            )
            coro = call(request_cls(), timeout=10)
        if method.name in IMPLEMENTED:
            try:
                await coro
            except grpc.aio.AioRpcError as exc:  # an empty request may be invalid
                expected = grpc.StatusCode.INVALID_ARGUMENT
                if method.name == "GetContainerEvents":
                    expected = grpc.StatusCode.DEADLINE_EXCEEDED
                assert exc.code() == expected, method.name
            else:
                assert method.name != "GetContainerEvents", "the event stream ended"
            continue
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await coro
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED, method.name
        assert f"{method.name} is not implemented by model-agent" in details(info.value)


async def test_malformed_request_gets_invalid_argument_and_server_survives(cri):
    raw = cri.channel.unary_unary(
        "/runtime.v1.RuntimeService/Version",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await raw(b"\xff\xff\xff\xff", timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "malformed Version request" in details(info.value)
    resp = await cri.runtime.Version(pb.VersionRequest(), timeout=10)
    assert resp.runtime_name == "model-agent"


async def test_unknown_method_is_unimplemented(cri):
    raw = cri.channel.unary_unary("/runtime.v1.RuntimeService/Teleport")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await raw(b"", timeout=10)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


class BrokenHealth(NodeHealth):
    async def check(self, *, verbose: bool = False):
        raise RuntimeError("bug: secret detail in a traceback")


async def test_internal_error_is_answered_without_traceback_and_server_survives(config, caplog):
    agent = Agent(config, health=BrokenHealth(config, own_conf_dir="/nonexistent"))
    await agent.start()
    try:
        async with CriClient(agent.socket_path, timeout=10) as cri:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await cri.runtime.Status(pb.StatusRequest(), timeout=10)
            assert info.value.code() == grpc.StatusCode.INTERNAL
            assert "internal error in Status" in details(info.value)
            assert "secret detail" not in details(info.value)
            assert "Traceback" not in details(info.value)
            resp = await cri.runtime.Version(pb.VersionRequest(), timeout=10)
            assert resp.version == "0.1.0"
    finally:
        await agent.stop(grace=0)
    assert "secret detail" in caplog.text  # the traceback went to the log


async def test_concurrent_calls(cri):
    calls = [cri.runtime.Version(pb.VersionRequest(), timeout=20) for _ in range(150)]
    calls += [cri.runtime.Status(pb.StatusRequest(), timeout=20) for _ in range(50)]
    results = await asyncio.gather(*calls)
    assert len(results) == 200
    assert all(r.runtime_name == "model-agent" for r in results[:150])


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain")
        return resp.read().decode()


async def test_metrics_count_rpcs_by_operation_and_code(agent, cri):
    await cri.runtime.Version(pb.VersionRequest())
    await cri.runtime.Version(pb.VersionRequest())
    with pytest.raises(grpc.aio.AioRpcError):
        await cri.runtime.CheckpointContainer(pb.CheckpointContainerRequest())
    text = await asyncio.to_thread(fetch, agent.metrics_server.url)
    assert 'model_agent_cri_operations_total{code="OK",operation="Version"} 2.0' in text
    assert (
        'model_agent_cri_operations_total{code="UNIMPLEMENTED",operation="CheckpointContainer"} 1.0'
        in text
    )
    assert 'model_agent_cri_operation_duration_seconds_count{operation="Version"} 2.0' in text
    assert 'model_agent_build_info{version="0.1.0"} 1.0' in text


async def test_rpcs_are_unavailable_until_recovery_finishes(config):
    release = asyncio.Event()
    agent = Agent(config)

    async def slow_recovery():
        await release.wait()

    agent.recovery_steps.append(("slow", slow_recovery))
    starting = asyncio.create_task(agent.start())
    try:
        for _ in range(100):
            if os.path.exists(agent.socket_path):
                break
            await asyncio.sleep(0.05)
        async with CriClient(agent.socket_path, timeout=10) as cri:
            resp = await cri.runtime.Version(pb.VersionRequest())
            assert resp.version == "0.1.0"
            status = await cri.runtime.Status(pb.StatusRequest())
            runtime = {c.type: c for c in status.status.conditions}["RuntimeReady"]
            assert (runtime.status, runtime.reason) == (False, "AgentRecovering")
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await cri.runtime.RuntimeConfig(pb.RuntimeConfigRequest())
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "recovering" in details(info.value)
            release.set()
            await starting
            config_resp = await cri.runtime.RuntimeConfig(pb.RuntimeConfigRequest())
            assert config_resp.linux.cgroup_driver == pb.CGROUPFS
    finally:
        release.set()
        await starting
        await agent.stop(grace=0)


async def test_socket_and_dir_permissions(agent):
    st = os.stat(agent.socket_path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o660
    # Traversable, never listable: a user-namespaced container's runtime must reach its
    # rootfs below it; what holds secrets below it is 0700.
    state_dir = agent.config.agent.state_dir
    assert stat.S_IMODE(os.stat(state_dir).st_mode) == 0o711
    for private in ("exits", "conmon"):
        assert stat.S_IMODE(os.stat(f"{state_dir}/{private}").st_mode) == 0o700


async def test_stale_socket_is_replaced(config):
    os.makedirs(config.agent.state_dir, mode=0o700)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(config.socket_path)
    stale.close()  # bound, never listened: a dead agent's leftover
    agent = Agent(config)
    await agent.start()
    try:
        async with CriClient(agent.socket_path, timeout=10) as cri:
            await cri.runtime.Version(pb.VersionRequest())
    finally:
        await agent.stop(grace=0)
    assert not os.path.exists(config.socket_path)


async def test_second_agent_on_the_same_socket_refuses_and_leaves_the_first_alone(agent, short_dir):
    # Another state dir (no lock conflict) but the same socket path.
    os.makedirs(f"{short_dir}/other")
    other = make_config(f"{short_dir}/other", **{"agent.socket": agent.socket_path})
    second = Agent(other)
    with pytest.raises(FailedPrecondition, match="already serving"):
        await second.start()
    async with CriClient(agent.socket_path, timeout=10) as cri:
        assert (await cri.runtime.Version(pb.VersionRequest())).version == "0.1.0"


async def test_second_agent_on_the_same_state_dir_refuses(agent):
    second = Agent(agent.config)
    with pytest.raises(FailedPrecondition, match="in use by another model-agent"):
        await second.start()
    assert os.path.exists(agent.socket_path)


async def test_a_non_socket_at_the_socket_path_is_left_alone(config):
    os.makedirs(config.agent.state_dir, mode=0o700)
    with open(config.socket_path, "w") as f:
        f.write("precious")
    with pytest.raises(FailedPrecondition, match="is not a socket"):
        await Agent(config).start()
    with open(config.socket_path) as f:
        assert f.read() == "precious"


class SlowHealth(NodeHealth):
    async def check(self, *, verbose: bool = False):
        await asyncio.sleep(1.0)
        return await super().check(verbose=verbose)


async def test_stop_lets_in_flight_calls_finish(config):
    own = f"{config.agent.root_dir}/cni/net.d"
    agent = Agent(config, health=SlowHealth(config, own_conf_dir=own))
    await agent.start()
    async with CriClient(agent.socket_path, timeout=10) as cri:
        call = asyncio.ensure_future(cri.runtime.Status(pb.StatusRequest()))
        await asyncio.sleep(0.3)
        await agent.stop(grace=5)
        resp = await call
        assert len(resp.status.conditions) == 2
    assert not os.path.exists(config.socket_path)
