"""RuntimeService end to end: real runc, conmon, CNI and catatonit, images from a registry."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, cast

import grpc
import pytest

from agent.api.cri.runtime.v1 import api_pb2 as pb
from agent.app import Agent
from agent.ctl.client import CriClient
from tests.conftest import make_config
from tests.support import run
from tests.support.images import build_image, busybox_image, busybox_layer
from tests.support.layers import File, layer
from tests.support.network import HostNetworkState
from tests.support.push import RegistryClient

pytestmark = pytest.mark.integration

MASKED = [
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
]
READONLY = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]


def details(error: grpc.aio.AioRpcError) -> str:
    return error.details() or ""


@pytest.fixture(scope="session")
def images(registry) -> dict[str, str]:
    """References of the test images in the session registry."""
    client = RegistryClient(registry.url)
    client.push_image("pods/busybox", busybox_image(), tag="latest")
    client.push_image(
        "pods/busybox-user", busybox_image(user="app", stop_signal="SIGUSR1"), tag="latest"
    )
    client.push_image(
        "pods/entrypoint",
        busybox_image(entrypoint=["echo", "from-entrypoint"], cmd=["default-arg"]),
        tag="latest",
    )
    weights = build_image([busybox_layer(), layer([File("model/weights.bin", b"w" * 4096)])])
    client.push_image("pods/model", weights, tag="latest")
    return {
        name: f"{registry.host}/pods/{name}:latest"
        for name in ("busybox", "busybox-user", "entrypoint", "model")
    }


@dataclass
class Env:
    agent: Agent
    cri: CriClient
    base: str
    cgroup_parent: str
    images: dict[str, str]

    def sandbox_config(self, name: str = "", **changes: Any) -> pb.PodSandboxConfig:
        name = name or f"pod-{uuid.uuid4().hex[:6]}"
        config = pb.PodSandboxConfig(
            metadata=pb.PodSandboxMetadata(name=name, uid=uuid.uuid4().hex, namespace="test"),
            hostname=name,
            log_directory=f"{self.base}/logs/{name}",
            linux=pb.LinuxPodSandboxConfig(cgroup_parent=self.cgroup_parent),
            labels={"app": name},
        )
        for key, value in changes.items():
            if isinstance(value, list):
                getattr(config, key).extend(value)
            elif hasattr(getattr(config, key), "CopyFrom"):
                getattr(config, key).CopyFrom(value)
            else:
                setattr(config, key, value)
        return config

    async def run_pod(self, config: pb.PodSandboxConfig | None = None, **kw: Any) -> str:
        config = config or self.sandbox_config()
        resp = await self.cri.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=config, **kw))
        return resp.pod_sandbox_id

    def container_config(
        self, name: str, *command: str, image: str = "busybox", **changes: Any
    ) -> pb.ContainerConfig:
        config = pb.ContainerConfig(
            metadata=pb.ContainerMetadata(name=name),
            image=pb.ImageSpec(image=self.images[image]),
            command=list(command),
            log_path=f"{name}/0.log",
            linux=pb.LinuxContainerConfig(
                security_context=pb.LinuxContainerSecurityContext(
                    masked_paths=MASKED, readonly_paths=READONLY
                )
            ),
        )
        for key, value in changes.items():
            if isinstance(value, list):
                getattr(config, key).extend(value)
            elif hasattr(getattr(config, key), "CopyFrom"):
                getattr(config, key).CopyFrom(value)
            else:
                setattr(config, key, value)
        return config

    async def create(self, sandbox_id: str, config: pb.ContainerConfig) -> str:
        resp = await self.cri.runtime.CreateContainer(
            pb.CreateContainerRequest(pod_sandbox_id=sandbox_id, config=config)
        )
        return resp.container_id

    async def create_refused(
        self,
        sandbox_id: str,
        config: pb.ContainerConfig,
        fragment: str,
        code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT,
    ) -> None:
        """CreateContainer fails with ``code`` naming ``fragment``, and no container exists."""
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await self.create(sandbox_id, config)
        assert info.value.code() is code, info.value.details()
        assert fragment in (info.value.details() or "")
        listed = await self.cri.runtime.ListContainers(pb.ListContainersRequest())
        assert list(listed.containers) == []

    async def start(self, container_id: str) -> None:
        await self.cri.runtime.StartContainer(pb.StartContainerRequest(container_id=container_id))

    async def run(self, sandbox_id: str, name: str, *command: str, **kw: Any) -> str:
        cid = await self.create(sandbox_id, self.container_config(name, *command, **kw))
        await self.start(cid)
        return cid

    async def status(self, container_id: str) -> pb.ContainerStatus:
        resp = await self.cri.runtime.ContainerStatus(
            pb.ContainerStatusRequest(container_id=container_id)
        )
        return resp.status

    async def wait_exit(self, container_id: str, timeout: float = 20) -> pb.ContainerStatus:
        deadline = time.monotonic() + timeout
        while True:
            status = await self.status(container_id)
            if status.state == pb.CONTAINER_EXITED:
                return status
            assert time.monotonic() < deadline, f"{container_id} did not exit"
            await asyncio.sleep(0.05)

    async def exec(self, container_id: str, *cmd: str, timeout: int = 10) -> pb.ExecSyncResponse:
        return await self.cri.runtime.ExecSync(
            pb.ExecSyncRequest(container_id=container_id, cmd=list(cmd), timeout=timeout)
        )

    async def log(self, container_id: str, wait_for: str = "", timeout: float = 10) -> str:
        path = (await self.status(container_id)).log_path
        deadline = time.monotonic() + timeout
        while True:
            text = ""
            with contextlib.suppress(FileNotFoundError), open(path) as f:
                text = "".join(line.split(" ", 3)[3] for line in f if line.count(" ") >= 3)
            if wait_for in text or time.monotonic() > deadline:
                return text
            await asyncio.sleep(0.05)

    async def restart_agent(self) -> None:
        """Stop the agent (containers keep running) and start a new one on the same dirs."""
        await self.agent.stop(grace=0)
        self.agent = Agent(self.agent.config)
        await self.agent.start()

    async def remove_pod(self, sandbox_id: str) -> None:
        await self.cri.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sandbox_id))
        await self.cri.runtime.RemovePodSandbox(
            pb.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id)
        )


def cgroup_dirs(name: str) -> list[str]:
    root = "/sys/fs/cgroup"
    return [
        os.path.join(root, c, name.strip("/"))
        for c in os.listdir(root)
        if os.path.isdir(os.path.join(root, c, name.strip("/")))
    ]


def delete_link(name: str) -> None:
    subprocess.run(["ip", "link", "del", name], capture_output=True, check=False)


@contextlib.asynccontextmanager
async def environment(
    short_dir: str, images: dict[str, str], **overrides: Any
) -> AsyncIterator[Env]:
    """An agent with its own bridge, subnet and cgroup parent; all removed afterwards."""
    bridge = run.bridge("ma-t")
    cgroup_parent = run.cgroup_parent()
    values = {
        "network.bridge": bridge,
        "network.pod_cidr": str(run.subnet("10.252.0.0/16")),
        **overrides,
    }
    host = HostNetworkState.capture()
    agent = Agent(make_config(short_dir, **values))
    await agent.start()
    env: Env | None = None
    try:
        async with CriClient(agent.socket_path, timeout=120) as cri:
            await cri.images.PullImage(
                pb.PullImageRequest(image=pb.ImageSpec(image=images["busybox"]))
            )
            env = Env(agent, cri, short_dir, cgroup_parent, images)
            try:
                yield env
            finally:
                listed = await cri.runtime.ListPodSandbox(pb.ListPodSandboxRequest())
                for pod in listed.items:
                    await env.remove_pod(pod.id)
    finally:
        # A test may have restarted the agent (env.agent is then the new one).
        await (env.agent if env is not None else agent).stop(grace=0)
        delete_link(bridge)
        host.restore("model-agent", [])  # portmap's shared chains, if this test made them
        for path in sorted(cgroup_dirs(cgroup_parent), key=len, reverse=True):
            for child in sorted(
                (os.path.join(p, d) for p, ds, _ in os.walk(path) for d in ds),
                key=len,
                reverse=True,
            ):
                os.rmdir(child)
            os.rmdir(path)


@pytest.fixture
async def env(short_dir, images) -> AsyncIterator[Env]:
    async with environment(short_dir, images) as env:
        yield env


# -- the basic walk-through -------------------------------------------------------------


async def test_pod_with_a_container_end_to_end(env):
    sid = await env.run_pod()
    pod = await env.cri.runtime.PodSandboxStatus(
        pb.PodSandboxStatusRequest(pod_sandbox_id=sid, verbose=True)
    )
    assert pod.status.state == pb.SANDBOX_READY
    ip = pod.status.network.ip
    assert ip.startswith("10.252.")
    info = json.loads(pod.info["info"])
    assert os.path.exists(info["netns"])

    cid = await env.run(
        sid, "web", "sh", "-c", "echo started; echo to-stderr >&2; nc -ll -p 8080 -e echo pong"
    )
    assert "started" in await env.log(cid, "started")
    status = await env.status(cid)
    assert status.state == pb.CONTAINER_RUNNING
    assert status.log_path == f"{env.base}/logs/{pod.status.metadata.name}/web/0.log"
    assert status.started_at > status.created_at > 0
    with open(status.log_path) as f:
        lines = f.read().splitlines()
    assert any(" stderr F to-stderr" in line for line in lines)

    result = await env.exec(cid, "sh", "-c", "echo out; echo err >&2; hostname; exit 7")
    assert (result.stdout, result.stderr, result.exit_code) == (
        f"out\n{pod.status.metadata.name}\n".encode(),
        b"err\n",
        7,
    )

    # The host reaches a port inside the pod.
    for _ in range(100):
        with contextlib.suppress(OSError), socket.create_connection((ip, 8080), timeout=2) as conn:
            assert conn.recv(16).startswith(b"pong")
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("could not reach the pod")

    await env.cri.runtime.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=5))
    stopped = await env.status(cid)
    assert stopped.state == pb.CONTAINER_EXITED
    assert stopped.finished_at >= stopped.started_at
    await env.cri.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=cid))
    assert os.path.exists(status.log_path)  # logs stay for the kubelet
    await env.remove_pod(sid)
    listed = await env.cri.runtime.ListPodSandbox(pb.ListPodSandboxRequest())
    assert [p.id for p in listed.items] == []
    assert not os.path.exists(info["netns"])
    ipam = f"{env.agent.config.agent.root_dir}/cni/ipam"
    assert not any(ip in files for _, _, files in os.walk(ipam))
    with open("/proc/mounts") as f:
        assert not [line for line in f if sid in line or cid in line]
    assert not cgroup_dirs(f"{env.cgroup_parent}/{cid}")


async def test_exit_codes_and_reasons_round_trip(env):
    sid = await env.run_pod()
    ok = await env.run(sid, "ok", "true")
    failed = await env.run(sid, "failed", "sh", "-c", "exit 42")
    assert (await env.wait_exit(ok)).exit_code == 0
    assert (await env.wait_exit(ok)).reason == "Completed"
    status = await env.wait_exit(failed)
    assert (status.exit_code, status.reason) == (42, "Error")


async def test_sigterm_ignored_is_killed_at_the_timeout(env):
    sid = await env.run_pod()
    cid = await env.run(
        sid, "stubborn", "sh", "-c", "trap '' TERM; echo ready; while :; do sleep 1; done"
    )
    await env.log(cid, "ready")
    started = time.monotonic()
    await env.cri.runtime.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=2))
    elapsed = time.monotonic() - started
    status = await env.status(cid)
    assert status.state == pb.CONTAINER_EXITED
    assert status.exit_code == 137
    assert 1.8 < elapsed < 15
    # Stop and remove are idempotent, for unknown ids too.
    await env.cri.runtime.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=2))
    await env.cri.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=cid))
    await env.cri.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=cid))
    await env.cri.runtime.StopContainer(pb.StopContainerRequest(container_id="f" * 64))
    await env.cri.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id="f" * 64))
    await env.cri.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id="f" * 64))


async def test_image_stop_signal_is_used(env):
    await env.cri.images.PullImage(
        pb.PullImageRequest(image=pb.ImageSpec(image=env.images["busybox-user"]))
    )
    sid = await env.run_pod()
    cid = await env.run(
        sid,
        "usr1",
        "sh",
        "-c",
        "trap 'echo got-usr1; exit 5' USR1; echo ready; while :; do sleep 1; done",
        image="busybox-user",
    )
    await env.log(cid, "ready")
    await env.cri.runtime.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=10))
    status = await env.status(cid)
    assert status.exit_code == 5
    assert "got-usr1" in await env.log(cid, "got-usr1")


async def test_oom_killed_is_reported(env):
    sid = await env.run_pod()
    resources = pb.LinuxContainerResources(memory_limit_in_bytes=16 << 20)
    config = env.container_config(
        "hog",
        "sh",
        "-c",
        "x=$(head -c 67108864 /dev/zero | tr '\\0' a); echo $x | wc -c",
        linux=pb.LinuxContainerConfig(resources=resources),
    )
    cid = await env.create(sid, config)
    await env.start(cid)
    status = await env.wait_exit(cid, timeout=30)
    assert status.reason == "OOMKilled", (status.exit_code, status.reason)
    assert status.exit_code == 137


async def test_image_entrypoint_cmd_user_env_and_workdir(env):
    await env.cri.images.PullImage(
        pb.PullImageRequest(image=pb.ImageSpec(image=env.images["entrypoint"]))
    )
    await env.cri.images.PullImage(
        pb.PullImageRequest(image=pb.ImageSpec(image=env.images["busybox-user"]))
    )
    sid = await env.run_pod()
    defaults = await env.run(sid, "defaults", image="entrypoint")
    args = await env.create(sid, env.container_config("args", image="entrypoint", args=["given"]))
    await env.start(args)
    assert "from-entrypoint default-arg" in await env.log(defaults, "default-arg")
    assert "from-entrypoint given" in await env.log(args, "given")
    user = await env.run(
        sid,
        "user",
        "sh",
        "-c",
        "id; pwd; echo $GREETING; sleep 100",
        image="busybox-user",
        working_dir="/tmp",
        envs=[pb.KeyValue(key="GREETING", value="hi")],
    )
    text = await env.log(user, "hi")
    assert "uid=1000(app) gid=1000(app)" in text
    assert "/tmp" in text
    status = await env.status(user)
    assert (status.user.linux.uid, status.user.linux.gid) == (1000, 1000)


async def test_security_context(env):
    sid = await env.run_pod()
    sc = pb.LinuxContainerSecurityContext(
        run_as_user=pb.Int64Value(value=1234),
        run_as_group=pb.Int64Value(value=5678),
        supplemental_groups=[42],
        readonly_rootfs=True,
        no_new_privs=True,
        capabilities=pb.Capability(drop_capabilities=["ALL"], add_capabilities=["NET_RAW"]),
        seccomp=pb.SecurityProfile(profile_type=pb.SecurityProfile.RuntimeDefault),
        masked_paths=MASKED,
        readonly_paths=READONLY,
    )
    cid = await env.run(
        sid, "locked", "sleep", "1000", linux=pb.LinuxContainerConfig(security_context=sc)
    )
    result = await env.exec(cid, "id")
    assert result.stdout.decode().startswith("uid=1234 gid=5678 groups=42")
    status = await env.exec(
        cid, "sh", "-c", "grep -E '^(CapBnd|NoNewPrivs|Seccomp):' /proc/self/status"
    )
    fields = dict(line.split(":\t") for line in status.stdout.decode().splitlines())
    assert fields["CapBnd"] == f"{1 << 13:016x}"  # CAP_NET_RAW only
    assert fields["NoNewPrivs"] == "1"
    assert fields["Seccomp"] == "2"
    assert (await env.exec(cid, "touch", "/newfile")).exit_code != 0  # read-only rootfs
    assert (await env.exec(cid, "cat", "/proc/kcore")).exit_code != 0  # masked
    assert (await env.exec(cid, "sh", "-c", "echo 1 > /proc/sys/kernel/panic")).exit_code != 0

    privileged = pb.LinuxContainerSecurityContext(privileged=True)
    priv = await env.run(
        sid, "priv", "sleep", "1000", linux=pb.LinuxContainerConfig(security_context=privileged)
    )
    caps = await env.exec(priv, "sh", "-c", "grep CapEff /proc/self/status")
    with open("/proc/self/status") as f:
        agent_caps = next(line.split()[1] for line in f if line.startswith("CapBnd:"))
    assert caps.stdout.split()[1].decode() == agent_caps  # everything the agent holds


async def test_pid_namespace_modes_and_sysctls(env):
    pod_pid = env.sandbox_config()
    pod_pid.linux.security_context.namespace_options.pid = pb.POD
    pod_pid.linux.sysctls["net.ipv4.ip_unprivileged_port_start"] = "80"
    sid = await env.run_pod(pod_pid)
    sc = pb.LinuxContainerSecurityContext(
        namespace_options=pb.NamespaceOption(pid=pb.POD),
        masked_paths=MASKED,
        readonly_paths=READONLY,
    )
    cid = await env.run(
        sid, "shared", "sleep", "1000", linux=pb.LinuxContainerConfig(security_context=sc)
    )
    ps = await env.exec(cid, "ps")
    assert "catatonit" in ps.stdout.decode()  # the pod's infra is visible in a shared PID ns
    sysctl = await env.exec(cid, "cat", "/proc/sys/net/ipv4/ip_unprivileged_port_start")
    assert sysctl.stdout.strip() == b"80"

    own_sc = pb.LinuxContainerSecurityContext(
        namespace_options=pb.NamespaceOption(pid=pb.CONTAINER),
        masked_paths=MASKED,
        readonly_paths=READONLY,
    )
    own = await env.run(
        sid, "own", "sleep", "1000", linux=pb.LinuxContainerConfig(security_context=own_sc)
    )
    ps = await env.exec(own, "ps")
    assert "catatonit" not in ps.stdout.decode()


async def test_host_network_pod_and_host_port(env):
    host = env.sandbox_config()
    host.linux.security_context.namespace_options.network = pb.NODE
    sid = await env.run_pod(host)
    status = await env.cri.runtime.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=sid))
    assert status.status.network.ip == ""
    assert status.status.linux.namespaces.options.network == pb.NODE
    cid = await env.run(sid, "hostnet", "sleep", "1000")
    links = await env.exec(cid, "cat", "/proc/net/dev")
    with open("/proc/net/dev") as f:
        host = {line.split(":")[0].strip() for line in f if ":" in line}
    seen = {
        line.split(":")[0].strip() for line in links.stdout.decode().splitlines() if ":" in line
    }
    assert seen == host  # the host's interfaces, not a pod's eth0

    port = 20000 + os.getpid() % 10000
    mapped = env.sandbox_config(port_mappings=[pb.PortMapping(container_port=80, host_port=port)])
    sid2 = await env.run_pod(mapped)
    await env.run(sid2, "web", "nc", "-ll", "-p", "80", "-e", "echo", "via-hostport")
    gateway = str(ipaddress.ip_network(env.agent.config.network.pod_cidr)[1])
    for _ in range(100):
        with (
            contextlib.suppress(OSError),
            socket.create_connection((gateway, port), timeout=2) as conn,
        ):
            assert conn.recv(32).startswith(b"via-hostport")
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("hostPort mapping did not work")


async def test_mounts_and_propagation(env, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "hello").write_text("from host")
    sid = await env.run_pod()
    mounts = [pb.Mount(container_path="/data", host_path=str(data), readonly=True)]
    cid = await env.run(sid, "mounted", "sleep", "1000", mounts=mounts)
    assert (await env.exec(cid, "cat", "/data/hello")).stdout == b"from host"
    assert (await env.exec(cid, "touch", "/data/new")).exit_code != 0
    status = await env.status(cid)
    assert [(m.container_path, m.host_path, m.readonly) for m in status.mounts] == [
        ("/data", str(data), True)
    ]
    resolv = await env.exec(cid, "cat", "/etc/hostname")
    assert resolv.stdout.strip().decode() == status.metadata.name or resolv.exit_code == 0


async def test_update_container_resources_live(env):
    sid = await env.run_pod()
    cid = await env.run(
        sid,
        "elastic",
        "sleep",
        "1000",
        linux=pb.LinuxContainerConfig(
            resources=pb.LinuxContainerResources(memory_limit_in_bytes=64 << 20, cpu_shares=512)
        ),
    )
    path = f"/sys/fs/cgroup/memory{env.cgroup_parent}/{cid}/memory.limit_in_bytes"
    with open(path) as f:
        assert int(f.read()) == 64 << 20
    await env.cri.runtime.UpdateContainerResources(
        pb.UpdateContainerResourcesRequest(
            container_id=cid,
            linux=pb.LinuxContainerResources(memory_limit_in_bytes=128 << 20, cpu_shares=1024),
        )
    )
    with open(path) as f:
        assert int(f.read()) == 128 << 20
    with open(f"/sys/fs/cgroup/cpu{env.cgroup_parent}/{cid}/cpu.shares") as f:
        assert int(f.read()) == 1024
    status = await env.status(cid)
    assert status.resources.linux.memory_limit_in_bytes == 128 << 20


async def test_reopen_container_log_after_rotation(env):
    sid = await env.run_pod()
    cid = await env.run(
        sid, "chatty", "sh", "-c", "i=0; while :; do echo line$i; i=$((i+1)); sleep 0.05; done"
    )
    path = (await env.status(cid)).log_path
    await env.log(cid, "line3")
    os.rename(path, path + ".1")
    await env.cri.runtime.ReopenContainerLog(pb.ReopenContainerLogRequest(container_id=cid))
    assert os.path.exists(path)
    await asyncio.sleep(0.3)
    with open(path) as f:
        fresh = f.read()
    assert "line" in fresh
    with open(path + ".1") as f:
        assert "line0" in f.read()


async def test_list_filters_and_streams(env):
    a = await env.run_pod(env.sandbox_config("alpha"))
    b = await env.run_pod(env.sandbox_config("beta"))
    ca = await env.run(a, "one", "sleep", "1000")
    cb = await env.create(b, env.container_config("two", "sleep", "1000"))
    rt = env.cri.runtime
    by_label = await rt.ListPodSandbox(
        pb.ListPodSandboxRequest(filter=pb.PodSandboxFilter(label_selector={"app": "alpha"}))
    )
    assert [p.id for p in by_label.items] == [a]
    by_prefix = await rt.ListPodSandbox(
        pb.ListPodSandboxRequest(filter=pb.PodSandboxFilter(id=b[:12]))
    )
    assert [p.id for p in by_prefix.items] == [b]
    running = await rt.ListContainers(
        pb.ListContainersRequest(
            filter=pb.ContainerFilter(state=pb.ContainerStateValue(state=pb.CONTAINER_RUNNING))
        )
    )
    assert [c.id for c in running.containers] == [ca]
    in_b = await rt.ListContainers(
        pb.ListContainersRequest(filter=pb.ContainerFilter(pod_sandbox_id=b))
    )
    assert [c.id for c in in_b.containers] == [cb]
    streamed = [
        c.id async for m in rt.StreamContainers(pb.StreamContainersRequest()) for c in m.containers
    ]
    assert sorted(streamed) == sorted([ca, cb])
    pods = [
        p.id
        async for m in rt.StreamPodSandboxes(pb.StreamPodSandboxesRequest())
        for p in m.pod_sandboxes
    ]
    assert sorted(pods) == sorted([a, b])
    status = await rt.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=a))
    assert [c.id for c in status.containers_statuses] == [ca]


@pytest.mark.slow
async def test_twenty_pods_in_parallel(env):
    configs = [env.sandbox_config(f"par-{i}") for i in range(20)]
    ids = await asyncio.gather(*(env.run_pod(c) for c in configs))
    assert len(set(ids)) == 20
    containers = await asyncio.gather(*(env.run(sid, "c", "sleep", "1000") for sid in ids))
    ips = set()
    for sid in ids:
        status = await env.cri.runtime.PodSandboxStatus(
            pb.PodSandboxStatusRequest(pod_sandbox_id=sid)
        )
        assert status.status.state == pb.SANDBOX_READY
        ips.add(status.status.network.ip)
    assert len(ips) == 20
    for cid in containers:
        assert (await env.status(cid)).state == pb.CONTAINER_RUNNING
    await asyncio.gather(*(env.remove_pod(sid) for sid in ids))
    assert (await env.cri.runtime.ListPodSandbox(pb.ListPodSandboxRequest())).items == []
    assert (await env.cri.runtime.ListContainers(pb.ListContainersRequest())).containers == []


async def test_crun_handler(env):
    try:
        sid = await env.run_pod(runtime_handler="crun")
    except grpc.aio.AioRpcError as exc:
        if "hybrid mode not supported" in details(exc):
            pytest.skip("crun 1.8 refuses this host's hybrid cgroup v1 layout; runc covers it")
        raise
    status = await env.cri.runtime.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=sid))
    assert status.status.runtime_handler == "crun"
    cid = await env.run(sid, "on-crun", "sh", "-c", "echo crun-ok; sleep 100")
    assert "crun-ok" in await env.log(cid, "crun-ok")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await env.run_pod(runtime_handler="kata")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "runtime handler 'kata'" in details(info.value)


# -- bad input ------------------------------------------------------------------------


async def expect(code: grpc.StatusCode, message: str, call: Any) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == code, details(info.value)
    assert message in details(info.value)


async def test_invalid_sandbox_requests_create_nothing(env):
    rt = env.cri.runtime
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    await expect(invalid, "config is required", rt.RunPodSandbox(pb.RunPodSandboxRequest()))
    no_uid = env.sandbox_config()
    no_uid.metadata.uid = ""
    await expect(
        invalid,
        "config.metadata.uid is required",
        rt.RunPodSandbox(pb.RunPodSandboxRequest(config=no_uid)),
    )
    bad_port = env.sandbox_config(port_mappings=[pb.PortMapping(container_port=70000)])
    await expect(
        invalid,
        "config.port_mappings[0].container_port",
        rt.RunPodSandbox(pb.RunPodSandboxRequest(config=bad_port)),
    )
    bad_proto = env.sandbox_config(
        port_mappings=[pb.PortMapping(container_port=80, protocol=cast(Any, 9))]
    )
    await expect(
        invalid,
        "config.port_mappings[0].protocol: unknown value 9",
        rt.RunPodSandbox(pb.RunPodSandboxRequest(config=bad_proto)),
    )
    bad_ns = env.sandbox_config()
    bad_ns.linux.security_context.namespace_options.network = 7
    await expect(
        invalid,
        "namespace_options.network: unknown value 7",
        rt.RunPodSandbox(pb.RunPodSandboxRequest(config=bad_ns)),
    )
    relative = env.sandbox_config(log_directory="relative/logs")
    await expect(
        invalid,
        "config.log_directory: 'relative/logs' is not an absolute path",
        rt.RunPodSandbox(pb.RunPodSandboxRequest(config=relative)),
    )
    assert (await rt.ListPodSandbox(pb.ListPodSandboxRequest())).items == []

    config = env.sandbox_config()
    await env.run_pod(config)
    await expect(
        grpc.StatusCode.ALREADY_EXISTS,
        "is already in use",
        rt.RunPodSandbox(pb.RunPodSandboxRequest(config=config)),
    )
    await expect(
        grpc.StatusCode.NOT_FOUND,
        "not found",
        rt.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id="0" * 64)),
    )


async def test_exec_sync_of_a_missing_command_is_an_exec_failure(env):
    """A kubelet reads NOT_FOUND as "the container is gone": a command that is not in
    the image is the exec's failure (127, runc's words on stderr), as with containerd."""
    sid = await env.run_pod()
    cid = await env.run(sid, "app", "sleep", "1000")
    missing = await env.exec(cid, "/no/such/command")
    assert missing.exit_code == 127
    assert b"/no/such/command" in missing.stderr
    not_executable = await env.exec(cid, "/etc/passwd")
    assert not_executable.exit_code == 126
    assert (await env.status(cid)).state == pb.CONTAINER_RUNNING  # untouched
    await env.cri.runtime.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=0))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await env.exec(cid, "true")
    assert info.value.code() is grpc.StatusCode.FAILED_PRECONDITION


async def test_invalid_container_requests_create_nothing(env, tmp_path):
    rt = env.cri.runtime
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    sid = await env.run_pod()

    def create(config: pb.ContainerConfig) -> Any:
        return rt.CreateContainer(pb.CreateContainerRequest(pod_sandbox_id=sid, config=config))

    await expect(
        invalid,
        "config is required",
        rt.CreateContainer(pb.CreateContainerRequest(pod_sandbox_id=sid)),
    )
    await expect(
        grpc.StatusCode.NOT_FOUND,
        "not found",
        rt.CreateContainer(
            pb.CreateContainerRequest(
                pod_sandbox_id="0" * 64, config=env.container_config("x", "true")
            )
        ),
    )
    no_image = env.container_config("x", "true")
    no_image.image.image = ""
    await expect(invalid, "config.image.image is required", create(no_image))
    relative = env.container_config(
        "x", "true", mounts=[pb.Mount(container_path="data", host_path="/tmp")]
    )
    await expect(
        invalid, "config.mounts[0].container_path: 'data' is not an absolute path", create(relative)
    )
    missing = env.container_config(
        "x", "true", mounts=[pb.Mount(container_path="/d", host_path=f"{tmp_path}/nope")]
    )
    await expect(invalid, "does not exist", create(missing))
    tiny = env.container_config(
        "x",
        "true",
        linux=pb.LinuxContainerConfig(
            resources=pb.LinuxContainerResources(memory_limit_in_bytes=1 << 20)
        ),
    )
    await expect(invalid, "below the minimum", create(tiny))
    shares = env.container_config(
        "x",
        "true",
        linux=pb.LinuxContainerConfig(resources=pb.LinuxContainerResources(cpu_shares=-5)),
    )
    await expect(invalid, "cpu_shares", create(shares))
    oom = env.container_config(
        "x",
        "true",
        linux=pb.LinuxContainerConfig(resources=pb.LinuxContainerResources(oom_score_adj=5000)),
    )
    await expect(invalid, "oom_score_adj", create(oom))
    bad_profile = tmp_path / "profile.json"
    bad_profile.write_text("{not json")
    seccomp = env.container_config(
        "x",
        "true",
        linux=pb.LinuxContainerConfig(
            security_context=pb.LinuxContainerSecurityContext(
                seccomp=pb.SecurityProfile(
                    profile_type=pb.SecurityProfile.Localhost, localhost_ref=str(bad_profile)
                )
            )
        ),
    )
    await expect(invalid, f"seccomp profile {bad_profile}", create(seccomp))
    unknown_image = env.container_config("x", "true")
    unknown_image.image.image = "127.0.0.1:1/never/pulled:v1"
    await expect(grpc.StatusCode.NOT_FOUND, "pull it first", create(unknown_image))
    host_dir = tmp_path / "host"
    host_dir.mkdir()
    for target in ("/", "/.", "//", "/etc/.."):  # the rootfs itself: runc would fill the host dir
        over_root = env.container_config(
            "x", "true", mounts=[pb.Mount(container_path=target, host_path=str(host_dir))]
        )
        await expect(invalid, "is the container's root filesystem", create(over_root))
    assert os.listdir(host_dir) == []  # no dev/, proc/, sys/ made in the host's directory
    no_command = env.container_config("nocmd", "/no/such/binary")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await create(no_command)
    assert info.value.code() is invalid  # what the user must fix, not UNKNOWN
    assert "the command is not in the image" in details(info.value)
    assert "/no/such/binary" in details(info.value)
    assert (await rt.ListContainers(pb.ListContainersRequest())).containers == []
    state_dir = env.agent.config.agent.state_dir
    assert os.listdir(f"{state_dir}/containers") == []  # nothing half-created
    # ... in the runtime's files either: conmon's dir and the attach link are the pod's only.
    assert os.listdir(f"{state_dir}/conmon") == [sid]
    assert os.listdir(f"{state_dir}/attach") == [sid]

    cid = await env.create(sid, env.container_config("once", "sleep", "100"))
    await expect(
        grpc.StatusCode.ALREADY_EXISTS,
        "already in use",
        create(env.container_config("once", "sleep", "100")),
    )
    await env.start(cid)
    await expect(
        grpc.StatusCode.FAILED_PRECONDITION,
        "not created",
        rt.StartContainer(pb.StartContainerRequest(container_id=cid)),
    )
    await expect(
        grpc.StatusCode.NOT_FOUND,
        "not found",
        rt.StartContainer(pb.StartContainerRequest(container_id="0" * 64)),
    )
    await expect(
        grpc.StatusCode.NOT_FOUND,
        "not found",
        rt.ContainerStatus(pb.ContainerStatusRequest(container_id="0" * 64)),
    )

    await rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sid))
    await expect(
        grpc.StatusCode.FAILED_PRECONDITION,
        "not ready",
        create(env.container_config("late", "true")),
    )
    assert (await env.status(cid)).state == pb.CONTAINER_EXITED  # stopping the pod stopped it


async def test_exec_sync_timeout_and_output_cap(env):
    sid = await env.run_pod()
    cid = await env.run(sid, "exec", "sleep", "1000")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await env.exec(cid, "sleep", "30", timeout=1)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    ps = await env.exec(cid, "ps")
    assert "sleep 30" not in ps.stdout.decode()  # the timed-out process was killed
    big = await env.exec(cid, "sh", "-c", "head -c 20000000 /dev/zero", timeout=30)
    assert len(big.stdout) == 8 << 20
