"""The node install end to end, in a temporary root: wheelhouse → install → run → upgrade with a
container running → a refused downgrade → uninstall → purge.

Wheelhouses are built by ``scripts/build-wheelhouse`` itself, offline, from a cache of the
dependency wheels (built once from the package index and kept under ``~/.cache``). The agent
runs as the installed unit's ``ExecStart`` says, under a stand-in for systemd's notify socket;
a restart is what ``KillMode=process`` does: SIGTERM to the agent process only."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shlex
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tomllib
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agent import __version__
from agent.api.cri.runtime.v1 import api_pb2 as pb
from agent.ctl.client import CriClient
from agent.db import MIGRATIONS
from tests.integration.test_pods import MASKED, cgroup_dirs, delete_link, images  # noqa: F401
from tests.support.network import HostNetworkState, free_subnet

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
UPGRADE_VERSION = f"{__version__}.post1"


def _offline_env(cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "MODEL_AGENT_"))}
    env.update(
        PIP_CONFIG_FILE=os.devnull,
        PIP_NO_INDEX="1",
        PIP_FIND_LINKS=str(cache),
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        PYTHON=sys.executable,
    )
    return env


@pytest.fixture(scope="session")
def dependency_wheels() -> Path:
    """The project's dependencies (and setuptools/wheel to build it) as wheels, cached."""
    with open(REPO / "pyproject.toml", "rb") as f:
        project = tomllib.load(f)
    wanted = [*project["project"]["dependencies"], *project["build-system"]["requires"]]
    key = hashlib.sha256("\n".join([sys.version, *wanted]).encode()).hexdigest()[:12]
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "model-agent-tests"
    cache = base / f"wheels-{key}"
    if (cache / ".complete").exists():
        return cache
    tmp = base / f"wheels-{key}.{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(tmp), *wanted],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if done.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        pytest.skip(f"building the dependency wheels needs a package index: {done.stderr[-500:]}")
    (tmp / ".complete").touch()
    shutil.rmtree(cache, ignore_errors=True)
    tmp.rename(cache)
    return cache


def build_wheelhouse(out: Path, cache: Path, version: str = "") -> Path:
    """A source copy (at ``version`` if given) → ``scripts/build-wheelhouse out``, offline."""
    src = out.parent / f"src-{out.name}"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    shutil.copytree(REPO / "agent", src / "agent", ignore=ignore)
    shutil.copytree(REPO / "deploy", src / "deploy")
    (src / "scripts").mkdir()
    shutil.copy2(REPO / "scripts" / "build-wheelhouse", src / "scripts")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    if version:
        for path, old, new in (
            (src / "pyproject.toml", f'version = "{__version__}"', f'version = "{version}"'),
            (src / "agent" / "__init__.py", f'"{__version__}"', f'"{version}"'),
        ):
            text = path.read_text()
            assert old in text
            path.write_text(text.replace(old, new, 1))
    subprocess.run(
        [str(src / "scripts" / "build-wheelhouse"), str(out)],
        env=_offline_env(cache),
        check=True,
        timeout=600,
        capture_output=True,
    )
    shutil.rmtree(src)
    return out


