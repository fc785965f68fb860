"""Faults with real processes: kill -9 of the agent mid-RPC, dead monitors, bad plugins,
a full disk, a reboot. After each, every object is consistent and nothing leaks."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import stat
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
import pytest

from agent.api.cri.runtime.v1 import api_pb2 as pb
from agent.ctl.client import CriClient
from tests.integration.test_pods import MASKED, cgroup_dirs, delete_link, images  # noqa: F401
from tests.support import run
from tests.support.agent import AgentProcess
from tests.support.images import build_image
from tests.support.layers import File, layer
from tests.support.network import HostNetworkState
from tests.support.push import RegistryClient

pytestmark = pytest.mark.integration


def wrapper(path: str, real: str, *, on: str, marker: str, sleep: float, only_if: str = "") -> str:
    """A script standing in for ``real`` that pauses (and says so) when called for ``on``
    (and, if given, with an argument containing ``only_if``)."""
    with open(path, "w") as f:
        f.write(f"""#!/bin/sh
hit=""
case "$*" in *"{only_if}"*) ;; *) exec {real} "$@" ;; esac
[ "$CNI_COMMAND" = "{on}" ] && hit=1
for arg in "$@"; do
  [ "$arg" = "{on}" ] && hit=1
done
if [ -n "$hit" ]; then
  echo $$ > {marker}
  sleep {sleep}
