"""The pods managers wired to fakes: a ``FakeRuntime``, a mounter that mounts nothing,
and an image source with one image. The store, the spec builder, the exit
watcher, the exit tracker and recovery are the real ones; nothing needs root.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from agent.config import Config
from agent.db import MetadataDB, open_database
from agent.gpu.service import GpuService
from agent.images import ImageRecord
from agent.oci import ExitWatcher, Runtime
from agent.pods import model
from agent.pods.apparmor import AppArmor
from agent.pods.containers import ContainerManager
from agent.pods.events import EventKind
from agent.pods.oom import OomPolicy
from agent.pods.podfiles import PodDirs
from agent.pods.podnet import PodNetwork
from agent.pods.recovery import Recovery
from agent.pods.sandboxes import SandboxManager
from agent.pods.seccomp_profiles import SeccompProfiles
from agent.pods.store import PodStore
from tests.fakes.runtime import FakeRuntime

IMAGE = "registry.test/app:v1"


class FakeMounter:
    """Mounts nothing; remembers what is "mounted" so a test can see it undone."""

    def __init__(self) -> None:
        self.mounted: set[str] = set()

    async def overlay(
        self, target: str, *, lower_root: str, lowers: Sequence[str], upper: str, work: str
    ) -> None:
        self.mounted.add(target)

    async def tmpfs(self, target: str, *, size: str, mode: str) -> None:
        self.mounted.add(target)

    async def unmount(self, target: str) -> None:
        self.mounted.discard(target)

    async def bind_special(
        self,
        source: str,
        target: str,
        *,
        readonly: bool = False,
        userns: str = "",
        no_devices: bool = False,
    ) -> None:
        self.mounted.add(target)

    async def unmount_tree(self, path: str) -> None:
        self.mounted = {m for m in self.mounted if m != path and not m.startswith(path + "/")}


class FakeImages:
    """One pulled image, ``IMAGE``, with one (empty) layer."""

    def __init__(self, root: str) -> None:
        self.root = root
        os.makedirs(os.path.join(root, "layer", "fs"), exist_ok=True)
        config = {"rootfs": {"type": "layers", "diff_ids": ["sha256:" + "a" * 64]}}
        self.image = ImageRecord(
            id="sha256:" + "b" * 64,
            manifest_digest="sha256:" + "c" * 64,
            manifest_media_type="application/vnd.oci.image.manifest.v1+json",
            config_json=json.dumps(config),
            size_bytes=0,
            created_at=0,
            names=(IMAGE,),
            layers=("sha256:" + "a" * 64,),
        )

    def find(self, text: str) -> ImageRecord | None:
        return self.image if text in (IMAGE, self.image.id) else None

    def layer_dirs(self, image: ImageRecord) -> tuple[str, list[str]]:
        return self.root, ["layer/fs"]


@dataclass
class FakePods:
    """What a unit test drives: the managers, their store and the fakes under them."""

    config: Config
    db: MetadataDB
    runtime: FakeRuntime
    mounter: FakeMounter
    store: PodStore
    containers: ContainerManager
    sandboxes: SandboxManager
    recovery: Recovery
    events: list[tuple[EventKind, str]] = field(default_factory=list)
    watcher: ExitWatcher | None = None

    async def run_pod(self, name: str = "") -> str:
        """A host-network pod (no CNI: the network is not what these tests are about)."""
        metadata = model.PodMetadata(name or f"pod-{secrets.token_hex(3)}", "uid-1", "ns")
        host = model.NamespaceOptions(network="NODE")
        security = model.PodSecurity(namespaces=host)
        return await self.sandboxes.run(model.SandboxConfig(metadata=metadata, security=security))

    async def create(self, sandbox_id: str, name: str = "app") -> str:
        config = model.ContainerConfig(name=name, attempt=0, image=IMAGE, command=("sleep",))
        return await self.containers.create(sandbox_id, config)

    def close(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
        self.db.close()


def build(
    config: Config,
    *,
    runtime: FakeRuntime | None = None,
    watch: bool = True,
    apparmor: AppArmor | None = None,
    gpu: GpuService | None = None,
    mounter: FakeMounter | None = None,
) -> FakePods:
    """Managers over ``config``'s dirs (call again on the same dirs: an agent restart)."""
    state_dir = config.agent.state_dir
    os.makedirs(state_dir, exist_ok=True)
    os.makedirs(config.agent.root_dir, exist_ok=True)
    runtime = runtime or FakeRuntime(state_dir)
    runtimes: dict[str, Runtime] = {"runc": runtime}
    db = open_database(config.agent.root_dir)
    store = PodStore(db)
    mounter = mounter or FakeMounter()
    dirs = PodDirs(config.agent.root_dir, state_dir)
    events: list[tuple[EventKind, str]] = []
    seccomp = SeccompProfiles()
    oom = OomPolicy(False)
    containers = ContainerManager(
        config,
        store=store,
        images=FakeImages(os.path.join(config.agent.root_dir, "images")),
        runtimes=runtimes,
        mounter=mounter,
        oom=oom,
        seccomp=seccomp,
        pod_dirs=dirs,
        on_change=lambda kind, cid: events.append((kind, cid)),
        kill_wait=1.0,
        apparmor=apparmor,
        gpu=gpu,
    )
    sandboxes = SandboxManager(
        config,
        store=store,
        containers=containers,
        runtimes=runtimes,
        mounter=mounter,
        pod_dirs=dirs,
        network=PodNetwork(config),
        oom=oom,
        seccomp=seccomp,
        infra_rootfs=os.path.join(config.agent.root_dir, "infra"),
        on_change=lambda kind, sid: events.append((kind, sid)),
    )
    recovery = Recovery(
        store=store,
        sandboxes=sandboxes,
        containers=containers,
        runtimes=runtimes,
        dirs=dirs,
        network=None,
        mounter=mounter,
    )
    pods = FakePods(config, db, runtime, mounter, store, containers, sandboxes, recovery, events)
    if watch:

        def on_exit(object_id: str) -> None:
            if store.get_sandbox(object_id) is not None:
                sandboxes.notice_exit(object_id)
            else:
                containers.exits.notice(object_id)

        pods.watcher = ExitWatcher(runtime.exit_dir, on_exit)
        pods.watcher.start()
    return pods


@contextlib.asynccontextmanager
async def built(config: Config, **options: Any) -> AsyncIterator[FakePods]:
    """``build(config, **options)``, closed again afterwards (a test's ``pods`` fixture)."""
    pods = build(config, **options)
    try:
        yield pods
    finally:
        await pods.containers.close()
        pods.close()