@dataclass
class Installed:
    """One running ``ExecStart`` of the installed unit, with a notify socket like systemd's."""

    root: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    notify: socket.socket | None = None

    def exec_start(self) -> list[str]:
        unit = (self.root / "etc/systemd/system/model-agent.service").read_text()
        (line,) = [ln for ln in unit.splitlines() if ln.startswith("ExecStart=")]
        return shlex.split(line.removeprefix("ExecStart="))

    def start(self) -> dict[str, str]:
        path = str(self.root / "notify.sock")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(path)
        self.notify.settimeout(120)
        env = {k: v for k, v in os.environ.items() if not k.startswith("MODEL_AGENT_")}
        env.update(NOTIFY_SOCKET=path, PYTHONUNBUFFERED="1")
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                self.exec_start(), env=env, stdout=log, stderr=log, start_new_session=True
            )
        try:
            message = self.notify.recv(4096).decode()
        except TimeoutError:
            self.notify.close()  # a failed start must not leave the socket to the next test
            raise AssertionError(f"no READY=1:\n{self.log.read_text()}") from None
        fields = dict(line.split("=", 1) for line in message.splitlines())
        assert fields.get("READY") == "1", message
        return fields

    def stop(self) -> int:
        """What ``systemctl stop`` does with KillMode=process: SIGTERM to the agent alone."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=60)
        if self.notify is not None:
            self.notify.close()
        return code

    @property
    def socket_path(self) -> str:
        return str(self.root / "run/model-agent/model-agent.sock")


@dataclass
class Node:
    root: Path
    bridge: str
    cgroup_parent: str
    agents: list[Installed] = field(default_factory=list)

    def install(self, wheelhouse: Path, *extra: str) -> subprocess.CompletedProcess[str]:
        argv = [str(wheelhouse / "install.sh"), "--root", str(self.root), *extra]
        env = {k: v for k, v in os.environ.items() if not k.startswith("MODEL_AGENT_")}
        env["PYTHON"] = sys.executable  # the install.sh bootstrap interpreter (has venv)
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)

    def agent(self) -> Installed:
        agent = Installed(self.root, self.root / "agent.log")
        self.agents.append(agent)
        return agent

    def uninstall(self, *extra: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "agent.install", "uninstall", "--root", str(self.root)]
        return subprocess.run([*argv, *extra], capture_output=True, text=True, timeout=120)


@pytest.fixture
def node_root() -> Iterator[Path]:
    path = Path(f"/tmp/ma-ni-{uuid.uuid4().hex[:6]}")  # short: unix socket paths
    path.mkdir()
    yield path
    with open("/proc/self/mountinfo") as f:
        mounted = [line for line in f if f" {path}/" in line]
    if not mounted:  # else leave it whole, for the leak check to report and a person to see
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def node(node_root: Path) -> AsyncIterator[Node]:
    tag = uuid.uuid4().hex[:6]
    node = Node(node_root, f"ma-i{tag}", f"/ma-test-{tag}")
    # The cluster's CNI config, as a network add-on would write it (default_network = never).
    conf_dir = node_root / "etc/cni/net.d"
    conf_dir.mkdir(parents=True)
    conflist = {
        "cniVersion": "1.0.0",
        "name": f"cluster-{tag}",
        "plugins": [
            {
                "type": "bridge",
                "bridge": node.bridge,
                "isGateway": True,
                "ipMasq": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": str(free_subnet())}]],
                    "dataDir": str(node_root / "var/lib/cni/networks"),
                },
            }
        ],
    }
    (conf_dir / "10-cluster.conflist").write_text(json.dumps(conflist))
    host = HostNetworkState.capture()
    try:
        yield node
    finally:
        for agent in node.agents:
            if agent.proc is not None and agent.proc.poll() is None:
                agent.stop()
        config = node_root / "etc/model-agent/config.toml"
        db = node_root / "var/lib/model-agent/db/metadata.db"
        if db.exists():  # the downgrade step raises the schema version; put it back
            conn = sqlite3.connect(db)
            conn.execute(f"PRAGMA user_version = {len(MIGRATIONS)}")
            conn.close()
        if config.exists():  # whatever the test left: a clean agent removes it
            with contextlib.suppress(Exception):
                await remove_all_pods(node_root, config)
        delete_link(node.bridge)
        host.restore(f"cluster-{tag}", [])
        for path in sorted(cgroup_dirs(node.cgroup_parent), key=len, reverse=True):
            for dirpath, dirnames, _ in sorted(os.walk(path), key=lambda w: -len(w[0])):
                for d in dirnames:
                    with contextlib.suppress(OSError):
                        os.rmdir(os.path.join(dirpath, d))
            with contextlib.suppress(OSError):
                os.rmdir(path)


async def remove_all_pods(root: Path, config: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODEL_AGENT_")}
    proc = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "agent", "serve", "--config", str(config)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None and b"serving CRI" in await proc.stdout.readline()
        async with CriClient(str(root / "run/model-agent/model-agent.sock"), timeout=60) as cri:
            for pod in (await cri.runtime.ListPodSandbox(pb.ListPodSandboxRequest())).items:
                await cri.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod.id))
                await cri.runtime.RemovePodSandbox(
                    pb.RemovePodSandboxRequest(pod_sandbox_id=pod.id)
                )
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 60)


async def run_pod(cri: CriClient, node: Node, image: str) -> tuple[str, str]:
    name = f"pod-{uuid.uuid4().hex[:6]}"
    config = pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name=name, uid=uuid.uuid4().hex, namespace="install"),
        hostname=name,
        log_directory=str(node.root / "logs" / name),
        linux=pb.LinuxPodSandboxConfig(cgroup_parent=node.cgroup_parent),
    )
    await cri.images.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=image)))
    sid = (await cri.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=config))).pod_sandbox_id
    container = pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name="sleeper"),
        image=pb.ImageSpec(image=image),
        command=["sleep", "100000"],
        log_path="sleeper/0.log",
        linux=pb.LinuxContainerConfig(
            security_context=pb.LinuxContainerSecurityContext(masked_paths=MASKED)
        ),
    )
    cid = (
        await cri.runtime.CreateContainer(
            pb.CreateContainerRequest(pod_sandbox_id=sid, config=container, sandbox_config=config)
        )
    ).container_id
    await cri.runtime.StartContainer(pb.StartContainerRequest(container_id=cid))
    return sid, cid


def under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


async def test_install_run_upgrade_with_a_container_running_downgrade_refused_uninstall(
    node: Node,
    dependency_wheels: Path,
    images: dict[str, str],  # noqa: F811
    tmp_path: Path,
):
    root = node.root
    wheelhouse = build_wheelhouse(tmp_path / "wh1", dependency_wheels)
    newer = build_wheelhouse(tmp_path / "wh2", dependency_wheels, UPGRADE_VERSION)
    assert (wheelhouse / "install.sh").exists()
    assert len(list(wheelhouse.glob("grpcio-*.whl"))) == 1  # dependencies are in it

    # -- install ---------------------------------------------------------------------------
    done = node.install(wheelhouse, "--set", "metrics.address=127.0.0.1:0")
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    socket_url = f"unix://{root}/run/model-agent/model-agent.sock"
    assert f"containerRuntimeEndpoint: {socket_url}" in out
    assert f"imageServiceEndpoint: {socket_url}" in out
    assert "cgroupDriver: cgroupfs" in out  # no systemd as PID 1 here
    assert f"{root}/opt/model-agent/current/bin/model-agent serve --config" in out  # foreground
    assert "not applied now" in out  # kernel settings: files only under --root

    config_path = root / "etc/model-agent/config.toml"
    config_text = config_path.read_text()
    config = tomllib.loads(config_text)
    assert config["network"]["default_network"] == "never"
    assert config["agent"]["root_dir"] == f"{root}/var/lib/model-agent"
    assert config["metrics"]["address"] == "127.0.0.1:0"
    assert "# Log level." in config_text  # commented, as model-agent config prints it
    assert (root / "etc/crictl.yaml").read_text().count(socket_url) == 2
    assert "br_netfilter" in (root / "etc/modules-load.d/model-agent.conf").read_text()
    assert "net.ipv4.ip_forward = 1" in (root / "etc/sysctl.d/99-model-agent.conf").read_text()
    verify = subprocess.run(
        ["systemd-analyze", "verify", str(root / "etc/systemd/system/model-agent.service")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (verify.returncode, verify.stderr) == (0, "")
    link = root / "usr/local/bin/model-agent"
    version = subprocess.run([str(link), "version"], capture_output=True, text=True, timeout=60)
    assert version.stdout.strip() == f"model-agent {__version__}"
    first_venv = (root / "opt/model-agent/current").resolve()

    # -- run it as the unit does, and start a container ------------------------------------
    agent = node.agent()
    ready = agent.start()
    assert ready["MAINPID"] == str(agent.proc.pid)  # type: ignore[union-attr]
    async with CriClient(agent.socket_path, timeout=120) as cri:
        status = await cri.runtime.Status(pb.StatusRequest())
        assert all(c.status for c in status.status.conditions)  # the cluster's CNI is there
        sid, cid = await run_pod(cri, node, images["busybox"])
        before = (
            await cri.runtime.ContainerStatus(pb.ContainerStatusRequest(container_id=cid))
        ).status
        assert before.state == pb.CONTAINER_RUNNING

    # -- the same install again (the installer pod after a reboot): the agent is left alone --
    done = node.install(wheelhouse, "--set", "metrics.address=127.0.0.1:0")
    assert done.returncode == 0, done.stdout + done.stderr
    pid = agent.proc.pid  # type: ignore[union-attr]
    assert "already built" in done.stdout
    assert f"kept {config_path} (unchanged)" in done.stdout
    assert f"the agent (pid {pid}) runs this install already" in done.stdout
    assert "version, unit and config unchanged; left running" in done.stdout
    assert "still runs the previous version" not in done.stdout
    assert agent.proc.poll() is None  # type: ignore[union-attr]
    assert config_path.read_text() == config_text
    assert not (root / "etc/model-agent/config.toml.previous").exists()
    manifest = json.loads((root / "opt/model-agent/install.json").read_text())
    assert [h["started"]["venv"] for h in manifest["history"]] == [str(first_venv)] * 2

    # -- upgrade: state and config kept; only the agent process restarts -------------------
    done = node.install(newer)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"an agent (pid {pid}) still runs the previous version (version " in done.stdout
    assert f"-> {UPGRADE_VERSION}-" in done.stdout
    manifest = json.loads((root / "opt/model-agent/install.json").read_text())
    assert "started" not in manifest["history"][-1]  # it runs the old one until restarted
    assert config_path.read_text() == config_text
    current = (root / "opt/model-agent/current").resolve()
    assert current.name.startswith(UPGRADE_VERSION) and current != first_venv
    assert first_venv.exists()  # the previous version stays, to go back by hand
    assert agent.stop() == 0
    agent = node.agent()
    agent.start()
    async with CriClient(agent.socket_path, timeout=60) as cri:
        version_resp = await cri.runtime.Version(pb.VersionRequest())
        assert version_resp.runtime_version == UPGRADE_VERSION
        after = (
            await cri.runtime.ContainerStatus(pb.ContainerStatusRequest(container_id=cid))
        ).status
        assert after.state == pb.CONTAINER_RUNNING
        assert after.started_at == before.started_at  # the same process, never restarted
        echoed = await cri.runtime.ExecSync(
            pb.ExecSyncRequest(container_id=cid, cmd=["echo", "still-here"], timeout=10)
        )
        assert echoed.stdout == b"still-here\n"

    # -- uninstall refuses while the agent runs; purge refuses while pods exist --------------
    done = node.uninstall()
    assert done.returncode == 1 and "is running: stop it first" in done.stderr
    assert agent.stop() == 0
    done = node.uninstall("--purge")
    assert done.returncode == 1 and "pods still exist" in done.stderr
    assert (root / "opt/model-agent/install.json").exists()  # refused before removing anything

    # -- a downgrade is refused before anything switches -----------------------------------
    db = root / "var/lib/model-agent/db/metadata.db"
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")  # as a newer agent left it
    conn.close()
    done = node.install(wheelhouse)
    assert done.returncode == 1
    assert f"has schema version {len(MIGRATIONS) + 1}" in done.stderr
    assert f"last started by model-agent {UPGRADE_VERSION}" in done.stderr
    assert "nothing was changed" in done.stderr
    assert (root / "opt/model-agent/current").resolve() == current
    assert first_venv.exists(), done.stdout + done.stderr
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS)}")
    conn.close()

    # -- remove the pod, then uninstall (keeps config and state), then purge ---------------
    agent = node.agent()
    agent.start()
    async with CriClient(agent.socket_path, timeout=60) as cri:
        await cri.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sid))
        await cri.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sid))
    assert agent.stop() == 0
    done = node.uninstall()
    assert done.returncode == 0, done.stderr
    left = under(root)
    assert "etc/model-agent/config.toml" in left and "var/lib/model-agent/db/metadata.db" in left
    for gone in ("opt", "usr", "etc/systemd", "etc/crictl.yaml", "etc/sysctl.d"):
        assert gone not in left
    done = node.uninstall("--purge")
    assert done.returncode == 0, done.stderr
    for own in ("etc/cni", "var/lib/cni", "logs", "notify.sock", "agent.log"):  # the test's
        path = root / own
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    for parent in ("etc", "var/lib", "var"):
        with contextlib.suppress(OSError):
            (root / parent).rmdir()
    assert under(root) == []