fi
exec {real} "$@"
""")
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR)
    return path


async def wait_for(path: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        assert time.monotonic() < deadline, f"{path} never appeared"
        await asyncio.sleep(0.02)


def kill_marked(marker: str) -> None:
    """Kill the paused wrapper (the interrupted step never finishes)."""
    with contextlib.suppress(OSError, ValueError), open(marker) as f:
        os.kill(int(f.read().strip()), signal.SIGKILL)


@dataclass
class Node:
    base: str
    bridge: str
    cidr: str
    cgroup_parent: str
    images: dict[str, str]
    started: list[AgentProcess] = field(default_factory=list)

    def config(self, extra: str = "") -> str:
        return (
            f'[network]\nbridge = "{self.bridge}"\npod_cidr = "{self.cidr}"\n'
            f"cni_timeout_seconds = 20\n{extra}"
        )

    def agent(self, extra: str = "") -> AgentProcess:
        agent = AgentProcess(self.base, self.config(extra))
        self.started.append(agent)  # stopped by the fixture if a test fails midway
        return agent

    def sandbox_config(self, name: str = "") -> pb.PodSandboxConfig:
        name = name or f"pod-{uuid.uuid4().hex[:6]}"
        return pb.PodSandboxConfig(
            metadata=pb.PodSandboxMetadata(name=name, uid=uuid.uuid4().hex, namespace="faults"),
            hostname=name,
            log_directory=f"{self.base}/logs/{name}",
            linux=pb.LinuxPodSandboxConfig(cgroup_parent=self.cgroup_parent),
        )

    def container_config(self, name: str, *command: str) -> pb.ContainerConfig:
        return pb.ContainerConfig(
            metadata=pb.ContainerMetadata(name=name),
            image=pb.ImageSpec(image=self.images["busybox"]),
            command=list(command),
            log_path=f"{name}/0.log",
            linux=pb.LinuxContainerConfig(
                security_context=pb.LinuxContainerSecurityContext(masked_paths=MASKED)
            ),
        )

    async def pull(self, cri: CriClient) -> None:
        await cri.images.PullImage(
            pb.PullImageRequest(image=pb.ImageSpec(image=self.images["busybox"]))
        )

    async def pod_with(self, cri: CriClient, *command: str) -> tuple[str, str]:
        rt = cri.runtime
        sid = (
            await rt.RunPodSandbox(pb.RunPodSandboxRequest(config=self.sandbox_config()))
        ).pod_sandbox_id
        cid = (
            await rt.CreateContainer(
                pb.CreateContainerRequest(
                    pod_sandbox_id=sid, config=self.container_config("c", *command)
                )
            )
        ).container_id
        await rt.StartContainer(pb.StartContainerRequest(container_id=cid))
        return sid, cid

    def assert_clean(self) -> None:
        """Nothing of any pod is left on the host."""
        with open("/proc/mounts") as f:
            assert [line for line in f if f"{self.base}/" in line] == []
        veths = subprocess.run(
            ["ip", "-o", "link", "show", "master", self.bridge], capture_output=True, text=True
        ).stdout
        assert veths.strip() == ""
        ipam = f"{self.base}/root/cni/ipam"
        leases = [
            n
            for _, _, files in os.walk(ipam)
            for n in files
            if n[0].isdigit() and n.count(".") == 3
        ]
        assert leases == []
        leftovers = subprocess.run(["pgrep", "-f", self.base], capture_output=True, text=True)
        assert leftovers.stdout.strip() == ""


@pytest.fixture
async def node(short_dir, images) -> AsyncIterator[Node]:  # noqa: F811
    subnet = run.subnet("10.254.0.0/16")
    node = Node(short_dir, run.bridge("ma-f"), str(subnet), run.cgroup_parent(), images)
    host = HostNetworkState.capture()
    try:
        yield node
    finally:
        for started in node.started:
            if started.proc is not None and started.proc.poll() is None:
                started.stop()
        # A clean agent removes whatever the test left, then releases its mounts.
        with contextlib.suppress(Exception), node.agent() as agent:
            async with CriClient(agent.socket, timeout=60) as cri:
                for pod in (await cri.runtime.ListPodSandbox(pb.ListPodSandboxRequest())).items:
                    await cri.runtime.StopPodSandbox(
                        pb.StopPodSandboxRequest(pod_sandbox_id=pod.id)
                    )
                    await cri.runtime.RemovePodSandbox(
                        pb.RemovePodSandboxRequest(pod_sandbox_id=pod.id)
                    )
        delete_link(node.bridge)
        host.restore("model-agent", [])
        for path in sorted(cgroup_dirs(node.cgroup_parent), key=len, reverse=True):
            for dirpath, dirnames, _ in sorted(os.walk(path), key=lambda w: -len(w[0])):
                for d in dirnames:
                    with contextlib.suppress(OSError):
                        os.rmdir(os.path.join(dirpath, d))
            with contextlib.suppress(OSError):
                os.rmdir(path)


async def listed(cri: CriClient) -> tuple[list[pb.PodSandbox], list[pb.Container]]:
    pods = (await cri.runtime.ListPodSandbox(pb.ListPodSandboxRequest())).items
    containers = (await cri.runtime.ListContainers(pb.ListContainersRequest())).containers
    return list(pods), list(containers)


# -- kill -9 of the agent in the middle of an RPC ----------------------------------------------


async def test_kill_9_during_run_pod_sandbox(node):
    bins = f"{node.base}/cni-bin"
    os.makedirs(bins)
    marker = f"{node.base}/in-add"
    wrapper(f"{bins}/bridge", "/usr/lib/cni/bridge", on="ADD", marker=marker, sleep=60)
    agent = node.agent(f'cni_bin_dirs = ["{bins}", "/usr/lib/cni"]\n').start()
    async with CriClient(agent.socket, timeout=None) as cri:
        call = asyncio.ensure_future(
            cri.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=node.sandbox_config()))
        )
        await wait_for(marker)
        agent.kill()
        kill_marked(marker)
        with pytest.raises(grpc.aio.AioRpcError):
            await call
    with node.agent() as agent:
        async with CriClient(agent.socket) as cri:
            pods, _ = await listed(cri)
            assert pods == []  # the half-made sandbox was undone at start
        assert os.listdir(f"{node.base}/state/netns") == []
    node.assert_clean()


@pytest.mark.slow
async def test_kill_9_during_create_container(node):
    marker = f"{node.base}/in-create"
    runtime = wrapper(
        f"{node.base}/runc-wrapper",
        "/usr/sbin/runc",
        on="create",
        marker=marker,
        sleep=60,
        only_if="/containers/",
    )
    agent = node.agent(f'\n[runtime.handlers.runc]\npath = "{runtime}"\n').start()
    async with CriClient(agent.socket, timeout=None) as cri:
        await node.pull(cri)
        sid = (
            await cri.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=node.sandbox_config()))
        ).pod_sandbox_id
        create = asyncio.ensure_future(
            cri.runtime.CreateContainer(
                pb.CreateContainerRequest(
                    pod_sandbox_id=sid, config=node.container_config("c", "sleep", "1000")
                )
            )
        )
        await wait_for(marker)
        agent.kill()
        kill_marked(marker)  # the interrupted create never finishes
        with pytest.raises(grpc.aio.AioRpcError):
            await create
    with node.agent() as agent:
        async with CriClient(agent.socket) as cri:
            pods, containers = await listed(cri)
            assert [p.id for p in pods] == [sid]
            assert containers == []  # what the interrupted create made was undone
            assert os.listdir(f"{node.base}/state/containers") == []
            status = await cri.runtime.PodSandboxStatus(
                pb.PodSandboxStatusRequest(pod_sandbox_id=sid)
            )
            assert status.status.state == pb.SANDBOX_READY  # its infra kept running
            cid = (
                await cri.runtime.CreateContainer(
                    pb.CreateContainerRequest(
                        pod_sandbox_id=sid, config=node.container_config("c", "sleep", "1000")
                    )
                )
            ).container_id
            await cri.runtime.StartContainer(pb.StartContainerRequest(container_id=cid))
            await cri.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sid))
            await cri.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sid))
    node.assert_clean()


@pytest.mark.slow
async def test_kill_9_during_start_container_that_then_starts(node):
    marker = f"{node.base}/in-start"
    runtime = wrapper(
        f"{node.base}/runc-wrapper", "/usr/sbin/runc", on="start", marker=marker, sleep=1
    )
    extra = f'\n[runtime.handlers.runc]\npath = "{runtime}"\n'
    agent = node.agent(extra).start()
    async with CriClient(agent.socket, timeout=None) as cri:
        await node.pull(cri)
        run = asyncio.ensure_future(
            cri.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=node.sandbox_config()))
        )
        await wait_for(marker)
        os.unlink(marker)
        sid = (await run).pod_sandbox_id
        cid = (
            await cri.runtime.CreateContainer(
                pb.CreateContainerRequest(
                    pod_sandbox_id=sid, config=node.container_config("c", "sleep", "1000")
                )
            )
        ).container_id
        start = asyncio.ensure_future(
            cri.runtime.StartContainer(pb.StartContainerRequest(container_id=cid))
        )
        await wait_for(marker)
        agent.kill()  # the wrapper goes on: runc starts the container with the agent dead
        with pytest.raises(grpc.aio.AioRpcError):
            await start
    await asyncio.sleep(2)
    with node.agent() as agent:
        async with CriClient(agent.socket) as cri:
            status = await cri.runtime.ContainerStatus(pb.ContainerStatusRequest(container_id=cid))
            assert status.status.state == pb.CONTAINER_RUNNING
            await cri.runtime.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=2))
            await cri.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sid))
    node.assert_clean()


async def test_kill_9_during_stop_container_then_stop_again(node):
    agent = node.agent().start()
    async with CriClient(agent.socket, timeout=None) as cri:
        await node.pull(cri)
        sid, cid = await node.pod_with(cri, "sh", "-c", "trap '' TERM; while :; do sleep 1; done")
        await asyncio.sleep(0.3)
        stop = asyncio.ensure_future(
            cri.runtime.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=60))
        )
        await asyncio.sleep(0.5)
        agent.kill()
        with pytest.raises(grpc.aio.AioRpcError):
            await stop
    with node.agent() as agent:
        async with CriClient(agent.socket) as cri:
            status = await cri.runtime.ContainerStatus(pb.ContainerStatusRequest(container_id=cid))
            assert status.status.state == pb.CONTAINER_RUNNING  # it ignored SIGTERM
            await cri.runtime.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=1))
            await cri.runtime.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=1))
            status = await cri.runtime.ContainerStatus(pb.ContainerStatusRequest(container_id=cid))
            assert (status.status.state, status.status.exit_code) == (pb.CONTAINER_EXITED, 137)
            await cri.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=cid))
            await cri.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=cid))
            await cri.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sid))
            await cri.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sid))
    node.assert_clean()


@pytest.mark.slow
async def test_containers_survive_an_agent_restart_and_exits_while_down_are_seen(node):
    agent = node.agent().start()
    async with CriClient(agent.socket, timeout=60) as cri:
        await node.pull(cri)
        sid, keeps = await node.pod_with(cri, "sleep", "1000")
        ends = (
            await cri.runtime.CreateContainer(
                pb.CreateContainerRequest(
                    pod_sandbox_id=sid,
                    config=node.container_config("ends", "sh", "-c", "sleep 2; exit 7"),
                )
            )
        ).container_id
        await cri.runtime.StartContainer(pb.StartContainerRequest(container_id=ends))
    agent.kill()
    await asyncio.sleep(3)  # "ends" exits while no agent runs
    with node.agent() as agent:
        async with CriClient(agent.socket) as cri:
            running = await cri.runtime.ContainerStatus(
                pb.ContainerStatusRequest(container_id=keeps)
            )
            assert running.status.state == pb.CONTAINER_RUNNING
            exited = await cri.runtime.ContainerStatus(pb.ContainerStatusRequest(container_id=ends))
            assert (exited.status.state, exited.status.exit_code) == (pb.CONTAINER_EXITED, 7)
            assert exited.status.finished_at > exited.status.started_at
            result = await cri.runtime.ExecSync(
                pb.ExecSyncRequest(container_id=keeps, cmd=["echo", "still here"], timeout=10)
            )
            assert result.stdout == b"still here\n"
            await cri.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sid))
            await cri.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sid))
    node.assert_clean()


# -- other faults --------------------------------------------------------------------------


@pytest.mark.slow
async def test_kill_9_of_conmon_then_stop_and_remove(node):
    with node.agent() as agent:
        async with CriClient(agent.socket, timeout=60) as cri:
            await node.pull(cri)
            sid, cid = await node.pod_with(cri, "sleep", "1000")
            with open(f"{node.base}/state/containers/{cid}/bundle/conmon.pid") as f:
                os.kill(int(f.read()), signal.SIGKILL)
            await asyncio.sleep(0.3)
            status = await cri.runtime.ContainerStatus(pb.ContainerStatusRequest(container_id=cid))
            assert status.status.state == pb.CONTAINER_UNKNOWN
            assert "conmon" in status.status.message
            await cri.runtime.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=1))
            status = await cri.runtime.ContainerStatus(pb.ContainerStatusRequest(container_id=cid))
            assert status.status.state == pb.CONTAINER_EXITED
            await cri.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=cid))
            await cri.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sid))
    node.assert_clean()


async def test_container_process_killed_from_outside(node):
    with node.agent() as agent:
        async with CriClient(agent.socket, timeout=60) as cri:
            await node.pull(cri)
            sid, cid = await node.pod_with(cri, "sleep", "1000")
            status = await cri.runtime.ContainerStatus(
                pb.ContainerStatusRequest(container_id=cid, verbose=True)
            )
            pid = int(json.loads(status.info["info"])["pid"])
            os.kill(pid, signal.SIGKILL)
            for _ in range(100):
                status = await cri.runtime.ContainerStatus(
                    pb.ContainerStatusRequest(container_id=cid)
                )
                if status.status.state == pb.CONTAINER_EXITED:
                    break
                await asyncio.sleep(0.02)
            assert (status.status.exit_code, status.status.reason) == (137, "Error")
            await cri.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sid))
    node.assert_clean()


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["fails", "hangs"])
async def test_a_bad_cni_plugin_fails_run_pod_sandbox_cleanly(node, mode):
    bins = f"{node.base}/cni-bin"
    os.makedirs(bins)
    with open(f"{bins}/portmap", "w") as f:
        if mode == "fails":
            f.write(
                '#!/bin/sh\ncat > /dev/null\necho \'{"cniVersion":"1.0.0","code":11,'
                '"msg":"no more ports"}\'\nexit 1\n'
            )
        else:
            f.write("#!/bin/sh\nsleep 600\n")
    os.chmod(f"{bins}/portmap", 0o755)
    extra = f'cni_bin_dirs = ["{bins}", "/usr/lib/cni"]\ncni_timeout_seconds = 3\n'
    config = node.config().replace("cni_timeout_seconds = 20\n", "") + extra
    with AgentProcess(node.base, config) as agent:
        async with CriClient(agent.socket, timeout=60) as cri:
            started = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await cri.runtime.RunPodSandbox(
                    pb.RunPodSandboxRequest(config=node.sandbox_config())
                )
            elapsed = time.monotonic() - started
            if mode == "fails":
                assert "no more ports" in (info.value.details() or "")
            else:
                assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                assert elapsed < 30
            pods, _ = await listed(cri)
            assert pods == []
            assert os.listdir(f"{node.base}/state/netns") == []
    assert subprocess.run(["pgrep", "-f", f"{bins}/portmap"], capture_output=True).stdout == b""
    node.assert_clean()


async def test_disk_full_during_a_pull(node, registry):
    root = f"{node.base}/root"
    os.makedirs(root)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", root], check=True)
    try:
        big = build_image([layer([File("weights", os.urandom(40 << 20))], "gzip")])
        small = build_image([layer([File("ok", b"fits")], "gzip")])
        client = RegistryClient(registry.url)
        client.push_image("faults/too-big", big)
        client.push_image("faults/small", small)
        # No reserve: the pull meets the full disk itself (the reserve: test_image_limits).
        with node.agent("[image]\ndisk_reserve_mb = 0\n") as agent:
            async with CriClient(agent.socket, timeout=120) as cri:
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await cri.images.PullImage(
                        pb.PullImageRequest(
                            image=pb.ImageSpec(image=f"{registry.host}/faults/too-big")
                        )
                    )
                assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                # Refused before writing what cannot fit, or stopped by ENOSPC mid-way.
                details = info.value.details() or ""
                assert "no space left" in details or "not enough disk space" in details
                status = await cri.images.ImageStatus(
                    pb.ImageStatusRequest(
                        image=pb.ImageSpec(image=f"{registry.host}/faults/too-big")
                    )
                )
                assert not status.HasField("image")
                assert (await cri.runtime.Version(pb.VersionRequest())).version == "0.1.0"
                ok = await cri.images.PullImage(
                    pb.PullImageRequest(image=pb.ImageSpec(image=f"{registry.host}/faults/small"))
                )
                assert ok.image_ref == small.config_digest
    finally:
        subprocess.run(["umount", "-l", root], check=False)


async def test_after_a_reboot_pods_are_not_ready_and_can_be_removed(node):
    with node.agent() as agent:
        async with CriClient(agent.socket, timeout=60) as cri:
            await node.pull(cri)
            sid, cid = await node.pod_with(cri, "sleep", "1000")
    # The agent stopped cleanly; now "reboot": every process and mount is gone and
    # the volatile state dir is empty. What a kubelet then finds must still be removable.
    runc_root = f"{node.base}/state/runc"
    for container in (cid, sid):
        subprocess.run(
            ["runc", "--root", runc_root, "delete", "--force", container],
            capture_output=True,
            check=False,
        )
    await asyncio.sleep(0.5)
    with open("/proc/mounts") as f:
        for mount in sorted(
            (line.split()[1] for line in f if f"{node.base}/state" in line), reverse=True
        ):
            subprocess.run(["umount", "-l", mount], check=False)
    shutil.rmtree(f"{node.base}/state")
    # A reboot also empties iptables: the pod's masquerade rules go with it (CNI DEL
    # cannot find them once the namespace is gone, and after a real reboot need not).
    HostNetworkState.capture().restore("model-agent", [sid])
    with node.agent() as agent:
        async with CriClient(agent.socket) as cri:
            pod = await cri.runtime.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=sid))
            assert pod.status.state == pb.SANDBOX_NOTREADY
            container = await cri.runtime.ContainerStatus(
                pb.ContainerStatusRequest(container_id=cid)
            )
            assert container.status.state == pb.CONTAINER_EXITED
            await cri.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sid))
            await cri.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sid))
            pods, containers = await listed(cri)
            assert (pods, containers) == ([], [])
    node.assert_clean()
