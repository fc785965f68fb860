"""critest's specs, one test each, against a real agent (runc, conmon, CNI, a local registry).

critest (kubernetes-sigs/cri-tools, ``pkg/validate``) is the upstream CRI validation suite.
It cannot run here (no Go, no internet), so every ``It(...)`` it has for what the agent
serves is reproduced: the same RPCs with the same fields set, and the same checks. Each
test is named after its spec; its docstring names the critest file and the spec text.

What differs from a real critest run, and why:

- **Images.** critest pulls ``busybox:1.28``, ``nginx:1.14-2``, ``httpd:2.4.39-4``,
  ``nonewprivs:1.3`` and ``gcr.io/k8s-staging-cri-tools/test-image-*``. They are rebuilt
  here from the host's static busybox (see ``critest_images``) and pushed to the session
  registry: busybox with every applet as a *hard link* (as in the real image: a masked
  ``/bin/ls`` must not mask ``/bin/busybox``) plus ``pgrep`` and ``ipcs`` scripts (the
  host's busybox lacks both); "nginx" and "httpd" are busybox ``httpd`` serving a page on
  port 80, nginx's master process named as nginx names it; "nonewprivs" is a setuid-root
  static binary printing its effective uid (compiled with the host's gcc, which
  ``scripts/setup`` installs; its specs skip without one).
- **The host's busybox runs applets in-process** (``FEATURE_SH_STANDALONE``): ``sh -c ls``
  never executes ``/bin/ls``. The MaskedPaths spec therefore names ``/bin/ls`` by path.
- **Cgroup parent.** Every pod gets the test environment's own cgroup parent (critest's
  ``common.GetCgroupParent``), so the leak check finds nothing behind.
- **Ports and paths.** Log directories live under the test's short temp dir, not ``/tmp``;
  the host dirs of the mount specs are ``/tmp/ma-<run>-test<pod>…`` (critest's
  ``test<pod>…`` with the run's mark), so the leak check sees a mount left in one.
- **Host probes.** The UserNamespaces POD spec runs critest's idmap-mount probe
  (``tests/support/idmap.py``: open_tree + mount_setattr through ctypes) on critest's
  path, the parent of ``stateDir`` in ``Status.info["config"]``, else ``/var/lib``.
- Specs critest itself skips on this host or runtime (SELinux absent, cgroup v1) are
  skipped with the same reason, each asserting first that the reason still holds. The
  AppArmor specs are mirrored in full (loading critest's two test profiles with
  ``apparmor_parser``) and skip where AppArmor is disabled, as critest's do. The
  feature-gated specs (recursive read-only mounts, UserNamespaces,
  SupplementalGroupsPolicy) are mirrored in full and skip exactly when critest does, from
  what Status advertises.
- Specs the agent fails and that need more than a small fix are ``xfail(strict=True)``
  with the reason, so they turn red the day they pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from agent.api.cri.runtime.v1 import api_pb2 as pb
from tests.integration.test_pods import Env, environment
from tests.support import remotecommand_client as rc, run
from tests.support.idmap import supports_idmap
from tests.support.images import BUSYBOX, Image, build_image
from tests.support.layers import Dir, Entry, File, Hardlink, layer
from tests.support.portforward_client import forward_spdy as rc_forward_spdy
from tests.support.push import RegistryClient

pytestmark = pytest.mark.integration

# -- critest's constants (pkg/validate/consts.go, container.go, pkg/framework) ---------------

DEFAULT_ATTEMPT = 2
UID_PREFIX = "cri-test-uid"
NAMESPACE_PREFIX = "cri-test-namespace"
DEFAULT_STOP_TIMEOUT = 60
EXEC_TIMEOUT = 30
DEFAULT_LOG = "hello World"
DEFAULT_COMMAND = ["top"]
PAUSE_COMMAND = ["sh", "-c", "top"]
ECHO_HELLO = ["echo", "-n", "hello"]
SLEEP_COMMAND = ["sleep", "4321"]
CHECK_SLEEP = ["sh", "-c", "pgrep sleep || true"]
LOG_DEFAULT_COMMAND = ["echo", DEFAULT_LOG]
LOOP_LOG_COMMAND = ["sh", "-c", f"while true; do echo {DEFAULT_LOG}; sleep 1; done"]
DNS_SERVER, DNS_SEARCH, DNS_OPTION = "10.10.10.10", "google.com", "ndots:8"
WEB_SERVER_PORT = 80
HOST_PORT_FOR_PORT_MAPPING = 12000
#: webServerHostNetContainerPort: what critest's hostnet-nginx image listens on.
HOST_NET_WEB_SERVER_PORT = 12003
#: What critest's ``testImagePodSandbox`` and ``DefaultPodLabels`` are on Linux.
DEFAULT_POD_LABELS: dict[str, str] = {}

# -- the images ---------------------------------------------------------------------------

PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\n"
    "daemon:x:1:1:daemon:/usr/sbin:/bin/false\n"
    "www-data:x:33:33:www-data:/var/www:/bin/false\n"
    "nobody:x:65534:65534:nobody:/home:/bin/false\n"
)
GROUP = "root:x:0:\ndaemon:x:1:\nwww-data:x:33:\nusers:x:100:\nnogroup:x:65534:\n"
#: test-image-predefined-group: default-user (1000) is in group-defined-in-image (50000).
PREDEFINED_PASSWD = "default-user:x:1000:1000:Linux User,,,:/home/default-user:/bin/sh\n"
PREDEFINED_GROUP = "default-user:x:1000:\ngroup-defined-in-image:x:50000:default-user\n"
PGREP = b"""#!/bin/sh
# pgrep PATTERN: pids whose command name contains PATTERN (what critest needs of procps').
found=1
for dir in /proc/[0-9]*; do
    read -r comm < "$dir/comm" 2>/dev/null || continue
    case "$comm" in *"$1"*) echo "${dir#/proc/}"; found=0 ;; esac
done
exit $found
"""
IPCS = b"""#!/bin/sh
# ipcs -m: the System V shared memory segments of this IPC namespace.
echo "------ Shared Memory Segments --------"
echo "key        shmid      owner      perms      bytes      nattch"
while read -r key shmid perms size cpid lpid nattch uid rest; do
    [ "$key" = key ] && continue
    echo "$key $shmid $uid $perms $size $nattch"
done < /proc/sysvipc/shm
"""
NGINX_ENTRYPOINT = b"""#!/bin/sh
# nginx's master process shows as "nginx: master process ..." and its command name is nginx.
exec -a "nginx: master process /bin/busybox" /usr/sbin/nginx sh /etc/nginx/run.sh
"""
NGINX_RUN = b"""echo $$ > /var/run/nginx.pid
httpd -f -p 80 -h /usr/share/nginx/html &
wait
"""
HTTPD_FOREGROUND = b"""#!/bin/sh
echo "[mpm_event:notice] AH00489: Apache/2.4.39 (Unix) configured -- resuming normal operations"
echo "[core:notice] AH00094: Command line: 'httpd -D FOREGROUND'"
exec /bin/httpd -f -p 80 -h /usr/local/apache2/htdocs
"""
NONEWPRIVS_C = """#include <stdio.h>
#include <unistd.h>
int main(void) { printf("Effective uid: %d\\n", (int)geteuid()); return 0; }
"""


def _applets() -> list[str]:
    listed = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True, check=True)
    return sorted({name for name in listed.stdout.split() if name and "/" not in name})


def critest_busybox_entries() -> list[Entry]:
    """busybox:1.28's layout: every applet a hard link of /bin/busybox, root..nobody users."""
    with open(BUSYBOX, "rb") as f:
        busybox = f.read()
    entries: list[Entry] = [Dir("bin"), File("bin/busybox", busybox, mode=0o755)]
    entries += [Hardlink(f"bin/{name}", "bin/busybox") for name in _applets() if name != "busybox"]
    entries += [
        File("bin/pgrep", PGREP, mode=0o755),
        Dir("etc"),
        File("etc/passwd", PASSWD.encode()),
        File("etc/group", GROUP.encode()),
        File("etc/hostname"),
        Dir("home"),
        Dir("root", mode=0o700),
        Dir("tmp", mode=0o1777),
        Dir("usr"),
        Dir("usr/bin"),
        File("usr/bin/ipcs", IPCS, mode=0o755),
        Dir("usr/sbin"),
        Dir("var"),
        Dir("var/run"),
        Dir("var/www"),
        Dir("dev"),
        Dir("proc"),
        Dir("sys"),
    ]
    return entries


def _compile_nonewprivs(workdir: str) -> bytes | None:
    """The setuid test binary, statically linked; None without a working gcc."""
    source = os.path.join(workdir, "nonewprivs.c")
    binary = os.path.join(workdir, "nonewprivs")
    with open(source, "w") as f:
        f.write(NONEWPRIVS_C)
    gcc = shutil.which("gcc")
    if gcc is None:
        return None
    done = subprocess.run(
        [gcc, "-static", "-Os", "-o", binary, source], capture_output=True, check=False
    )
    if done.returncode != 0:
        return None
    with open(binary, "rb") as f:
        return f.read()


ENV = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",)


@dataclass(frozen=True)
class CritestImages:
    """Where each of critest's images is, by critest's name for it."""

    refs: dict[str, str]

    def __getitem__(self, name: str) -> str:
        return self.refs[name]


@pytest.fixture(scope="session")
def critest_images(registry, tmp_path_factory) -> CritestImages:
    """critest's images, rebuilt and pushed to the session registry under ``critest/``."""
    client = RegistryClient(registry.url)
    base = layer(critest_busybox_entries())
    refs: dict[str, str] = {}

    def push(key: str, name: str, image: Image, tag: str | None = "latest") -> None:
        client.push_image(f"critest/{name}", image, tag=tag)
        refs[key] = f"{registry.host}/critest/{name}" + (f":{tag}" if tag else "")

    push("busybox", "busybox", build_image([base], env=ENV, cmd=["sh"]), "1.28")
    nginx_entries: list[Entry] = [
        File("docker-entrypoint.sh", NGINX_ENTRYPOINT, mode=0o755),
        Dir("etc/nginx"),
        File("etc/nginx/run.sh", NGINX_RUN, mode=0o644),
        Hardlink("usr/sbin/nginx", "bin/busybox"),  # a hard link stays inside its layer
        Dir("usr/share"),
        Dir("usr/share/nginx"),
        Dir("usr/share/nginx/html"),
        File("usr/share/nginx/html/index.html", b"<h1>Welcome to nginx!</h1>\n"),
    ]
    nginx_layer = layer([*critest_busybox_entries(), *nginx_entries])
    push(
        "nginx",
        "nginx",
        build_image(
            [nginx_layer],
            env=ENV,
            entrypoint=["/docker-entrypoint.sh"],
            cmd=["nginx", "-g", "daemon off;"],
            stop_signal="SIGQUIT",
        ),
        "1.14-2",
    )
    httpd = layer(
        [
            Dir("usr/local"),
            Dir("usr/local/bin"),
            File("usr/local/bin/httpd-foreground", HTTPD_FOREGROUND, mode=0o755),
            Dir("usr/local/apache2"),
            Dir("usr/local/apache2/htdocs"),
            File("usr/local/apache2/htdocs/index.html", b"<html><body><h1>It works!</h1>\n"),
        ]
    )
    push(
        "httpd",
        "httpd",
        build_image([base, httpd], env=ENV, cmd=["httpd-foreground"], stop_signal="SIGWINCH"),
        "2.4.39-4",
    )
    binary = _compile_nonewprivs(str(tmp_path_factory.mktemp("nonewprivs")))
    if binary is not None:
        setuid = layer(
            [
                Dir("usr/local"),
                Dir("usr/local/bin"),
                File("usr/local/bin/nnp", binary, mode=0o4755),
            ]
        )
        push(
            "nonewprivs",
            "nonewprivs",
            build_image([base, setuid], env=ENV, entrypoint=["/usr/local/bin/nnp"], cmd=None),
            "1.3",
        )
    # image.go's test images (gcr.io/k8s-staging-cri-tools/test-image-*).
    plain = build_image([base], env=ENV, labels={"critest": "test-image"})
    push("test-image-tag:test", "test-image-tag", plain, "test")
    push("test-image-tag:all", "test-image-tag", plain, "all")
    push("test-image-latest", "test-image-latest", plain, "latest")
    refs["test-image-latest"] = f"{registry.host}/critest/test-image-latest"
    client.push_image("critest/test-image-digest", plain, tag=None)
    refs["test-image-digest"] = f"{registry.host}/critest/test-image-digest@{plain.manifest_digest}"
    for i in (1, 2, 3):
        distinct = build_image([base], env=ENV, labels={"critest": f"test-image-{i}"})
        push(f"test-image-{i}", f"test-image-{i}", distinct, "latest")
    for i in (1, 2, 3):
        push(f"test-image-tags:{i}", "test-image-tags", plain, str(i))
    predefined = layer(  # images/image-predefined-group: busybox's adduser -D, addgroup
        [
            Dir("home"),
            Dir("home/default-user", uid=1000, gid=1000),
            Dir("etc"),
            File("etc/passwd", (PASSWD + PREDEFINED_PASSWD).encode()),
            File("etc/group", (GROUP + PREDEFINED_GROUP).encode()),
        ]
    )
    push(
        "test-image-predefined-group",
        "test-image-predefined-group",
        build_image([base, predefined], env=ENV, user="1000"),
        "latest",
    )
    # image_id_consistency.go: one image under two registry names (two host names here).
    push("same-image-registry-1", "test-image-same", plain, "latest")
    refs["same-image-registry-2"] = refs["same-image-registry-1"].replace(
        "127.0.0.1:", "localhost:", 1
    )
    for key, user in (
        ("test-image-user-uid", "1002"),
        ("test-image-user-username", "www-data"),
        ("test-image-user-uid-group", "1003:users"),
        ("test-image-user-username-group", "www-data:users"),
    ):
        push(key, key, build_image([base], env=ENV, user=user), "latest")
    return CritestImages(refs)


# -- the framework: critest's helpers over our client ----------------------------------------


def new_uuid() -> str:
    return str(uuid.uuid4())


@dataclass
class LogMessage:
    timestamp: datetime.datetime
    stream: str
    log: str


def parse_log(path: str) -> list[LogMessage]:
    """CRI log lines (``<RFC3339Nano> <stream> <P|F> <text>``), read as critest's parseCRILog."""
    messages = []
    with open(path) as f:
        for line in f.read().splitlines():
            fields = line.split(" ", 3)
            assert len(fields) == 4, f"invalid CRI log line {line!r}"
            stamp = re.sub(r"\.(\d{6})\d*", r".\1", fields[0]).replace("Z", "+00:00")
            messages.append(
                LogMessage(datetime.datetime.fromisoformat(stamp), fields[1], fields[3] + "\n")
            )
    return messages


async def eventually(
    probe: Callable[[], Awaitable[Any]], *, timeout: float = 60, interval: float = 0.2
) -> Any:
    """Call ``probe`` until it returns something true (or stops raising AssertionError)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = await probe()
            if result:
                return result
            failure: AssertionError | None = None
        except AssertionError as exc:
            failure = exc
        if time.monotonic() > deadline:
            if failure is not None:
                raise failure
            raise AssertionError(f"{probe} did not become true in {timeout}s")
        await asyncio.sleep(interval)


@dataclass
class Critest:
    """critest's framework calls (``framework.*`` and the ``validate`` helpers) on one agent."""

    env: Env
    images: CritestImages

    @property
    def rc(self) -> Any:
        return self.env.cri.runtime

    @property
    def ic(self) -> Any:
        return self.env.cri.images

    def log_dir(self, pod_name: str) -> str:
        """createLogTempDir: a fresh host dir with ``<pod name>/`` inside (mode 0777)."""
        host = tempfile.mkdtemp(prefix="podLogTest", dir=self.env.base)
        path = os.path.join(host, pod_name)
        os.makedirs(path, mode=0o777)
        return path

    # pods

    def pod_config(self, name: str, **fields: Any) -> pb.PodSandboxConfig:
        config = pb.PodSandboxConfig(
            metadata=pb.PodSandboxMetadata(
                name=name,
                uid=UID_PREFIX + new_uuid(),
                namespace=NAMESPACE_PREFIX + new_uuid(),
                attempt=DEFAULT_ATTEMPT,
            ),
            linux=pb.LinuxPodSandboxConfig(cgroup_parent=self.env.cgroup_parent),
            labels=DEFAULT_POD_LABELS,
        )
        for key, value in fields.items():
            target = getattr(config, key)
            if isinstance(value, list):
                target.extend(value)
            elif isinstance(value, dict):
                target.update(value)
            elif hasattr(target, "CopyFrom"):
                target.CopyFrom(value)
            else:
                setattr(config, key, value)
        return config

    async def run_pod(self, config: pb.PodSandboxConfig) -> str:
        response = await self.rc.RunPodSandbox(pb.RunPodSandboxRequest(config=config))
        assert response.pod_sandbox_id
        return str(response.pod_sandbox_id)

    async def run_default_pod(self, prefix: str) -> str:
        """framework.RunDefaultPodSandbox."""
        return await self.run_pod(self.pod_config(prefix + new_uuid()))

    async def pod_for_container(self) -> tuple[str, pb.PodSandboxConfig]:
        """framework.CreatePodSandboxForContainer."""
        config = self.pod_config("create-PodSandbox-for-container-" + new_uuid())
        return await self.run_pod(config), config

    async def pod_with_log_directory(self) -> tuple[str, pb.PodSandboxConfig]:
        """createPodSandboxWithLogDirectory."""
        name = "PodSandbox-with-log-directory-" + new_uuid()
        config = self.pod_config(name, log_directory=self.log_dir(name))
        return await self.run_pod(config), config

    async def privileged_pod(self, privileged: bool) -> tuple[str, pb.PodSandboxConfig]:
        """createPrivilegedPodSandbox."""
        config = self.pod_config("create-Privileged-PodSandbox-for-container-" + new_uuid())
        config.linux.security_context.privileged = privileged
        return await self.run_pod(config), config

    async def namespace_pod(
        self, options: pb.NamespaceOption, name: str, log_directory: str = ""
    ) -> tuple[str, pb.PodSandboxConfig]:
        """createNamespacePodSandbox (with its empty DNSConfig)."""
        config = self.pod_config(name, log_directory=log_directory)
        config.dns_config.SetInParent()
        config.linux.security_context.namespace_options.CopyFrom(options)
        return await self.run_pod(config), config

    async def pod_status(self, sid: str) -> pb.PodSandboxStatus:
        response = await self.rc.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=sid))
        return response.status

    async def list_pods(self, **filter_fields: Any) -> list[pb.PodSandbox]:
        response = await self.rc.ListPodSandbox(
            pb.ListPodSandboxRequest(filter=pb.PodSandboxFilter(**filter_fields))
        )
        return list(response.items)

    async def stop_pod(self, sid: str) -> pb.StopPodSandboxResponse:
        return await self.rc.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sid))

    async def remove_pod(self, sid: str) -> pb.RemovePodSandboxResponse:
        return await self.rc.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sid))

    async def cleanup_pod(self, sid: str) -> None:
        """The AfterEach of most specs: stop, then remove, both without error."""
        await self.stop_pod(sid)
        await self.remove_pod(sid)

    # images

    async def image_status(self, image: str) -> pb.Image | None:
        response = await self.ic.ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(image=image)))
        return response.image if response.HasField("image") else None

    async def pull(self, image: str) -> str:
        response = await self.ic.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=image)))
        return str(response.image_ref)

    async def remove_image(self, image: str) -> None:
        """removeImage: by id, if the image is there."""
        status = await self.image_status(image)
        if status is not None:
            await self.ic.RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image=status.id)))

    # containers

    def container_config(
        self, name: str, image: str = "busybox", command: list[str] | None = None, **fields: Any
    ) -> pb.ContainerConfig:
        config = pb.ContainerConfig(
            metadata=pb.ContainerMetadata(name=name, attempt=DEFAULT_ATTEMPT),
            image=pb.ImageSpec(image=self.images[image]),
            command=command or [],
        )
        for key, value in fields.items():
            target = getattr(config, key)
            if isinstance(value, list):
                target.extend(value)
            elif isinstance(value, dict):
                target.update(value)
            elif hasattr(target, "CopyFrom"):
                target.CopyFrom(value)
            else:
                setattr(config, key, value)
        return config

    async def create_with_error(self, sid: str, config: pb.ContainerConfig) -> str:
        """framework.CreateContainerWithError: pull the image if missing, then create."""
        if await self.image_status(config.image.image) is None:
            await self.pull(config.image.image)
        response = await self.rc.CreateContainer(
            pb.CreateContainerRequest(pod_sandbox_id=sid, config=config)
        )
        return str(response.container_id)

    async def create(self, sid: str, config: pb.ContainerConfig) -> str:
        cid = await self.create_with_error(sid, config)
        assert cid
        return cid

    async def create_default(self, sid: str, prefix: str, **fields: Any) -> str:
        """framework.CreateDefaultContainer: busybox running ``top``."""
        config = self.container_config(prefix + new_uuid(), command=DEFAULT_COMMAND, **fields)
        config.linux.SetInParent()
        return await self.create(sid, config)

    async def create_pause(self, sid: str, prefix: str) -> str:
        """framework.CreatePauseContainer: busybox running ``sh -c top``."""
        config = self.container_config(prefix + new_uuid(), command=PAUSE_COMMAND)
        config.linux.SetInParent()
        return await self.create(sid, config)

    async def start(self, cid: str) -> None:
        await self.rc.StartContainer(pb.StartContainerRequest(container_id=cid))

    async def status(self, cid: str, verbose: bool = False) -> pb.ContainerStatus:
        response = await self.rc.ContainerStatus(
            pb.ContainerStatusRequest(container_id=cid, verbose=verbose)
        )
        return response.status

    async def wait_state(
        self, cid: str, state: pb.ContainerState.ValueType, timeout: float = 60
    ) -> pb.ContainerStatus:
        async def reached() -> pb.ContainerStatus | None:
            status = await self.status(cid)
            return status if status.state == state else None

        result: pb.ContainerStatus = await eventually(reached, timeout=timeout)
        return result

    async def start_running(self, cid: str) -> pb.ContainerStatus:
        """testStartContainer: start, then RUNNING within a minute (its status)."""
        await self.start(cid)
        return await self.wait_state(cid, pb.CONTAINER_RUNNING)

    async def stop(self, cid: str, timeout: int = DEFAULT_STOP_TIMEOUT) -> None:
        """stopContainer: the RPC must return within ``timeout`` seconds."""
        await asyncio.wait_for(
            self.rc.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=timeout)),
            timeout,
        )

    async def stop_exited(self, cid: str) -> pb.ContainerStatus:
        """testStopContainer: stop, then EXITED (its status)."""
        await self.stop(cid)
        return await self.wait_state(cid, pb.CONTAINER_EXITED)

    async def remove(self, cid: str) -> pb.RemoveContainerResponse:
        return await self.rc.RemoveContainer(pb.RemoveContainerRequest(container_id=cid))

    async def list_containers(self, **filter_fields: Any) -> list[pb.Container]:
        response = await self.rc.ListContainers(
            pb.ListContainersRequest(filter=pb.ContainerFilter(**filter_fields))
        )
        return list(response.containers)

    async def exec_sync(
        self, cid: str, cmd: list[str], timeout: int = EXEC_TIMEOUT
    ) -> pb.ExecSyncResponse:
        response: pb.ExecSyncResponse = await self.rc.ExecSync(
            pb.ExecSyncRequest(container_id=cid, cmd=cmd, timeout=timeout)
        )
        return response

    async def exec_fails(self, cid: str, cmd: list[str]) -> pb.ExecSyncResponse | None:
        """What critest's client calls an error: an RPC error or a non-zero exit code."""
        try:
            response = await self.exec_sync(cid, cmd)
        except grpc.aio.AioRpcError:
            return None
        assert response.exit_code != 0, (cmd, response)
        return response

    async def exit_code(self, cid: str, cmd: list[str]) -> int:
        """What critest's client sees of an exec: its exit code; -1 for an RPC error."""
        try:
            return int((await self.exec_sync(cid, cmd)).exit_code)
        except grpc.aio.AioRpcError:
            return -1

    async def exec_ok(self, cid: str, cmd: list[str]) -> str:
        """execSyncContainer: exit code 0, nothing on stderr; stdout."""
        response = await self.exec_sync(cid, cmd)
        assert response.exit_code == 0, (cmd, response)
        assert response.stderr == b"", (cmd, response)
        return response.stdout.decode()


@pytest.fixture
async def critest(short_dir, critest_images) -> AsyncIterator[Critest]:
    async with environment(short_dir, critest_images.refs) as env:
        yield Critest(env, critest_images)


def log_path_of(config: pb.PodSandboxConfig, log_path: str) -> str:
    return os.path.join(config.log_directory, log_path)


def logged(config: pb.PodSandboxConfig, log_path: str, stream: str) -> list[str]:
    """The lines a container wrote on ``stream`` (``stdout``/``stderr``), from its CRI log."""
    return [m.log for m in parse_log(log_path_of(config, log_path)) if m.stream == stream]


def verify_log(config: pb.PodSandboxConfig, log_path: str, text: str, stream: str) -> None:
    """verifyLogContents: a whole line ``text`` on ``stream``."""
    assert text in logged(config, log_path, stream), (text, stream)


def verify_log_re(config: pb.PodSandboxConfig, log_path: str, pattern: str, stream: str) -> None:
    messages = parse_log(log_path_of(config, log_path))
    assert any(re.search(pattern, m.log) and m.stream == stream for m in messages), messages


# -- runtime_info.go ---------------------------------------------------------------------------


async def test_runtime_should_return_version_info(critest):
    """runtime_info.go: "runtime should return version info [Conformance]"."""
    version = await critest.rc.Version(pb.VersionRequest(version="0.1.0"))
    assert version.version
    assert version.runtime_name
    assert version.runtime_version
    assert version.runtime_api_version


async def test_runtime_should_return_runtime_conditions(critest):
    """runtime_info.go: "runtime should return runtime conditions [Conformance]"."""
    status = await critest.rc.Status(pb.StatusRequest(verbose=False))
    ready = {c.type for c in status.status.conditions if c.status}
    assert {"RuntimeReady", "NetworkReady"} <= ready, status


# -- pod.go ------------------------------------------------------------------------------------


async def test_runtime_should_support_running_pod_sandbox(critest):
    """pod.go: "runtime should support running PodSandbox [Conformance]"."""
    sid = await critest.run_default_pod("PodSandbox-for-create-test-")
    assert (await critest.pod_status(sid)).state == pb.SANDBOX_READY
    assert sid in [p.id for p in await critest.list_pods(id=sid)]
    await critest.cleanup_pod(sid)


async def test_runtime_should_support_stopping_pod_sandbox(critest):
    """pod.go: "runtime should support stopping PodSandbox [Conformance]"."""
    sid = await critest.run_default_pod("PodSandbox-for-test-stop-")
    await critest.stop_pod(sid)
    assert (await critest.pod_status(sid)).state == pb.SANDBOX_NOTREADY
    await critest.cleanup_pod(sid)


async def test_runtime_should_support_removing_pod_sandbox(critest):
    """pod.go: "runtime should support removing PodSandbox [Conformance]"."""
    sid = await critest.run_default_pod("PodSandbox-for-test-remove-")
    await critest.stop_pod(sid)
    await critest.remove_pod(sid)
    assert sid not in [p.id for p in await critest.list_pods(id=sid)]


async def test_runtime_should_support_preserving_pod_sandbox_attributes(critest):
    """pod.go: "runtime should support preserving PodSandbox attributes [Conformance]"."""
    name = "PodSandbox-with-attributes-" + new_uuid()
    config = critest.pod_config(name)
    uid, namespace = config.metadata.uid, config.metadata.namespace
    labels = {
        "foo": "bar",
        "io.kubernetes.pod.name": name,
        "io.kubernetes.pod.namespace": namespace,
        "io.kubernetes.pod.uid": uid,
    }
    annotations = {"abc": "def"}
    config.labels.update(labels)
    config.annotations.update(annotations)
    sid = await critest.run_pod(config)

    status = await critest.pod_status(sid)
    pods = await critest.list_pods(id=sid)
    assert len(pods) == 1
    for seen in (status, pods[0]):
        assert (seen.metadata.name, seen.metadata.uid) == (name, uid)
        assert (seen.metadata.namespace, seen.metadata.attempt) == (namespace, DEFAULT_ATTEMPT)
        assert labels.items() <= dict(seen.labels).items()
        assert annotations.items() <= dict(seen.annotations).items()
    await critest.cleanup_pod(sid)


#: pod.go's expectedMetricDescriptorNames (cadvisor's names on the legacy stats provider).
EXPECTED_METRICS = [
    "container_blkio_device_usage_total",
    "container_cpu_cfs_periods_total",
    "container_cpu_cfs_throttled_periods_total",
    "container_cpu_cfs_throttled_seconds_total",
    "container_cpu_system_seconds_total",
    "container_cpu_usage_seconds_total",
    "container_cpu_user_seconds_total",
    "container_file_descriptors",
    "container_fs_inodes_free",
    "container_fs_inodes_total",
    "container_fs_limit_bytes",
    "container_fs_reads_bytes_total",
    "container_fs_reads_total",
    "container_fs_usage_bytes",
    "container_fs_writes_bytes_total",
    "container_fs_writes_total",
    "container_hugetlb_max_usage_bytes",
    "container_hugetlb_usage_bytes",
    "container_last_seen",
    "container_memory_cache",
    "container_memory_failcnt",
    "container_memory_failures_total",
    "container_memory_kernel_usage",
    "container_memory_mapped_file",
    "container_memory_max_usage_bytes",
    "container_memory_rss",
    "container_memory_swap",
    "container_memory_usage_bytes",
    "container_memory_working_set_bytes",
    "container_network_receive_bytes_total",
    "container_network_receive_errors_total",
    "container_network_receive_packets_dropped_total",
    "container_network_receive_packets_total",
    "container_network_transmit_bytes_total",
    "container_network_transmit_errors_total",
    "container_network_transmit_packets_dropped_total",
    "container_network_transmit_packets_total",
    "container_oom_events_total",
    "container_pressure_cpu_stalled_seconds_total",
    "container_pressure_cpu_waiting_seconds_total",
    "container_pressure_io_stalled_seconds_total",
    "container_pressure_io_waiting_seconds_total",
    "container_pressure_memory_stalled_seconds_total",
    "container_pressure_memory_waiting_seconds_total",
    "container_processes",
    "container_sockets",
    "container_spec_cpu_period",
    "container_spec_cpu_quota",
    "container_spec_cpu_shares",
    "container_spec_memory_limit_bytes",
    "container_spec_memory_reservation_limit_bytes",
    "container_spec_memory_swap_limit_bytes",
    "container_start_time_seconds",
    "container_threads",
    "container_threads_max",
    "container_ulimits_soft",
]
#: pod.go's unimplementedMetricDescriptors: not yet served by every runtime.
UNIMPLEMENTED_METRICS = frozenset(
    [
        "container_hugetlb_max_usage_bytes",
        "container_hugetlb_usage_bytes",
        "container_pressure_cpu_stalled_seconds_total",
        "container_pressure_cpu_waiting_seconds_total",
        "container_pressure_io_stalled_seconds_total",
        "container_pressure_io_waiting_seconds_total",
        "container_pressure_memory_stalled_seconds_total",
        "container_pressure_memory_waiting_seconds_total",
        "container_spec_cpu_quota",
        "container_spec_memory_reservation_limit_bytes",
        "container_ulimits_soft",
    ]
)
#: pod.go's optionalValuesForMetricDescriptors: blkio accounting may be absent.
OPTIONAL_METRICS = frozenset(
    [
        "container_blkio_device_usage_total",
        "container_fs_reads_bytes_total",
        "container_fs_reads_total",
        "container_fs_writes_bytes_total",
        "container_fs_writes_total",
    ]
)


async def skip_unless_metrics(critest: Critest) -> None:
    """The BeforeEach of pod.go's metrics specs: UNIMPLEMENTED means skip."""
    try:
        await critest.rc.ListMetricDescriptors(pb.ListMetricDescriptorsRequest())
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
            pytest.skip("CRI Metrics endpoints not supported by this runtime version")
        raise


async def metric_descriptors(critest: Critest) -> list[pb.MetricDescriptor]:
    response = await critest.rc.ListMetricDescriptors(pb.ListMetricDescriptorsRequest())
    return list(response.descriptors)


async def test_runtime_should_support_returning_metrics_descriptors(critest):
    """pod.go: "runtime should support returning metrics descriptors [Conformance]"."""
    await skip_unless_metrics(critest)
    descriptors = await metric_descriptors(critest)
    for desc in descriptors:
        assert desc.help, f"metric descriptor {desc.name} has no help text"
        assert desc.label_keys, f"metric descriptor {desc.name} has no label keys"
    names = {d.name for d in descriptors}
    missing = [n for n in EXPECTED_METRICS if n not in names and n not in UNIMPLEMENTED_METRICS]
    assert missing == []


async def test_runtime_should_support_listing_pod_sandbox_metrics(critest):
    """pod.go: "runtime should support listing pod sandbox metrics [Conformance]"."""
    await skip_unless_metrics(critest)
    sid, _ = await critest.pod_for_container()
    resources = pb.LinuxContainerResources(
        cpu_period=100000,
        cpu_quota=20000,
        cpu_shares=1024,
        memory_limit_in_bytes=64 << 20,
        memory_swap_limit_in_bytes=64 << 20,
    )
    config = critest.container_config(
        "container-for-metrics-" + new_uuid(),
        command=DEFAULT_COMMAND,
        linux=pb.LinuxContainerConfig(resources=resources),
    )
    cid = await critest.create(sid, config)
    await critest.start(cid)
    write = await critest.exec_sync(
        cid,
        [
            "/bin/sh",
            "-c",
            "mkdir -p /var/lib/mydisktest && for i in $(seq 1 10); do "
            "echo hi >> /var/lib/mydisktest/inode_test_file_$i; done; sync",
        ],
    )
    assert write.exit_code == 0, write
    descriptors = await metric_descriptors(critest)
    response = await critest.rc.ListPodSandboxMetrics(pb.ListPodSandboxMetricsRequest())
    pods = [m for m in response.pod_metrics if m.pod_sandbox_id == sid]
    assert pods, f"no metrics for pod {sid}"
    found: dict[str, list[str]] = {}
    for metric in [*pods[0].metrics, *(m for c in pods[0].container_metrics for m in c.metrics)]:
        if not found.get(metric.name):
            found[metric.name] = list(metric.label_values)
    skippable = OPTIONAL_METRICS | UNIMPLEMENTED_METRICS
    missing = [n for n in EXPECTED_METRICS if not found.get(n) and n not in skippable]
    assert missing == [], f"expected {missing} to be present"
    mismatched = [
        d.name
        for d in descriptors
        if (d.name not in found and d.name not in skippable)
        or (d.name in found and len(found[d.name]) != len(d.label_keys))
    ]
    assert mismatched == [], "label sets differ between descriptors and metrics"
    await critest.cleanup_pod(sid)


# -- pod_linux.go ------------------------------------------------------------------------------


async def sysctl_pod(critest: Critest, sysctls: dict[str, str]) -> tuple[str, str]:
    """createSandboxWithSysctls, then a started default container: (pod, container)."""
    config = critest.pod_config("pod-sandbox-with-sysctls-" + new_uuid())
    config.linux.sysctls.update(sysctls)
    sid = await critest.run_pod(config)
    cid = await critest.create_default(sid, "container-sysctl-")
    await critest.start(cid)
    return sid, cid


async def test_should_support_safe_sysctls(critest):
    """pod_linux.go: "should support safe sysctls"."""
    sid, cid = await sysctl_pod(critest, {"kernel.shm_rmid_forced": "1"})
    value = await critest.exec_sync(cid, ["cat", "/proc/sys/kernel/shm_rmid_forced"])
    assert value.stdout.decode().strip() == "1"
    await critest.cleanup_pod(sid)


async def test_should_support_unsafe_sysctls(critest):
    """pod_linux.go: "should support unsafe sysctls"."""
    sid, cid = await sysctl_pod(critest, {"fs.mqueue.msg_max": "100"})
    value = await critest.exec_sync(cid, ["cat", "/proc/sys/fs/mqueue/msg_max"])
    assert value.stdout.decode().strip() == "100"
    await critest.cleanup_pod(sid)


# -- container.go ------------------------------------------------------------------------------


@pytest.fixture
async def pod(critest) -> AsyncIterator[tuple[str, pb.PodSandboxConfig]]:
    """The BeforeEach/AfterEach of container.go's contexts: a pod, stopped and removed after."""
    sid, config = await critest.pod_for_container()
    yield sid, config
    await critest.cleanup_pod(sid)


async def test_runtime_should_support_creating_container(critest, pod):
    """container.go: "runtime should support creating container [Conformance]"."""
    cid = await critest.create_default(pod[0], "container-for-create-")
    assert cid in [c.id for c in await critest.list_containers(id=cid)]


async def test_runtime_should_support_starting_container(critest, pod):
    """container.go: "runtime should support starting container [Conformance]"."""
    cid = await critest.create_default(pod[0], "container-for-start-test-")
    status = await critest.start_running(cid)
    assert status.state == pb.CONTAINER_RUNNING and status.started_at > 0


async def test_runtime_should_support_stopping_container(critest, pod):
    """container.go: "runtime should support stopping container [Conformance]"."""
    cid = await critest.create_default(pod[0], "container-for-stop-test-")
    await critest.start(cid)
    status = await critest.stop_exited(cid)
    assert status.state == pb.CONTAINER_EXITED and status.finished_at > 0


async def test_runtime_should_support_removing_created_container(critest, pod):
    """container.go: "runtime should support removing created container [Conformance]"."""
    cid = await critest.create_pause(pod[0], "container-for-remove-created-test-")
    await critest.remove(cid)
    assert cid not in [c.id for c in await critest.list_containers(id=cid)]


async def test_runtime_should_support_removing_running_container(critest, pod):
    """container.go: "runtime should support removing running container [Conformance]"."""
    cid = await critest.create_pause(pod[0], "container-for-remove-running-test-")
    await critest.start(cid)
    await critest.remove(cid)
    assert cid not in [c.id for c in await critest.list_containers(id=cid)]


async def test_runtime_should_support_removing_stopped_container(critest, pod):
    """container.go: "runtime should support removing stopped container [Conformance]"."""
    cid = await critest.create_pause(pod[0], "container-for-remove-stopped-test-")
    await critest.start(cid)
    await critest.stop_exited(cid)
    await critest.remove(cid)
    assert cid not in [c.id for c in await critest.list_containers(id=cid)]


async def test_runtime_should_support_exec_sync(critest, pod):
    """container.go: "runtime should support execSync [Conformance]"."""
    cid = await critest.create_default(pod[0], "container-for-execSync-test-")
    await critest.start(cid)
    assert await critest.exec_ok(cid, ECHO_HELLO) == "hello"


async def test_runtime_should_support_exec_sync_with_timeout(critest, pod):
    """container.go: "runtime should support execSync with timeout [Conformance]"."""
    cid = await critest.create_default(pod[0], "container-for-execSync-timeout-test-")
    await critest.start(cid)
    with pytest.raises(grpc.aio.AioRpcError):
        await critest.exec_sync(cid, SLEEP_COMMAND, timeout=1)
    # The timed-out process is gone.
    assert (await critest.exec_ok(cid, CHECK_SLEEP)).strip() == ""


async def test_runtime_should_support_listing_container_stats(critest, pod):
    """container.go: "runtime should support listing container stats [Conformance]"."""
    cid = await critest.create_default(pod[0], "container-for-stats-")
    await critest.start(cid)
    response = await critest.rc.ContainerStats(pb.ContainerStatsRequest(container_id=cid))
    stats = response.stats
    assert stats.attributes.id == cid
    assert "container-for-stats-" in stats.attributes.metadata.name
    assert stats.cpu.timestamp != 0
    assert stats.memory.timestamp != 0


async def list_stats(critest: Critest, stats_filter: pb.ContainerStatsFilter | None) -> list[str]:
    request = pb.ListContainerStatsRequest()
    if stats_filter is not None:
        request.filter.CopyFrom(stats_filter)
    response = await critest.rc.ListContainerStats(request)
    return [s.attributes.id for s in response.stats]


async def test_runtime_should_support_listing_stats_for_started_containers(critest, pod):
    """container.go: "runtime should support listing stats for started containers
    [Conformance]"."""
    cid = await critest.create_default(pod[0], "container-for-stats-")
    await critest.start(cid)
    assert cid in await list_stats(critest, pb.ContainerStatsFilter(id=cid))


async def test_runtime_should_support_listing_stats_for_started_containers_when_filter_is_nil(
    critest, pod
):
    """container.go: "runtime should support listing stats for started containers when filter
    is nil [Conformance]"."""
    cid = await critest.create_default(pod[0], "container-for-stats-with-nil-filter-")
    await critest.start(cid)
    assert cid in await list_stats(critest, None)


async def test_runtime_should_support_listing_stats_for_three_created_containers(critest, pod):
    """container.go: "runtime should support listing stats for three created containers when
    filter is nil. [Conformance]"."""
    cids = [
        await critest.create_default(pod[0], "container-for-stats-with-nil-filter-")
        for _ in range(3)
    ]
    for cid in cids:
        await critest.start(cid)
    listed = await list_stats(critest, None)
    assert all(cid in listed for cid in cids)


async def test_runtime_should_support_listing_stats_for_containers_filtered_by_labels(critest, pod):
    """container.go: "runtime should support listing stats for containers filtered by labels
    [Conformance]"."""
    labels = {"foo": "bar"}
    cid = await critest.create_default(pod[0], "container-for-stats-with-labels-", labels=labels)
    await critest.start(cid)
    assert cid in await list_stats(critest, pb.ContainerStatsFilter(label_selector=labels))
    other = pb.ContainerStatsFilter(label_selector={"foo": "baz"})
    assert cid not in await list_stats(critest, other)


@pytest.fixture
def host_path(critest, pod) -> Iterator[str]:
    """createHostPath: a temp dir holding ``testVolume.file``."""
    path = tempfile.mkdtemp(prefix="test" + pod[0][:12])
    with open(os.path.join(path, "testVolume.file"), "w"):
        pass
    yield path
    shutil.rmtree(path, ignore_errors=True)


def volume_config(critest: Critest, prefix: str, path: str) -> pb.ContainerConfig:
    """createVolumeContainer's config: ``path`` mounted at the same path, SELinux relabel on."""
    return critest.container_config(
        prefix + new_uuid(),
        command=PAUSE_COMMAND,
        mounts=[pb.Mount(host_path=path, container_path=path, selinux_relabel=True)],
    )


async def test_runtime_should_support_starting_container_with_volume(critest, pod, host_path):
    """container.go: "runtime should support starting container with volume [Conformance]"."""
    cid = await critest.create(
        pod[0], volume_config(critest, "container-with-volume-test-", host_path)
    )
    await critest.start_running(cid)
    assert await critest.exec_ok(cid, ["ls", "-A", host_path]) != ""


async def test_runtime_should_support_starting_container_with_volume_when_host_path_is_a_symlink(
    critest, pod, host_path
):
    """container.go: "runtime should support starting container with volume when host path is
    a symlink [Conformance]"."""
    symlink = host_path + "-symlink"
    os.symlink(host_path, symlink)
    try:
        config = volume_config(critest, "container-with-symlink-host-path-test-", symlink)
        cid = await critest.create(pod[0], config)
        await critest.start_running(cid)
        assert await critest.exec_ok(cid, ["ls", "-A", symlink]) != ""
    finally:
        os.unlink(symlink)


@pytest.fixture
async def log_pod(critest) -> AsyncIterator[tuple[str, pb.PodSandboxConfig]]:
    sid, config = await critest.pod_with_log_directory()
    yield sid, config
    await critest.cleanup_pod(sid)


async def test_runtime_should_support_starting_container_with_log(critest, log_pod):
    """container.go: "runtime should support starting container with log [Conformance]"."""
    sid, config = log_pod
    name = "container-with-log-test-" + new_uuid()
    log_path = name + ".log"
    cid = await critest.create(
        sid, critest.container_config(name, command=LOG_DEFAULT_COMMAND, log_path=log_path)
    )
    await critest.start(cid)
    await critest.wait_state(cid, pb.CONTAINER_EXITED)
    assert DEFAULT_LOG + "\n" in logged(config, log_path, "stdout")


@pytest.mark.slow
async def test_runtime_should_support_reopening_container_log(critest, log_pod):
    """container.go: "runtime should support reopening container log [Conformance]"."""
    sid, config = log_pod
    name = "container-reopen-log-test-" + new_uuid()
    log_path = name + ".log"
    cid = await critest.create(
        sid, critest.container_config(name, command=LOOP_LOG_COMMAND, log_path=log_path)
    )
    await critest.start(cid)

    async def logged(path: str) -> bool:
        return os.path.exists(log_path_of(config, path)) and bool(
            parse_log(log_path_of(config, path))
        )

    await eventually(functools.partial(logged, log_path))
    rotated = log_path + ".new"
    os.rename(log_path_of(config, log_path), log_path_of(config, rotated))
    await critest.rc.ReopenContainerLog(pb.ReopenContainerLogRequest(container_id=cid))
    assert os.path.exists(log_path_of(config, log_path)), "new container log should be created"
    await eventually(functools.partial(logged, log_path))
    old_length = len(parse_log(log_path_of(config, rotated)))
    for _ in range(5):
        await asyncio.sleep(1)
        assert len(parse_log(log_path_of(config, rotated))) == old_length


# -- container_linux.go ------------------------------------------------------------------------


@pytest.fixture
async def privileged_pod(critest) -> AsyncIterator[tuple[str, pb.PodSandboxConfig]]:
    """The BeforeEach/AfterEach of container_linux.go: a privileged pod."""
    sid, config = await critest.privileged_pod(True)
    yield sid, config
    await critest.cleanup_pod(sid)


def host_temp_dir(pod_id: str) -> str:
    """``os.MkdirTemp("", "test"+podID)``, under this run's marks so the leak check sees
    any mount left in it."""
    return tempfile.mkdtemp(prefix=f"{run.dir_prefix()}test{pod_id[:12]}", dir="/tmp")


def host_mount(*argv: str) -> None:
    subprocess.run(["mount", *argv], check=True, capture_output=True)


def host_unmount(path: str) -> None:
    subprocess.run(["umount", "-l", path], check=False, capture_output=True)


@contextlib.contextmanager
def propagation_host_path(
    pod_id: str, propagation: pb.MountPropagation.ValueType
) -> Iterator[tuple[str, str, str]]:
    """createHostPathForMountPropagation: (mnt source, propagation source dir, mount point).

    ``mnt`` is bind-mounted on itself, rshared for HOST_TO_CONTAINER and BIDIRECTIONAL,
    rprivate otherwise.
    """
    host_path = host_temp_dir(pod_id)
    mnt_source = os.path.join(host_path, "mnt")
    mount_point = os.path.join(mnt_source, "propagationMnt")
    os.makedirs(mount_point, mode=0o700)
    source_dir = os.path.join(host_path, "propagationSrcDir")
    os.makedirs(source_dir, mode=0o700)
    with open(os.path.join(source_dir, "flagFile"), "w"):
        pass
    host_mount("--bind", mnt_source, mnt_source)
    shared = propagation in (pb.PROPAGATION_HOST_TO_CONTAINER, pb.PROPAGATION_BIDIRECTIONAL)
    host_mount("--make-rshared" if shared else "--make-rprivate", mnt_source)
    try:
        yield mnt_source, source_dir, mount_point
    finally:
        host_unmount(mount_point)
        host_unmount(mnt_source)
        shutil.rmtree(host_path, ignore_errors=True)


async def mount_propagation(
    critest: Critest, pod: tuple[str, Any], propagation: pb.MountPropagation.ValueType
) -> tuple[bool, bool]:
    """testMountPropagation: whether a host mount reaches the container, and whether a
    container mount reaches the host."""
    sid, _ = pod
    with propagation_host_path(sid, propagation) as (mnt_source, source_dir, mount_point):
        config = critest.container_config(
            "mount-propagation-test-" + new_uuid(),
            command=PAUSE_COMMAND,
            linux=pb.LinuxContainerConfig(
                security_context=pb.LinuxContainerSecurityContext(privileged=True)
            ),
            mounts=[
                pb.Mount(host_path=mnt_source, container_path=mnt_source, propagation=propagation)
            ],
        )
        cid = await critest.create(sid, config)
        mounts = (await critest.status(cid, verbose=True)).mounts
        assert len(mounts) == 1
        assert (mounts[0].container_path, mounts[0].host_path) == (mnt_source, mnt_source)
        assert not mounts[0].readonly
        assert not mounts[0].selinux_relabel
        assert mounts[0].propagation == propagation
        await critest.start_running(cid)

        host_mount("--rbind", source_dir, mount_point)  # createPropagationMountPoint
        seen_in_container = await critest.exec_ok(cid, ["ls", "-A", mount_point]) != ""

        container_mount_point = os.path.join(mnt_source, "containerMntPoint")
        await critest.exec_ok(cid, ["sh", "-c", "mkdir -p " + container_mount_point])
        await critest.exec_ok(cid, ["sh", "-c", "mount --bind /etc " + container_mount_point])
        seen_on_host = os.listdir(container_mount_point) != []
        return seen_in_container, seen_on_host


async def test_mount_with_rprivate_should_not_support_propagation(critest, privileged_pod):
    """container_linux.go: "mount with 'rprivate' should not support propagation"."""
    # Neither way: the host's new mount stays out, the container's stays in.
    assert await mount_propagation(critest, privileged_pod, pb.PROPAGATION_PRIVATE) == (
        False,
        False,
    )


async def test_mount_with_rshared_should_support_propagation_from_host_to_container_and_vice_versa(
    critest, privileged_pod
):
    """container_linux.go: "mount with 'rshared' should support propagation from host to
    container and vice versa"."""
    assert await mount_propagation(critest, privileged_pod, pb.PROPAGATION_BIDIRECTIONAL) == (
        True,
        True,
    )


async def test_mount_with_rslave_should_support_propagation_from_host_to_container(
    critest, privileged_pod
):
    """container_linux.go: "mount with 'rslave' should support propagation from host to
    container"."""
    assert await mount_propagation(critest, privileged_pod, pb.PROPAGATION_HOST_TO_CONTAINER) == (
        True,
        False,
    )


async def test_should_terminate_with_exit_code_137_and_reason_oom_killed(critest, privileged_pod):
    """container_linux.go: "should terminate with exitCode 137 and reason OOMKilled"."""
    resources = pb.LinuxContainerResources(
        memory_limit_in_bytes=15 << 20, memory_swap_limit_in_bytes=15 << 20
    )
    config = critest.container_config(
        "OOM-test-" + new_uuid(),
        command=["sh", "-c", "dd if=/dev/zero of=/dev/null bs=20M"],
        linux=pb.LinuxContainerConfig(resources=resources),
    )
    cid = await critest.create(privileged_pod[0], config)
    await critest.status(cid, verbose=True)
    await critest.start(cid)
    await critest.wait_state(cid, pb.CONTAINER_EXITED)

    async def oom_killed() -> bool:
        return (await critest.status(cid)).reason == "OOMKilled"

    await eventually(oom_killed)
    assert (await critest.status(cid)).exit_code == 137


@contextlib.contextmanager
def rro_host_path(pod_id: str) -> Iterator[str]:
    """createHostPathForRROMount: a temp dir with a tmpfs mounted on its ``tmpfs/``."""
    host_path = host_temp_dir(pod_id)
    tmpfs = os.path.join(host_path, "tmpfs")
    os.makedirs(tmpfs, mode=0o700)
    host_mount("-t", "tmpfs", "none", tmpfs)
    try:
        yield host_path
    finally:
        host_unmount(tmpfs)
        shutil.rmtree(host_path, ignore_errors=True)


async def runtime_supports_rro(critest: Critest) -> bool:
    """runtimeSupportsRRO: the default handler ("") advertises recursive read-only mounts."""
    status = await critest.rc.Status(pb.StatusRequest())
    return any(
        h.name == "" and h.features.recursive_read_only_mounts for h in status.runtime_handlers
    )


async def skip_unless_rro(critest: Critest) -> None:
    if not await runtime_supports_rro(critest):
        pytest.skip("runtime does not implement recursive readonly mounts")


def mount_container_config(critest: Critest, mounts: list[pb.Mount]) -> pb.ContainerConfig:
    """createMountContainer's config: busybox ``sh -c top`` with ``mounts``."""
    return critest.container_config(
        "test-mount-" + new_uuid(), command=PAUSE_COMMAND, mounts=mounts
    )


async def create_mount_container(critest: Critest, sid: str, mounts: list[pb.Mount]) -> str:
    """createMountContainer (expectErr false): the verbose status lists as many mounts."""
    cid = await critest.create(sid, mount_container_config(critest, mounts))
    assert len((await critest.status(cid, verbose=True)).mounts) == len(mounts)
    return cid


async def create_mount_container_error(
    critest: Critest, sid: str, mounts: list[pb.Mount]
) -> grpc.aio.AioRpcError | None:
    """createMountContainer (expectErr true): the error CreateContainer answered, if any."""
    try:
        await critest.create_with_error(sid, mount_container_config(critest, mounts))
    except grpc.aio.AioRpcError as exc:
        return exc
    return None


def rro_mount(host_path: str, readonly: bool, rro: bool, **fields: Any) -> pb.Mount:
    """The one mount of the readonly specs: ``host_path`` on ``/mnt``, SELinux relabelled."""
    return pb.Mount(
        host_path=host_path,
        container_path="/mnt",
        readonly=readonly,
        recursive_read_only=rro,
        selinux_relabel=True,
        **fields,
    )


#: A file only the tmpfs below the RRO host path holds.
RRO_MARKER, RRO_MARKER_TEXT = "in-tmpfs", "only in the submount\n"


async def rro_check(critest: Critest, sid: str, rro: bool) -> pb.ExecSyncResponse:
    """testRRO: the host dir (with its tmpfs) read-only on ``/mnt``, recursively or not;
    what the check exec answered: ``touch`` in the tmpfs, which must work when the mount is
    not recursive, and must fail with EROFS (``grep -q`` finds it) when it is."""
    with rro_host_path(sid) as path:
        with open(os.path.join(path, "tmpfs", RRO_MARKER), "w") as f:
            f.write(RRO_MARKER_TEXT)
        cid = await create_mount_container(critest, sid, [rro_mount(path, True, rro)])
        try:
            await critest.start_running(cid)
            # Beyond critest: the tmpfs is there (its file reads back), so a failing touch
            # below means read-only, not missing.
            seen = await critest.exec_sync(cid, ["cat", f"/mnt/tmpfs/{RRO_MARKER}"])
            assert (seen.exit_code, seen.stdout) == (0, RRO_MARKER_TEXT.encode()), seen
            command = ["touch", "/mnt/tmpfs/file"]
            if rro:
                command = [
                    "sh",
                    "-c",
                    'touch /mnt/tmpfs/foo 2>&1 | grep -q "Read-only file system"',
                ]
            return await critest.exec_sync(cid, command)
        finally:
            # Gone before its host dir is: a mount it holds would keep the dir (critest
            # removes the pod afterwards and leaves the dir behind).
            await critest.rc.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=0))
            await critest.remove(cid)


async def test_should_support_non_recursive_readonly_mounts(critest, privileged_pod):
    """container_linux.go: "should support non-recursive readonly mounts"."""
    response = await rro_check(critest, privileged_pod[0], rro=False)
    assert (response.exit_code, response.stderr) == (0, b""), response  # execSyncContainer


async def test_should_support_recursive_readonly_mounts(critest, privileged_pod):
    """container_linux.go: "should support recursive readonly mounts"."""
    await skip_unless_rro(critest)
    response = await rro_check(critest, privileged_pod[0], rro=True)
    assert (response.exit_code, response.stderr) == (0, b""), response  # execSyncContainer


async def rro_invalid_propagation(
    critest: Critest, sid: str, propagation: pb.MountPropagation.ValueType
) -> grpc.aio.AioRpcError | None:
    """testRROInvalidPropagation: a recursive read-only mount that propagates mounts."""
    with rro_host_path(sid) as path:
        mount = rro_mount(path, True, True, propagation=propagation)
        return await create_mount_container_error(critest, sid, [mount])


async def test_should_reject_a_recursive_readonly_mount_with_propagation_host_to_container(
    critest, privileged_pod
):
    """container_linux.go: "should reject a recursive readonly mount with
    PROPAGATION_HOST_TO_CONTAINER"."""
    await skip_unless_rro(critest)
    sid = privileged_pod[0]
    error = await rro_invalid_propagation(critest, sid, pb.PROPAGATION_HOST_TO_CONTAINER)
    assert error is not None, "CreateContainer accepted it"


async def test_should_reject_a_recursive_readonly_mount_with_propagation_bidirectional(
    critest, privileged_pod
):
    """container_linux.go: "should reject a recursive readonly mount with
    PROPAGATION_BIDIRECTIONAL"."""
    await skip_unless_rro(critest)
    error = await rro_invalid_propagation(critest, privileged_pod[0], pb.PROPAGATION_BIDIRECTIONAL)
    assert error is not None, "CreateContainer accepted it"


async def test_should_reject_a_recursive_readonly_mount_with_read_only_false(
    critest, privileged_pod
):
    """container_linux.go: "should reject a recursive readonly mount with ReadOnly: false"."""
    await skip_unless_rro(critest)
    sid = privileged_pod[0]
    with rro_host_path(sid) as path:
        error = await create_mount_container_error(critest, sid, [rro_mount(path, False, True)])
    assert error is not None, "CreateContainer accepted it"


@pytest.mark.parametrize(
    "spec",
    [
        "runtime should start a container with its default cgroup mount mode [Conformance]",
        "runtime should mount cgroups read-only with CGROUP_MOUNT_MODE_READ_ONLY [Conformance]",
        "runtime should allow cgroup creation with CGROUP_MOUNT_MODE_WRITABLE [Conformance]",
        "runtime should reject CGROUP_MOUNT_MODE_WRITABLE without nsdelegate [Conformance]",
    ],
)
def test_cgroup_mount_mode_specs(spec):
    """cgroup_mount_mode_linux.go: every spec (skipped on a host without cgroup v2)."""
    with open("/proc/self/mounts") as f:
        v2 = any(line.split()[1:3] == ["/sys/fs/cgroup", "cgroup2"] for line in f)
    if not v2:
        pytest.skip("CgroupMountMode requires cgroup v2")
    pytest.skip("cgroup_mount_mode is newer than the CRI (Kubernetes 1.36) the agent serves")


# -- security_context_linux.go: NamespaceOption --------------------------------------------------


def namespace_options(
    pid: pb.NamespaceMode.ValueType = pb.POD,
    ipc: pb.NamespaceMode.ValueType = pb.POD,
    network: pb.NamespaceMode.ValueType = pb.POD,
) -> pb.NamespaceOption:
    return pb.NamespaceOption(pid=pid, ipc=ipc, network=network)


async def namespace_container(
    critest: Critest,
    sid: str,
    name: str,
    image: str,
    options: pb.NamespaceOption,
    command: list[str] | None,
    log_path: str = "",
) -> str:
    """createNamespaceContainer, started and RUNNING."""
    config = critest.container_config(
        name,
        image=image,
        command=command,
        log_path=log_path,
        linux=pb.LinuxContainerConfig(
            security_context=pb.LinuxContainerSecurityContext(namespace_options=options)
        ),
    )
    cid = await critest.create(sid, config)
    return cid


POD_NAME = "NamespaceOption-PodSandbox-"


async def test_runtime_should_support_host_pid(critest):
    """security_context_linux.go: "runtime should support HostPID"."""
    options = namespace_options(pid=pb.NODE)
    sid, _ = await critest.namespace_pod(options, POD_NAME + new_uuid())
    nginx = await namespace_container(
        critest, sid, "nginx-container-hostpid-" + new_uuid(), "nginx", options, None
    )
    await critest.start_running(nginx)
    nginx_pid = (
        await critest.exec_ok(
            nginx,
            [
                "sh",
                "-c",
                "while [ ! -f /var/run/nginx.pid ]; do sleep 1; done && cat /var/run/nginx.pid",
            ],
        )
    ).strip()
    busybox = await namespace_container(
        critest,
        sid,
        "container-with-HostPID-test-" + new_uuid(),
        "busybox",
        options,
        ["sh", "-c", "sleep 1000"],
    )
    await critest.start_running(busybox)
    pids = (await critest.exec_ok(busybox, ["pidof", "nginx", "||", "true"])).strip()
    assert pids, "nginx's pid should be seen by hostpid containers"
    assert nginx_pid in pids.split(), (nginx_pid, pids)
    await critest.cleanup_pod(sid)


async def host_ipc_seen(critest: Critest, mode: pb.NamespaceMode.ValueType) -> bool:
    """testHostIPC: is a shared memory segment made on the host seen in the pod?"""
    made = subprocess.run(["ipcmk", "-M", "1048576"], capture_output=True, text=True, check=True)
    segment = made.stdout.strip().removeprefix("Shared memory id: ")
    try:
        options = namespace_options(ipc=mode)
        sid, _ = await critest.namespace_pod(options, POD_NAME + new_uuid())
        cid = await namespace_container(
            critest, sid, "namespace-container-" + new_uuid(), "busybox", options, PAUSE_COMMAND
        )
        await critest.start_running(cid)
        listed = await critest.exec_ok(cid, ["ipcs", "-m"])
        await critest.cleanup_pod(sid)
        return segment in listed
    finally:
        subprocess.run(["ipcrm", "-m", segment], capture_output=True, check=False)


async def test_runtime_should_support_host_ipc_is_true(critest):
    """security_context_linux.go: "runtime should support HostIpc is true"."""
    assert await host_ipc_seen(critest, pb.NODE), "the host's segment should be seen"


async def test_runtime_should_support_host_ipc_is_false(critest):
    """security_context_linux.go: "runtime should support HostIpc is false"."""
    assert not await host_ipc_seen(critest, pb.POD), "the host's segment should not be seen"


async def test_runtime_should_support_pod_pid(critest):
    """security_context_linux.go: "runtime should support PodPID"."""
    options = pb.NamespaceOption(pid=pb.POD)
    sid, _ = await critest.namespace_pod(options, POD_NAME + new_uuid())
    cid = await namespace_container(
        critest, sid, "nginx-container-process-namespace-" + new_uuid(), "nginx", options, None
    )
    await critest.start_running(cid)
    await asyncio.sleep(1)  # nginx is up
    assert "master process" not in await critest.exec_ok(cid, ["cat", "/proc/1/cmdline"])
    await critest.cleanup_pod(sid)


async def test_runtime_should_support_container_pid(critest):
    """security_context_linux.go: "runtime should support ContainerPID"."""
    options = pb.NamespaceOption(pid=pb.CONTAINER)
    sid, _ = await critest.namespace_pod(options, POD_NAME + new_uuid())
    cid = await namespace_container(
        critest, sid, "nginx-container-pid-" + new_uuid(), "nginx", options, None
    )
    await critest.start_running(cid)
    pid1 = await critest.exec_ok(
        cid,
        ["sh", "-c", 'while ! cat /proc/1/cmdline | grep "master process"; do sleep 1; done'],
    )
    assert "master process" in pid1  # nginx is pid 1 of its own namespace
    await critest.cleanup_pod(sid)


async def host_port_listed(critest: Critest, host_network: bool) -> bool:
    """createAndCheckHostNetwork: is a port the host listens on in the pod's ``netstat``?"""
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as server:
        server.bind(("::", 0))
        server.listen()
        port = server.getsockname()[1]
        options = namespace_options(network=pb.NODE if host_network else pb.POD)
        name = POD_NAME + new_uuid()
        sid, config = await critest.namespace_pod(options, name, critest.log_dir(name))
        container = "container-with-HostNetwork-test-" + new_uuid()
        log_path = container + ".log"
        cid = await namespace_container(
            critest, sid, container, "busybox", options, ["sh", "-c", "netstat -ln"], log_path
        )
        await critest.start(cid)

        await critest.wait_state(cid, pb.CONTAINER_EXITED)  # netstat -ln has run
        listed = any(f":{port}" in line for line in logged(config, log_path, "stdout"))
        await critest.cleanup_pod(sid)
        return listed


async def test_runtime_should_support_host_network_is_true(critest):
    """security_context_linux.go: "runtime should support HostNetwork is true"."""
    assert await host_port_listed(critest, True), "the host's port should be listed"


async def test_runtime_should_support_host_network_is_false(critest):
    """security_context_linux.go: "runtime should support HostNetwork is false"."""
    assert not await host_port_listed(critest, False), "the host's port should not be listed"


# -- security_context_linux.go: bucket -----------------------------------------------------------


def security(**fields: Any) -> pb.LinuxContainerConfig:
    return pb.LinuxContainerConfig(security_context=pb.LinuxContainerSecurityContext(**fields))


async def test_runtime_should_support_supplemental_groups(critest, pod):
    """security_context_linux.go: "runtime should support SupplementalGroups"."""
    config = critest.container_config(
        "container-with-SupplementalGroups-test-" + new_uuid(),
        command=PAUSE_COMMAND,
        linux=security(supplemental_groups=[1234, 5678]),
    )
    cid = await critest.create(pod[0], config)
    await critest.start_running(cid)
    groups = (await critest.exec_ok(cid, ["id", "-G"])).strip().split(" ")
    assert "1234" in groups
    assert "5678" in groups


async def test_runtime_should_support_run_as_user(critest, pod):
    """security_context_linux.go: "runtime should support RunAsUser"."""
    config = critest.container_config(
        "container-with-RunAsUser-test-" + new_uuid(),
        command=PAUSE_COMMAND,
        linux=security(run_as_user=pb.Int64Value(value=1001)),
    )
    cid = await critest.create(pod[0], config)
    await critest.start_running(cid)
    assert await critest.exec_ok(cid, ["id", "-u"]) == "1001\n"


async def test_runtime_should_support_run_as_user_name(critest, pod):
    """security_context_linux.go: "runtime should support RunAsUserName"."""
    config = critest.container_config(
        "container-with-RunAsUserName-test-" + new_uuid(),
        command=PAUSE_COMMAND,
        linux=security(run_as_username="nobody"),
    )
    cid = await critest.create(pod[0], config)
    await critest.start_running(cid)
    assert await critest.exec_ok(cid, ["id", "-nu"]) == "nobody\n"


async def test_runtime_should_support_run_as_group(critest, log_pod):
    """security_context_linux.go: "runtime should support RunAsGroup"."""
    sid, pod_config = log_pod
    name = "container-with-RunAsGroup-test-" + new_uuid()
    config = critest.container_config(
        name,
        command=["sh", "-c", "echo $(id -u):$(id -g)"],
        linux=security(
            run_as_user=pb.Int64Value(value=1001), run_as_group=pb.Int64Value(value=1002)
        ),
        log_path=name + ".log",
    )
    cid = await critest.create(sid, config)
    await critest.start(cid)
    await critest.wait_state(cid, pb.CONTAINER_EXITED)
    assert logged(pod_config, name + ".log", "stdout") == ["1001:1002\n"]


async def test_runtime_should_return_error_if_run_as_group_is_set_without_run_as_user(critest, pod):
    """security_context_linux.go: "runtime should return error if RunAsGroup is set without
    RunAsUser"."""
    config = critest.container_config(
        "container-with-RunAsGroup-without-RunAsUser-test-" + new_uuid(),
        command=["sh", "-c", "echo $(id -u):$(id -g)"],
        linux=security(run_as_group=pb.Int64Value(value=1002)),
    )
    with pytest.raises(grpc.aio.AioRpcError):
        await critest.create_with_error(pod[0], config)


async def rootfs_write(
    critest: Critest, log_pod: tuple[str, Any], readonly: bool
) -> tuple[list[str], list[str]]:
    """createReadOnlyRootfsContainer: what ``touch`` in the rootfs logged (stdout, stderr)."""
    sid, pod_config = log_pod
    prefix = "container-with-ReadOnlyRootfs-%s-test-" % ("true" if readonly else "false")
    name = prefix + new_uuid()
    config = critest.container_config(
        name,
        command=["sh", "-c", "touch test.go && [ -f test.go ] && echo 'Found'"],
        linux=security(readonly_rootfs=readonly),
        log_path=name + ".log",
    )
    cid = await critest.create(sid, config)
    await critest.start(cid)
    await critest.wait_state(cid, pb.CONTAINER_EXITED)
    path = name + ".log"
    return logged(pod_config, path, "stdout"), logged(pod_config, path, "stderr")


async def test_runtime_should_support_that_read_only_rootfs_is_false(critest, log_pod):
    """security_context_linux.go: "runtime should support that ReadOnlyRootfs is false"."""
    stdout, _ = await rootfs_write(critest, log_pod, False)
    assert stdout == ["Found\n"]  # checkRootfs


async def test_runtime_should_support_that_read_only_rootfs_is_true(critest, log_pod):
    """security_context_linux.go: "runtime should support that ReadOnlyRootfs is true"."""
    _, stderr = await rootfs_write(critest, log_pod, True)
    assert stderr == ["touch: test.go: Read-only file system\n"]  # checkRootfs


async def add_bridge(critest: Critest, cid: str) -> int:
    """checkNetworkManagement: ``brctl addbr foobar`` (works only with CAP_NET_ADMIN)."""
    return await critest.exit_code(cid, ["brctl", "addbr", "foobar"])


async def privileged_add_bridge(critest: Critest, privileged: bool) -> int:
    """A (non-)privileged container's ``brctl addbr`` exit code."""
    sid, _ = await critest.privileged_pod(privileged)
    prefix = (
        "container-with-isPrivileged-test-" if privileged else "container-with-notPrivileged-test-"
    )
    config = critest.container_config(
        prefix + new_uuid(), command=PAUSE_COMMAND, linux=security(privileged=privileged)
    )
    cid = await critest.create(sid, config)
    await critest.start_running(cid)
    code = await add_bridge(critest, cid)
    await critest.cleanup_pod(sid)
    return code


async def test_runtime_should_support_privileged_is_true(critest):
    """security_context_linux.go: "runtime should support Privileged is true"."""
    assert await privileged_add_bridge(critest, True) == 0


async def test_runtime_should_support_privileged_is_false(critest):
    """security_context_linux.go: "runtime should support Privileged is false"."""
    assert await privileged_add_bridge(critest, False) != 0


async def capability_container(
    critest: Critest, sid: str, prefix: str, add: list[str], drop: list[str]
) -> str:
    """createCapabilityContainer, started and RUNNING."""
    config = critest.container_config(
        prefix + new_uuid(),
        command=PAUSE_COMMAND,
        linux=security(capabilities=pb.Capability(add_capabilities=add, drop_capabilities=drop)),
    )
    cid = await critest.create(sid, config)
    await critest.start_running(cid)
    return cid


async def test_runtime_should_support_adding_capability(critest, pod):
    """security_context_linux.go: "runtime should support adding capability"."""
    cid = await capability_container(
        critest, pod[0], "container-with-added-capability-test-", ["NET_ADMIN"], []
    )
    assert await add_bridge(critest, cid) == 0
    plain = await critest.create_default(pod[0], "container-with-notCapability-test-")
    await critest.start_running(plain)
    assert await add_bridge(critest, plain) != 0


async def test_runtime_should_support_dropping_capability(critest, pod):
    """security_context_linux.go: "runtime should support dropping capability"."""
    cid = await capability_container(
        critest, pod[0], "container-with-dropped-capability-test-", [], ["NET_RAW"]
    )
    response = await critest.exec_fails(cid, ["ping", "127.0.0.1"])
    assert response is not None
    assert response.stdout != b""
    assert b"permission denied" in response.stderr


async def proc_status(critest: Critest, cid: str) -> str:
    response = await critest.exec_sync(cid, ["cat", "/proc/self/status"])
    assert response.exit_code == 0
    assert response.stderr == b""
    return response.stdout.decode()


async def test_runtime_should_support_adding_all_capabilities(critest, pod):
    """security_context_linux.go: "runtime should support adding ALL capabilities"."""
    cid = await capability_container(
        critest, pod[0], "container-with-added-all-capability-test-", ["ALL"], []
    )
    assert not re.search(r"CapBnd:\s0000000000000000", await proc_status(critest, cid))


async def test_runtime_should_support_dropping_all_capabilities(critest, pod):
    """security_context_linux.go: "runtime should support dropping ALL capabilities"."""
    cid = await capability_container(
        critest, pod[0], "container-with-dropped-all-capability-test-", [], ["ALL"]
    )
    assert re.search(r"CapBnd:\s0000000000000000", await proc_status(critest, cid))


async def test_runtime_should_support_masked_paths(critest, pod):
    """security_context_linux.go: "runtime should support MaskedPaths".

    critest runs ``/bin/sh -c ls``; the host's busybox runs ``ls`` in-process there, so the
    masked ``/bin/ls`` is named by path (the shell must execute it, and cannot).
    """
    config = critest.container_config(
        "container-with-maskedpaths" + new_uuid(),
        command=PAUSE_COMMAND,
        linux=security(masked_paths=["/bin/ls"]),
    )
    cid = await critest.create(pod[0], config)
    await critest.start_running(cid)
    response = await critest.exec_fails(cid, ["/bin/sh", "-c", "/bin/ls"])
    assert response is not None
    assert response.stderr.decode() == "/bin/sh: /bin/ls: Permission denied\n"


async def test_runtime_should_support_readonly_paths(critest, pod):
    """security_context_linux.go: "runtime should support ReadonlyPaths"."""
    config = critest.container_config(
        "container-with-readonlypaths" + new_uuid(),
        command=PAUSE_COMMAND,
        linux=security(readonly_paths=["/tmp"]),
    )
    cid = await critest.create(pod[0], config)
    await critest.start_running(cid)
    response = await critest.exec_fails(cid, ["touch", "/tmp/test"])
    assert response is not None
    assert response.stderr.decode() == "touch: /tmp/test: Read-only file system\n"


#: security_context_linux.go's image constants for test-image-predefined-group.
IMAGE_PREDEFINED_GROUP_UID = 1000
IMAGE_PREDEFINED_GROUP_GID = 50000


async def skip_unless_supplemental_groups_policy(critest: Critest) -> None:
    """The SupplementalGroupsPolicy Context's BeforeEach."""
    status = await critest.rc.Status(pb.StatusRequest(verbose=False))
    if not status.HasField("features") or not status.features.supplemental_groups_policy:
        pytest.skip("The runtime does not support SupplementalGroupsPolicy feature")


async def supplemental_groups_policy(
    critest: Critest, policy: pb.SupplementalGroupsPolicy.ValueType, expected: list[int]
) -> str:
    """Both SupplementalGroupsPolicy specs: uid 1000 of the predefined-group image with
    SupplementalGroups [1234] under ``policy``. Waits (a minute) for it to run with
    ``ContainerStatus.user`` showing uid 1000, gid 1000 and ``expected`` (sorted) as its
    groups, and for its log; checks the first process printed ``expected`` (``id -G``).
    Returns what ``id -G`` prints in an exec'd process."""
    await skip_unless_supplemental_groups_policy(critest)
    sid, pod_config = await critest.pod_with_log_directory()
    try:
        # critest names the container ...PolicyMerge- in the Strict spec too.
        name = "container-with-SupplementalGroupsPolicyMerge-" + new_uuid()
        log_path = name + ".log"
        config = critest.container_config(
            name,
            image="test-image-predefined-group",
            command=["sh", "-c", "id -G; sleep infinity"],
            linux=security(
                run_as_user=pb.Int64Value(value=IMAGE_PREDEFINED_GROUP_UID),
                supplemental_groups=[1234],
                supplemental_groups_policy=policy,
            ),
            log_path=log_path,
        )
        cid = await critest.create(sid, config)
        await critest.start(cid)
        want = pb.ContainerUser(
            linux=pb.LinuxContainerUser(
                uid=IMAGE_PREDEFINED_GROUP_UID,
                gid=IMAGE_PREDEFINED_GROUP_UID,
                supplemental_groups=expected,
            )
        )

        async def running_as_expected() -> bool:
            status = await critest.status(cid)
            assert status.state == pb.CONTAINER_RUNNING, status
            user = pb.ContainerUser()
            user.CopyFrom(status.user)
            if status.HasField("user") and status.user.HasField("linux"):
                user.linux.supplemental_groups[:] = sorted(status.user.linux.supplemental_groups)
            assert user == want, (status.user, want)
            assert parse_log(log_path_of(pod_config, log_path)), "nothing logged yet"
            return True

        await eventually(running_as_expected, timeout=60)
        expected_output = " ".join(str(g) for g in expected) + "\n"
        verify_log(pod_config, log_path, expected_output, "stdout")  # the first process
        return await critest.exec_ok(cid, ["id", "-G"])
    finally:
        await critest.cleanup_pod(sid)


async def test_merge_if_the_primary_uid_is_in_image_groups_runtime_should_add_supplemental_groups(
    critest,
):
    """security_context_linux.go, SupplementalGroupsPolicy, "SupplementalGroupsPolicy=Merge
    (Default)": "if the container's primary UID belongs to some groups in the image,
    runtime should add SupplementalGroups to them"."""
    # Merge is the enum's zero, so on the wire the policy is unset, as critest leaves it.
    # 1000 is the primary group, 1234 the requested one, 50000 from the image's /etc/group.
    groups = [IMAGE_PREDEFINED_GROUP_UID, 1234, IMAGE_PREDEFINED_GROUP_GID]
    output = await supplemental_groups_policy(critest, pb.SupplementalGroupsPolicy.Merge, groups)
    assert output == "1000 1234 50000\n"


async def test_strict_even_if_the_primary_uid_is_in_image_groups_runtime_should_not_add_them(
    critest,
):
    """security_context_linux.go, SupplementalGroupsPolicy, "SupplementalGroupsPolicy=Strict":
    "even if the container's primary UID belongs to some groups in the image, runtime
    should not add SupplementalGroups to them"."""
    # Strict: only the primary group and the requested one, not the image's 50000.
    groups = [IMAGE_PREDEFINED_GROUP_UID, 1234]
    output = await supplemental_groups_policy(critest, pb.SupplementalGroupsPolicy.Strict, groups)
    assert output == "1000 1234\n"


# -- security_context_linux.go: SeccompProfilePath -----------------------------------------------

BLOCK_HOSTNAME_PROFILE = """{
     "defaultAction": "SCMP_ACT_ALLOW",
     "syscalls": [{"names": ["sethostname"], "action": "SCMP_ACT_ERRNO"}]
}"""
BLOCK_CHMOD_PROFILE = """{
     "defaultAction": "SCMP_ACT_ALLOW",
     "syscalls": [{"names": ["chmod", "fchmodat"], "action": "SCMP_ACT_ERRNO"}]
}"""
SECCOMP_STATUS = ["grep", "Seccomp:", "/proc/self/status"]


@dataclass
class Profiles:
    block_hostname: str
    block_chmod: str


@pytest.fixture
def profiles(critest) -> Profiles:
    """The BeforeEach of SeccompProfilePath: both profiles in a temp dir."""
    directory = tempfile.mkdtemp(prefix="seccomp-tests", dir=critest.env.base)
    paths = []
    for name, text in (
        ("block-host-name.json", BLOCK_HOSTNAME_PROFILE),
        ("block-chmod.json", BLOCK_CHMOD_PROFILE),
    ):
        path = os.path.join(directory, name)
        with open(path, "w") as f:
            f.write(text)
        paths.append(path)
    return Profiles(*paths)


async def seccomp_test_container(
    critest: Critest, profile: pb.SecurityProfile | None
) -> tuple[str, str]:
    """seccompTestContainer: a pod and a RUNNING container, both with ``profile``."""
    config = critest.pod_config("seccomp-sandbox-" + new_uuid())
    sc = pb.LinuxContainerSecurityContext()
    if profile is not None:
        config.linux.security_context.seccomp.CopyFrom(profile)
        sc.seccomp.CopyFrom(profile)
    sid = await critest.run_pod(config)
    container = critest.container_config(
        "seccomp-container-" + new_uuid() + new_uuid(),
        command=PAUSE_COMMAND,
        linux=pb.LinuxContainerConfig(security_context=sc),
    )
    cid = await critest.create(sid, container)
    await critest.start_running(cid)
    return sid, cid


async def seccomp_exec(critest: Critest, cid: str, cmd: list[str]) -> pb.ExecSyncResponse:
    """verifySeccomp: run ``cmd`` in the seccomp test container; the whole answer."""
    return await critest.exec_sync(cid, cmd)


async def test_should_support_seccomp_unconfined_on_the_container(critest, profiles):
    """security_context_linux.go: "should support seccomp unconfined on the container"."""
    profile = pb.SecurityProfile(profile_type=pb.SecurityProfile.Unconfined)
    sid, cid = await seccomp_test_container(critest, profile)
    answer = await seccomp_exec(critest, cid, SECCOMP_STATUS)
    assert (answer.exit_code, answer.stdout.decode().strip()) == (0, "Seccomp:\t0")  # no filter
    await critest.cleanup_pod(sid)


async def test_should_support_seccomp_localhost_profile_on_the_container(critest, profiles):
    """security_context_linux.go: "should support seccomp localhost profile on the
    container"."""
    profile = pb.SecurityProfile(
        profile_type=pb.SecurityProfile.Localhost, localhost_ref=profiles.block_chmod
    )
    sid, cid = await seccomp_test_container(critest, profile)
    answer = await seccomp_exec(critest, cid, ["chmod", "400", "/"])
    assert answer.exit_code != 0
    assert "Operation not permitted" in answer.stderr.decode()
    await critest.cleanup_pod(sid)


async def test_should_support_seccomp_default_on_the_container(critest, profiles):
    """security_context_linux.go: "should support seccomp default on the container"."""
    sid, cid = await seccomp_test_container(critest, pb.SecurityProfile())
    answer = await seccomp_exec(critest, cid, SECCOMP_STATUS)
    assert (answer.exit_code, answer.stdout.decode().strip()) == (0, "Seccomp:\t2")  # filter
    await critest.cleanup_pod(sid)


async def test_should_support_nil_profile_which_is_unconfined(critest, profiles):
    """security_context_linux.go: "should support nil profile, which is unconfined"."""
    sid, cid = await seccomp_test_container(critest, None)
    answer = await seccomp_exec(critest, cid, SECCOMP_STATUS)
    assert (answer.exit_code, answer.stdout.decode().strip()) == (0, "Seccomp:\t0")  # no filter
    await critest.cleanup_pod(sid)


async def seccomp_container(
    critest: Critest,
    sid: str,
    profile: pb.SecurityProfile,
    caps: list[str],
    privileged: bool,
) -> str:
    """createSeccompContainer (create must pass), started and RUNNING."""
    config = critest.container_config(
        "container-with-block-hostname-seccomp-profile-test-" + new_uuid(),
        command=["sleep", "60"],
        linux=security(
            privileged=privileged,
            capabilities=pb.Capability(add_capabilities=caps),
            seccomp=profile,
        ),
    )
    config.image.user_specified_image = config.image.image
    cid = await critest.create(sid, config)
    await critest.start_running(cid)
    return cid


async def set_hostname(critest: Critest, cid: str) -> int:
    """checkSetHostname: ``hostname ANewHostName``'s exit code."""
    return await critest.exit_code(cid, ["hostname", "ANewHostName"])


async def test_runtime_should_not_block_setting_host_name_with_unconfined_seccomp_and_sys_admin(
    critest, profiles, pod
):
    """security_context_linux.go: "runtime should not block setting host name with unconfined
    seccomp and SYS_ADMIN"."""
    profile = pb.SecurityProfile(profile_type=pb.SecurityProfile.Unconfined)
    cid = await seccomp_container(critest, pod[0], profile, ["SYS_ADMIN"], False)
    assert await set_hostname(critest, cid) == 0


async def test_runtime_should_support_a_seccomp_profile_that_blocks_setting_hostname_with_sys_admin(
    critest, profiles, pod
):
    """security_context_linux.go: "runtime should support an seccomp profile that blocks
    setting hostname with SYS_ADMIN"."""
    profile = pb.SecurityProfile(
        profile_type=pb.SecurityProfile.Localhost, localhost_ref=profiles.block_hostname
    )
    cid = await seccomp_container(critest, pod[0], profile, ["SYS_ADMIN"], False)
    assert await set_hostname(critest, cid) != 0


async def test_runtime_should_ignore_a_seccomp_profile_that_blocks_setting_hostname_when_privileged(
    critest, profiles, privileged_pod
):
    """security_context_linux.go: "runtime should ignore a seccomp profile that blocks setting
    hostname when privileged"."""
    profile = pb.SecurityProfile(
        profile_type=pb.SecurityProfile.Localhost, localhost_ref=profiles.block_hostname
    )
    cid = await seccomp_container(critest, privileged_pod[0], profile, [], True)
    assert await set_hostname(critest, cid) == 0


# -- security_context_linux.go: NoNewPrivs -------------------------------------------------------


async def effective_uid(critest: Critest, log_pod: tuple[str, Any], nnp: bool) -> list[str]:
    """createContainerWithNoNewPrivs (uid 1000, the setuid-root image): what it printed."""
    if "nonewprivs" not in critest.images.refs:
        pytest.skip("no static C compiler here to build the setuid nonewprivs image")
    sid, pod_config = log_pod
    name = ("alpine-nnp-true-" if nnp else "alpine-nnp-false-") + new_uuid()
    config = critest.container_config(
        name,
        image="nonewprivs",
        linux=security(no_new_privs=nnp, run_as_user=pb.Int64Value(value=1000)),
        log_path=name + ".log",
    )
    cid = await critest.create(sid, config)
    await critest.start(cid)
    await critest.wait_state(cid, pb.CONTAINER_EXITED)
    return logged(pod_config, name + ".log", "stdout")


async def test_should_not_allow_privilege_escalation_when_true(critest, log_pod):
    """security_context_linux.go: "should not allow privilege escalation when true"."""
    assert await effective_uid(critest, log_pod, True) == ["Effective uid: 1000\n"]


async def test_should_allow_privilege_escalation_when_false(critest, log_pod):
    """security_context_linux.go: "should allow privilege escalation when false"."""
    assert await effective_uid(critest, log_pod, False) == ["Effective uid: 0\n"]


# -- security_context_linux.go: UserNamespaces; apparmor_linux.go; selinux_linux.go ----------


#: The UserNamespaces Context's defaultMapping: container 0.. onto host 1000.., 100000 ids.
USERNS_DEFAULT_MAPPING = (pb.IDMapping(container_id=0, host_id=1000, length=100000),)


async def skip_unless_user_namespaces(critest: Critest) -> pb.StatusResponse:
    """The UserNamespaces Context's BeforeEach: a verbose Status (its info is needed
    later), and a skip unless the handler under test ("") advertises user namespaces."""
    status: pb.StatusResponse = await critest.rc.Status(pb.StatusRequest(verbose=True))
    if not any(h.name == "" and h.features.user_namespaces for h in status.runtime_handlers):
        pytest.skip("no runtime handler found which supports user namespaces")
    return status


def rootfs_path(info: Mapping[str, str]) -> str:
    """rootfsPath: the parent of the ``stateDir`` in ``info["config"]`` (containerd's
    layout); ``/var/lib`` when there is none, as for this agent."""
    default = "/var/lib"
    try:
        state_dir = json.loads(info["config"]).get("stateDir", "")
    except (KeyError, ValueError, AttributeError):
        return default
    if not isinstance(state_dir, str) or not state_dir:
        return default
    return os.path.dirname(state_dir)


def user_namespace_options(
    mode: pb.NamespaceMode.ValueType, mapping: tuple[pb.IDMapping, ...] = ()
) -> pb.NamespaceOption:
    return pb.NamespaceOption(
        userns_options=pb.UserNamespace(mode=mode, uids=mapping, gids=mapping)
    )


async def user_namespace_container(critest: Critest, options: pb.NamespaceOption) -> list[str]:
    """createNamespacePodSandbox with a log dir, then runUserNamespaceContainer: busybox
    ``cat /proc/self/uid_map`` with the pod's namespace options, run until it exits.
    Returns the lines it wrote on stdout (read before the pod goes)."""
    pod_name = "user-namespaces-pod-" + new_uuid()
    sid, pod_config = await critest.namespace_pod(options, pod_name, critest.log_dir(pod_name))
    try:
        name = "user-namespaces-container-" + new_uuid()
        config = critest.container_config(
            name,
            command=["cat", "/proc/self/uid_map"],
            log_path=name + ".log",
            linux=security(namespace_options=pod_config.linux.security_context.namespace_options),
        )
        config.image.user_specified_image = config.image.image
        cid = await critest.create(sid, config)
        await critest.start(cid)
        await critest.wait_state(cid, pb.CONTAINER_EXITED)
        return logged(pod_config, name + ".log", "stdout")
    finally:
        await critest.cleanup_pod(sid)


def uid_map_lines(text: str) -> list[list[str]]:
    """parseUsernsMappingLine over a uid_map: each line's fields."""
    return [line.split() for line in text.split("\n") if line != ""]


def matched(pattern: str, lines: list[str]) -> bool:
    """matchContainerOutputRe: some logged line matches ``pattern``."""
    return any(re.search(pattern, line) for line in lines)


async def run_user_namespace_pod(critest: Critest, options: pb.UserNamespace) -> None:
    """runUserNamespacePodWithError's RunPodSandbox (a pod it accepts is removed again)."""
    config = critest.pod_config("user-namespaces-pod-" + new_uuid())
    config.linux.security_context.namespace_options.userns_options.CopyFrom(options)
    sid = await critest.run_pod(config)
    await critest.cleanup_pod(sid)


async def test_runtime_should_support_namespace_mode_pod(critest):
    """security_context_linux.go, UserNamespaces, "Host idmap mount support is needed":
    "runtime should support NamespaceMode_POD"."""
    status = await skip_unless_user_namespaces(critest)
    path = rootfs_path(status.info)
    error = await asyncio.to_thread(supports_idmap, path)
    if error is not None:
        pytest.skip("ID mapping is not supported" + " with path: " + path + ": " + error)
    options = user_namespace_options(pb.POD, USERNS_DEFAULT_MAPPING)
    lines = await user_namespace_container(critest, options)
    # The container's own uid_map is the pod's mapping.
    assert matched(r"\s+0\s+1000\s+100000\n", lines), lines


async def test_runtime_should_support_namespace_mode_node(critest):
    """security_context_linux.go, UserNamespaces, "Host idmap mount support is not needed":
    "runtime should support NamespaceMode_NODE"."""
    await skip_unless_user_namespaces(critest)
    lines = await user_namespace_container(critest, user_namespace_options(pb.NODE))
    # The container shares the user namespace this test runs in: every line of its uid_map.
    with open("/proc/self/uid_map") as f:
        host = f.read()
    assert host, "failed to get host userns content"
    for mapping in uid_map_lines(host):
        assert len(mapping) == 3, f"Unexpected host mapping line: {mapping}"
        container_id, host_id, length = mapping
        assert matched(rf"\s+{container_id}\s+{host_id}\s+{length}", lines), (mapping, lines)


async def test_runtime_should_fail_if_more_than_one_mapping_provided(critest):
    """security_context_linux.go, UserNamespaces, "Host idmap mount support is not needed":
    "runtime should fail if more than one mapping provided"."""
    await skip_unless_user_namespaces(critest)
    wrong = [
        pb.IDMapping(container_id=0, host_id=1000, length=100000),
        pb.IDMapping(container_id=0, host_id=2000, length=100000),
    ]
    with pytest.raises(grpc.aio.AioRpcError):
        await run_user_namespace_pod(critest, pb.UserNamespace(mode=pb.POD, uids=wrong, gids=wrong))


async def test_runtime_should_fail_if_container_id_0_is_not_mapped(critest):
    """security_context_linux.go, UserNamespaces, "Host idmap mount support is not needed":
    "runtime should fail if container ID 0 is not mapped"."""
    await skip_unless_user_namespaces(critest)
    mapping = [pb.IDMapping(container_id=1, host_id=1000, length=100000)]
    options = pb.UserNamespace(mode=pb.POD, uids=mapping, gids=mapping)
    with pytest.raises(grpc.aio.AioRpcError):
        await run_user_namespace_pod(critest, options)


async def test_runtime_should_fail_with_namespace_mode_container(critest):
    """security_context_linux.go, UserNamespaces, "Host idmap mount support is not needed":
    "runtime should fail with NamespaceMode_CONTAINER"."""
    await skip_unless_user_namespaces(critest)
    with pytest.raises(grpc.aio.AioRpcError):
        await run_user_namespace_pod(critest, pb.UserNamespace(mode=pb.CONTAINER))


async def test_runtime_should_fail_with_namespace_mode_target(critest):
    """security_context_linux.go, UserNamespaces, "Host idmap mount support is not needed":
    "runtime should fail with NamespaceMode_TARGET"."""
    await skip_unless_user_namespaces(critest)
    with pytest.raises(grpc.aio.AioRpcError):
        await run_user_namespace_pod(critest, pb.UserNamespace(mode=pb.TARGET))


APPARMOR_ENABLED_FLAG = "/sys/module/apparmor/parameters/enabled"
#: apparmor_linux.go's two test profiles: one denies every write, one only audits them.
APPARMOR_TEST_PROFILES = """
#include <tunables/global>
profile cri-validate-apparmor-test-deny-write flags=(attach_disconnected) {
  #include <abstractions/base>
  file,
  deny /** w,
}
profile cri-validate-apparmor-test-audit-write flags=(attach_disconnected) {
  #include <abstractions/base>
  file,
  audit /** w,
}
"""


def apparmor_enabled() -> bool:
    try:
        with open(APPARMOR_ENABLED_FLAG) as f:
            return f.read().startswith("Y") and os.path.isdir("/sys/kernel/security/apparmor")
    except OSError:
        return False


@pytest.fixture
def apparmor_test_profiles(tmp_path) -> Iterator[None]:
    """loadTestProfiles: both profiles loaded with apparmor_parser (removed afterwards)."""
    if not apparmor_enabled():
        pytest.skip("AppArmor is disabled on this host (critest skips these specs too)")
    parser = shutil.which("apparmor_parser")
    if parser is None:
        pytest.skip("this host has AppArmor but no apparmor_parser (apt-get install apparmor)")
    path = tmp_path / "cri-validate.apparmor"
    path.write_text(APPARMOR_TEST_PROFILES)
    loaded = subprocess.run([parser, "-r", "-W", str(path)], capture_output=True, text=True)
    assert loaded.returncode == 0 and not loaded.stderr, loaded.stderr
    try:
        yield
    finally:
        subprocess.run([parser, "-R", str(path)], capture_output=True)


#: The three ways apparmor_linux.go asks: the deprecated string, the field, and both.
APPARMOR_FORMS = ["deprecated", "field", "both"]


def apparmor_context(form: str, profile: str) -> pb.LinuxContainerSecurityContext:
    sc = pb.LinuxContainerSecurityContext()
    if form in ("deprecated", "both"):
        sc.apparmor_profile = f"localhost/{profile}"
    if form in ("field", "both"):
        sc.apparmor.CopyFrom(
            pb.SecurityProfile(profile_type=pb.SecurityProfile.Localhost, localhost_ref=profile)
        )
    return sc


async def apparmor_touch(critest: Critest, form: str, profile: str) -> pb.ContainerStatus:
    """createContainerWithAppArmor: ``touch foo`` under ``profile``, run until it exits."""
    sid, _ = await critest.pod_for_container()
    config = critest.container_config(
        "apparmor-test-" + new_uuid(),
        command=["touch", "foo"],
        linux=pb.LinuxContainerConfig(security_context=apparmor_context(form, profile)),
    )
    cid = await critest.create(sid, config)
    await critest.start(cid)
    status = await critest.wait_state(cid, pb.CONTAINER_EXITED)
    await critest.cleanup_pod(sid)
    return status


@pytest.mark.parametrize("form", APPARMOR_FORMS)
async def test_apparmor_should_fail_with_an_unloaded_profile(apparmor_test_profiles, critest, form):
    """apparmor_linux.go: "should fail with an unloaded apparmor_profile"."""
    sid, _ = await critest.pod_for_container()
    config = critest.container_config(
        "apparmor-test-" + new_uuid(),
        command=["touch", "foo"],
        linux=pb.LinuxContainerConfig(
            security_context=apparmor_context(form, "non-existent-profile")
        ),
    )
    with pytest.raises(grpc.aio.AioRpcError):
        await critest.create(sid, config)
    await critest.cleanup_pod(sid)


@pytest.mark.parametrize("form", APPARMOR_FORMS)
async def test_apparmor_should_enforce_a_profile_blocking_writes(
    apparmor_test_profiles, critest, form
):
    """apparmor_linux.go: "should enforce a apparmor_profile blocking writes"."""
    status = await apparmor_touch(critest, form, "cri-validate-apparmor-test-deny-write")
    assert status.exit_code != 0


@pytest.mark.parametrize("form", APPARMOR_FORMS)
async def test_apparmor_should_enforce_a_permissive_profile(apparmor_test_profiles, critest, form):
    """apparmor_linux.go: "should enforce a permissive profile"."""
    status = await apparmor_touch(critest, form, "cri-validate-apparmor-test-audit-write")
    assert status.exit_code == 0


def test_selinux_specs():
    """selinux_linux.go: all seventeen specs (selinux level, options, mount and process
    labels, for privileged and unprivileged pods). critest registers none of them where
    SELinux is disabled."""
    assert not os.path.exists("/sys/fs/selinux/enforce"), "this host has SELinux now"
    pytest.skip("SELinux is not enabled on this host (critest registers no SELinux spec)")


# -- networking.go -----------------------------------------------------------------------------


async def main_page(critest: Critest, sid: str, host_port: int, container_port: int) -> int:
    """checkMainPage: the HTTP status of GET /, on 127.0.0.1:<host port> or <pod IP>:<port>."""
    if host_port:
        url = f"http://127.0.0.1:{host_port}/"
    else:
        ip = (await critest.pod_status(sid)).network.ip
        assert ip, "the pod has no IP"
        url = f"http://{ip}:{container_port}/"

    def get() -> int:
        with urllib.request.urlopen(url, timeout=10) as response:
            return int(response.status)

    async def answered() -> int | None:
        try:
            return await asyncio.to_thread(get)
        except OSError:
            return None

    status: int = await eventually(answered, interval=1)
    return status


async def port_mapping_pod(
    critest: Critest, mappings: list[pb.PortMapping]
) -> tuple[str, pb.PodSandboxConfig]:
    """createPodSandboxWithPortMapping (not on the host network)."""
    config = critest.pod_config(
        "create-PodSandbox-with-port-mapping" + new_uuid(), port_mappings=mappings
    )
    return await critest.run_pod(config), config


async def web_server_container(critest: Critest, sid: str, prefix: str) -> str:
    """createWebServerContainer: the nginx image, its own command."""
    config = critest.container_config(prefix + new_uuid(), image="nginx")
    config.linux.SetInParent()
    return await critest.create(sid, config)


async def test_runtime_should_support_dns_config(critest):
    """networking.go: "runtime should support DNS config [Conformance]"."""
    dns = pb.DNSConfig(servers=[DNS_SERVER], searches=[DNS_SEARCH], options=[DNS_OPTION])
    config = critest.pod_config("create-PodSandbox-with-DNS-config" + new_uuid(), dns_config=dns)
    sid = await critest.run_pod(config)
    cid = await critest.create_default(sid, "container-for-DNS-config-test-")
    await critest.start(cid)
    response = await critest.exec_sync(cid, ["cat", "/etc/resolv.conf"])
    assert response.exit_code == 0
    for line in (f"nameserver {DNS_SERVER}", f"search {DNS_SEARCH}", f"options {DNS_OPTION}"):
        assert line in response.stdout.decode()
    assert response.stderr == b""
    await critest.cleanup_pod(sid)


async def test_runtime_should_support_set_hostname(critest):
    """networking.go: "runtime should support set hostname [Conformance]"."""
    config = critest.pod_config(
        "create-PodSandbox-with-hostname" + new_uuid(), hostname="test-hostname"
    )
    sid = await critest.run_pod(config)
    cid = await critest.create_default(sid, "container-for-hostname-test-")
    await critest.start(cid)
    response = await critest.exec_sync(cid, ["hostname"])
    assert response.exit_code == 0
    assert response.stdout.decode().strip().lower() == "test-hostname"
    assert response.stderr == b""
    await critest.cleanup_pod(sid)


async def test_runtime_should_support_port_mapping_with_only_container_port(critest):
    """networking.go: "runtime should support port mapping with only container port
    [Conformance]"."""
    sid, _ = await port_mapping_pod(critest, [pb.PortMapping(container_port=WEB_SERVER_PORT)])
    cid = await web_server_container(critest, sid, "container-for-container-port")
    await critest.start(cid)
    assert await main_page(critest, sid, 0, WEB_SERVER_PORT) == 200
    await critest.cleanup_pod(sid)


async def test_runtime_should_support_port_mapping_with_host_port_and_container_port(critest):
    """networking.go: "runtime should support port mapping with host port and container port
    [Conformance]"."""
    mapping = pb.PortMapping(container_port=WEB_SERVER_PORT, host_port=HOST_PORT_FOR_PORT_MAPPING)
    sid, _ = await port_mapping_pod(critest, [mapping])
    cid = await web_server_container(critest, sid, "container-for-host-port")
    await critest.start(cid)
    assert await main_page(critest, "", HOST_PORT_FOR_PORT_MAPPING, 0) == 200
    await critest.cleanup_pod(sid)


# -- streaming.go, streaming_linux.go ------------------------------------------------------------


async def streaming_container(critest: Critest) -> tuple[str, str]:
    """framework.CreatePodSandboxForContainer + CreateDefaultContainer, started."""
    sid, _ = await critest.pod_for_container()
    cid = await critest.create_default(sid, "container-for-exec-test-")
    await critest.start(cid)
    return sid, cid


async def spdy_exec(url: str, tty: bool) -> tuple[bytes, bytes, int | None]:
    """checkExec: client-go's SPDY executor (POST); with a tty, a stdin pipe that sends
    nothing and closes. (stdout, stderr, exit code)."""
    result = await rc.exec_spdy(
        url, stdin=b"" if tty else None, stderr=not tty, tty=tty, method="POST"
    )
    return result.stdout, result.stderr, result.exit_code


async def test_runtime_should_support_exec_with_tty_false_and_stdin_false(critest):
    """streaming.go: "runtime should support exec with tty=false and stdin=false
    [Conformance]"."""
    sid, cid = await streaming_container(critest)
    request = pb.ExecRequest(container_id=cid, cmd=["echo", "hello"], stdout=True, stderr=True)
    url = (await critest.rc.Exec(request)).url
    assert urllib.parse.urlsplit(url).netloc, url  # parseURL: the host must not be empty
    assert await spdy_exec(url, tty=False) == (b"hello\n", b"", 0)
    await critest.cleanup_pod(sid)


async def test_runtime_should_support_exec_with_tty_true_and_stdin_true(critest):
    """streaming.go: "runtime should support exec with tty=true and stdin=true
    [Conformance]"."""
    sid, cid = await streaming_container(critest)
    request = pb.ExecRequest(
        container_id=cid, cmd=["echo", "hello"], stdout=True, tty=True, stdin=True
    )
    url = (await critest.rc.Exec(request)).url
    assert await spdy_exec(url, tty=True) == (b"hello\r\n", b"", 0)
    await critest.cleanup_pod(sid)


async def test_runtime_should_support_attach(critest):
    """streaming.go: "runtime should support attach [Conformance]": a shell container with
    stdin; "echo hello" in, exactly "hello\n" out (and nothing more for 3 s), then stdin
    closes and the stream ends without error."""
    sid, _ = await critest.pod_for_container()
    shell = critest.container_config(
        "container-for-attach-test-" + new_uuid(), command=["/bin/sh"], stdin=True
    )
    shell.linux.SetInParent()
    cid = await critest.create(sid, shell)
    await critest.start(cid)
    request = pb.AttachRequest(container_id=cid, stdin=True, stdout=True, stderr=True)
    url = (await critest.rc.Attach(request)).url

    async def typed() -> AsyncIterator[bytes]:
        yield b"echo hello\n"
        await asyncio.sleep(3)  # Consistently(3 s): nothing else arrives

    result = await rc.exec_spdy(url, stdin=typed(), method="POST", timeout=60)
    assert result.stdout == b"hello\n"
    assert result.stderr == b""
    assert result.exit_code == 0
    await critest.cleanup_pod(sid)


async def port_forward_status_line(url: str, port: int) -> bytes:
    """checkPortForward: client-go's SPDY port-forward dialer, then GET / through it;
    the answer's status line."""
    async with await rc_forward_spdy(url, port) as session:

        async def main_page() -> bytes | None:
            conn = await session.open()
            await conn.write(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
            answer = await conn.read_all(timeout=30)
            return answer if answer.startswith(b"HTTP/1.") else None

        answer: bytes = await eventually(main_page, interval=1)
        return answer.split(b"\r\n", 1)[0]


async def test_runtime_should_support_portforward(critest):
    """streaming.go: "runtime should support portforward [Conformance]"."""
    sid, _ = await port_mapping_pod(critest, [pb.PortMapping(container_port=WEB_SERVER_PORT)])
    cid = await web_server_container(critest, sid, "container-for-portforward-test-")
    await critest.start(cid)
    url = (await critest.rc.PortForward(pb.PortForwardRequest(pod_sandbox_id=sid))).url
    assert b" 200 " in await port_forward_status_line(url, WEB_SERVER_PORT)
    await critest.cleanup_pod(sid)


async def test_runtime_should_support_portforward_in_host_network(critest):
    """streaming_linux.go: "runtime should support portforward in host network" (the
    hostnet-nginx image serves on 12003; here busybox httpd in the nginx image does)."""
    if port_in_use(HOST_NET_WEB_SERVER_PORT):
        pytest.skip(f"host port {HOST_NET_WEB_SERVER_PORT} is in use on this machine")
    config = critest.pod_config(
        "create-PodSandbox-with-port-mapping" + new_uuid(),
        port_mappings=[pb.PortMapping(container_port=HOST_NET_WEB_SERVER_PORT)],
    )
    config.linux.security_context.namespace_options.network = pb.NODE
    sid = await critest.run_pod(config)
    server = critest.container_config(
        "container-for-host-net-portforward-test-" + new_uuid(),
        image="nginx",
        command=["httpd", "-f", "-p", str(HOST_NET_WEB_SERVER_PORT), "-h", "/usr/share/nginx/html"],
    )
    server.linux.SetInParent()
    cid = await critest.create(sid, server)
    await critest.start(cid)
    assert await main_page(critest, "", HOST_NET_WEB_SERVER_PORT, 0) == 200
    url = (await critest.rc.PortForward(pb.PortForwardRequest(pod_sandbox_id=sid))).url
    assert b" 200 " in await port_forward_status_line(url, HOST_NET_WEB_SERVER_PORT)
    await critest.cleanup_pod(sid)


def port_in_use(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


# -- idempotence.go ------------------------------------------------------------------------------


async def test_stop_pod_sandbox_should_not_return_an_error_if_not_found(critest):
    """idempotence.go: StopPodSandbox "should not return an error if not found"."""
    assert await critest.stop_pod(new_uuid()) == pb.StopPodSandboxResponse()


async def test_stop_pod_sandbox_should_not_return_an_error_if_already_stopped(critest):
    """idempotence.go: StopPodSandbox "should not return an error if already stopped"."""
    sid = await critest.run_default_pod("idempotence-pod-")
    for _ in range(2):
        await critest.stop_pod(sid)
        assert (await critest.pod_status(sid)).state == pb.SANDBOX_NOTREADY
    await critest.remove_pod(sid)


async def test_remove_pod_sandbox_should_not_return_an_error_if_not_found(critest):
    """idempotence.go: RemovePodSandbox "should not return an error if not found"."""
    assert await critest.remove_pod(new_uuid()) == pb.RemovePodSandboxResponse()


async def test_stop_container_should_not_return_an_error_if_not_found(critest):
    """idempotence.go: StopContainer "should not return an error if not found"."""
    request = pb.StopContainerRequest(container_id=new_uuid(), timeout=0)
    assert await critest.rc.StopContainer(request) == pb.StopContainerResponse()


async def test_stop_container_should_not_return_an_error_if_already_stopped(critest):
    """idempotence.go: StopContainer "should not return an error if already stopped" (it
    removes the container twice, too)."""
    sid, _ = await critest.pod_for_container()
    cid = await critest.create_pause(sid, "idempotence-container-")
    await critest.start(cid)
    assert (await critest.stop_exited(cid)).state == pb.CONTAINER_EXITED
    request = pb.StopContainerRequest(container_id=cid, timeout=0)
    assert await critest.rc.StopContainer(request) == pb.StopContainerResponse()  # again
    assert await critest.remove(cid) == pb.RemoveContainerResponse()
    assert await critest.remove(cid) == pb.RemoveContainerResponse()
    await critest.cleanup_pod(sid)


async def test_remove_container_should_not_return_an_error_if_not_found(critest):
    """idempotence.go: RemoveContainer "should not return an error if not found"."""
    assert await critest.remove(new_uuid()) == pb.RemoveContainerResponse()


async def test_remove_image_should_not_return_an_error_if_not_found(critest):
    """idempotence.go: RemoveImage "should not return an error if not found"."""
    fake = "0" * 64
    for _ in range(2):
        request = pb.RemoveImageRequest(image=pb.ImageSpec(image=fake))
        assert await critest.ic.RemoveImage(request) == pb.RemoveImageResponse()


# -- image.go ------------------------------------------------------------------------------------


async def pull_and_remove(critest: Critest, image: str, check: Callable[[pb.Image], None]) -> None:
    """testPullPublicImage: (remove), pull, status has id and size, ``check``, remove."""
    await critest.remove_image(image)
    await critest.pull(image)
    status = await critest.image_status(image)
    assert status is not None, "should have one image in list"
    assert status.id
    assert status.size
    check(status)
    await critest.remove_image(image)
    assert await critest.image_status(image) is None, "should have no image in list"


async def test_public_image_with_tag_should_be_pulled_and_removed(critest):
    """image.go: "public image with tag should be pulled and removed [Conformance]"."""
    ref = critest.images["test-image-tag:test"]

    def check(status: pb.Image) -> None:
        assert list(status.repo_tags) == [ref]

    await pull_and_remove(critest, ref, check)


async def test_public_image_should_timeout_if_requested(critest):
    """image.go: "public image should timeout if requested [Conformance]"."""
    request = pb.PullImageRequest(image=pb.ImageSpec(image=critest.images["test-image-tag:test"]))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await critest.ic.PullImage(request, timeout=0.001)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_public_image_without_tag_should_be_pulled_and_removed(critest):
    """image.go: "public image without tag should be pulled and removed [Conformance]"."""
    ref = critest.images["test-image-latest"]

    def check(status: pb.Image) -> None:
        assert list(status.repo_tags) == [ref + ":latest"]

    await pull_and_remove(critest, ref, check)


async def test_public_image_with_digest_should_be_pulled_and_removed(critest):
    """image.go: "public image with digest should be pulled and removed [Conformance]"."""
    ref = critest.images["test-image-digest"]

    def check(status: pb.Image) -> None:
        assert list(status.repo_tags) == []
        assert list(status.repo_digests) == [ref]

    await pull_and_remove(critest, ref, check)


async def test_image_status_should_support_all_kinds_of_references(critest):
    """image.go: "image status should support all kinds of references [Conformance]"."""
    ref = critest.images["test-image-tag:all"]
    await critest.remove_image(ref)
    await critest.pull(ref)
    status = await critest.image_status(ref)
    assert status is not None
    assert await critest.image_status(status.id) == status
    for name in [*status.repo_tags, *status.repo_digests]:
        assert await critest.image_status(name) == status, name
    await critest.remove_image(ref)
    assert await critest.image_status(ref) is None


async def test_image_status_get_image_fields_should_not_have_uid_username_empty(critest):
    """image.go: "image status get image fields should not have Uid|Username empty
    [Conformance]"."""
    cases = [
        ("UID only", "test-image-user-uid", 1002, ""),
        ("Username only", "test-image-user-username", 0, "www-data"),
        ("UID:group", "test-image-user-uid-group", 1003, ""),
        ("Username:group", "test-image-user-username-group", 0, "www-data"),
    ]
    for description, key, uid, username in cases:
        ref = critest.images[key]
        await critest.pull(ref)
        status = await critest.image_status(ref)
        assert status is not None
        assert status.uid.value == uid, description
        assert status.username == username, description
        await critest.remove_image(ref)


async def test_list_image_should_get_exactly_3_image_in_the_result_list(critest):
    """image.go: "listImage should get exactly 3 image in the result list [Conformance]"."""
    refs = [critest.images[f"test-image-{i}"] for i in (1, 2, 3)]
    for ref in refs:
        await critest.remove_image(ref)
    ids = [await critest.pull(ref) for ref in refs]
    assert len(ids) == 3
    images = (await critest.ic.ListImages(pb.ListImagesRequest(filter=pb.ImageFilter()))).images
    for ref, image_id in zip(refs, ids, strict=True):
        listed = [image for image in images if image.id == image_id]
        assert listed, image_id
        assert list(listed[0].repo_tags) == [ref]
    for ref in refs:
        await critest.remove_image(ref)


async def test_list_image_should_get_exactly_3_repo_tags_in_the_result_image(critest):
    """image.go: "listImage should get exactly 3 repoTags in the result image [Conformance]"."""
    refs = [critest.images[f"test-image-tags:{i}"] for i in (1, 2, 3)]
    for ref in refs:
        await critest.remove_image(ref)
    ids = sorted({await critest.pull(ref) for ref in refs})
    assert len(ids) == 1, "only one image id should be returned"
    images = (await critest.ic.ListImages(pb.ListImagesRequest(filter=pb.ImageFilter()))).images
    listed = [image for image in images if image.id == ids[0]]
    assert listed
    assert sorted(listed[0].repo_tags) == sorted(refs)
    for ref in refs:
        await critest.remove_image(ref)


# -- multi_container_linux.go ---------------------------------------------------------------------


@dataclass
class MultiContainerPod:
    sid: str
    httpd: str
    busybox: str


@pytest.fixture
async def multi_container_pod(critest) -> AsyncIterator[MultiContainerPod]:
    """The BeforeEach/AfterEach of "when running multiple containers in a pod"."""
    name = "PodSandbox-for-multi-container-test-" + new_uuid()
    config = critest.pod_config(
        name,
        log_directory=critest.log_dir(name),
        port_mappings=[pb.PortMapping(container_port=80)],
    )
    sid = await critest.run_pod(config)
    httpd_name = "httpd" + new_uuid()
    httpd_config = critest.container_config(httpd_name, image="httpd", log_path=httpd_name + ".log")
    httpd_config.linux.SetInParent()
    httpd = await critest.create(sid, httpd_config)
    await critest.start_running(httpd)
    busybox_name = "busybox" + new_uuid()
    busybox = await critest.create(
        sid,
        critest.container_config(
            busybox_name,
            command=["sh", "-c", f"echo {DEFAULT_LOG}; sleep 1000"],
            log_path=busybox_name + ".log",
        ),
    )
    await critest.start_running(busybox)
    yield MultiContainerPod(sid, httpd, busybox)
    await critest.cleanup_pod(sid)


async def test_multiple_containers_should_support_network(critest, multi_container_pod):
    """multi_container_linux.go: "should support network" (Multiple Containers
    [Conformance])."""
    assert await main_page(critest, multi_container_pod.sid, 0, 80) == 200


async def test_multiple_containers_should_support_container_log(critest, multi_container_pod):
    """multi_container_linux.go: "should support container log" (Multiple Containers
    [Conformance])."""
    for cid, expected in (
        (multi_container_pod.httpd, "httpd -D FOREGROUND"),
        (multi_container_pod.busybox, DEFAULT_LOG),
    ):
        path = (await critest.status(cid)).log_path

        async def written(path: str = path, expected: str = expected) -> bool:
            with open(path) as f:
                return expected in f.read()

        assert await eventually(written, interval=0.1)


async def test_multiple_containers_should_support_container_exec(critest, multi_container_pod):
    """multi_container_linux.go: "should support container exec" (Multiple Containers
    [Conformance])."""
    assert await critest.exec_ok(multi_container_pod.httpd, ["echo", "httpd"]) == "httpd\n"
    assert await critest.exec_ok(multi_container_pod.busybox, ["echo", "busybox"]) == "busybox\n"


# -- image_consistency.go ------------------------------------------------------------------------


async def listed_with_tag(critest: Critest, tag: str) -> bool:
    images = (await critest.ic.ListImages(pb.ListImagesRequest(filter=pb.ImageFilter()))).images
    return any(tag in image.repo_tags for image in images)


async def test_should_not_list_or_get_image_status_immediately_after_removal(critest):
    """image_consistency.go: "should not list or get image status immediately after removal
    [Conformance]"."""
    ref = critest.images["test-image-tag:test"]
    await critest.remove_image(ref)
    await critest.pull(ref)
    await critest.remove_image(ref)
    assert not await listed_with_tag(critest, ref)
    assert await critest.image_status(ref) is None


async def test_should_list_and_get_image_status_immediately_after_pulling(critest):
    """image_consistency.go: "should list and get image status immediately after pulling
    [Conformance]"."""
    ref = critest.images["test-image-tag:test"]
    await critest.remove_image(ref)
    await critest.pull(ref)
    assert await listed_with_tag(critest, ref)
    assert await critest.image_status(ref) is not None
    await critest.remove_image(ref)


async def test_should_not_fail_on_simultaneous_remove_image_calls(critest):
    """image_consistency.go: "should not fail on simultaneous RemoveImage calls
    [Conformance]"."""
    ref = critest.images["test-image-tag:test"]
    await critest.remove_image(ref)
    await critest.pull(ref)
    status = await critest.image_status(ref)
    assert status is not None
    image_id = status.id

    async def remove_then_look() -> bool:
        await critest.ic.RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image=image_id)))
        return await critest.image_status(image_id) is not None

    found = await asyncio.gather(*(remove_then_look() for _ in range(5)))
    assert found == [False] * 5, "the image must be gone as soon as RemoveImage returns"
    assert await critest.image_status(image_id) is None


# -- image_id_consistency.go ---------------------------------------------------------------------


async def image_id_container(
    critest: Critest, sid: str, prefix: str, image_ref: str, name: str
) -> str:
    """A container made from the pulled image's id (user_specified_image: its name), started."""
    config = pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name=prefix + new_uuid(), attempt=DEFAULT_ATTEMPT),
        image=pb.ImageSpec(image=image_ref, user_specified_image=name),
    )
    response = await critest.rc.CreateContainer(
        pb.CreateContainerRequest(pod_sandbox_id=sid, config=config)
    )
    await critest.start(response.container_id)
    return str(response.container_id)


async def test_should_return_the_same_image_identifier_across_all_apis(critest):
    """image_id_consistency.go: "should return the same image identifier across all APIs
    [Conformance]"."""
    name = critest.images["test-image-tag:test"]
    image_ref = await critest.pull(name)
    assert image_ref
    status = await critest.image_status(name)
    assert status is not None
    sid, _ = await critest.pod_for_container()
    cid = await image_id_container(critest, sid, "id-consistency-", image_ref, name)
    container_status = await critest.status(cid)
    listed = await critest.list_containers(id=cid)
    assert len(listed) == 1
    assert status.id == image_ref, "Image.id MUST match PullImageResponse.image_ref"
    assert container_status.image_id == image_ref
    assert listed[0].image_id == image_ref
    await critest.remove(cid)
    await critest.cleanup_pod(sid)
    await critest.remove_image(name)


async def test_should_return_the_same_image_identifier_when_pulled_from_different_registries(
    critest,
):
    """image_id_consistency.go: "should return the same image identifier when pulled from
    different registries [Conformance]" (the one registry under two host names)."""
    first, second = critest.images["same-image-registry-1"], critest.images["same-image-registry-2"]
    ref1 = await critest.pull(first)
    ref2 = await critest.pull(second)
    assert ref1
    assert ref1 == ref2, "the same image pulled from two registries has one id"
    for name in (first, second):
        status = await critest.image_status(name)
        assert status is not None
        assert status.id == ref1
    sid, _ = await critest.pod_for_container()
    cid = await image_id_container(critest, sid, "id-consistency-multi-registry-", ref2, second)
    assert (await critest.status(cid)).image_id == ref1
    await critest.remove(cid)
    await critest.cleanup_pod(sid)
    for name in (first, second):
        await critest.remove_image(name)


# -- image_volume.go ([Feature:ImageVolume]) -----------------------------------------------------


async def create_with_image_volume(
    critest: Critest, name_prefix: str, image_key: str, readonly: bool, sub_path: str = ""
) -> tuple[str, str | None, grpc.aio.AioRpcError | None]:
    """A container with the image mounted at /mnt/image-volume: (pod, container, error)."""
    name = critest.images[image_key]
    image_ref = await critest.pull(name)
    sid, _ = await critest.pod_for_container()
    spec = pb.ImageSpec(image=image_ref, user_specified_image=name)
    config = pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name=name_prefix + new_uuid(), attempt=DEFAULT_ATTEMPT),
        image=spec,
        command=PAUSE_COMMAND,
        mounts=[
            pb.Mount(
                container_path="/mnt/image-volume",
                readonly=readonly,
                image=spec,
                image_sub_path=sub_path,
            )
        ],
    )
    try:
        response = await critest.rc.CreateContainer(
            pb.CreateContainerRequest(pod_sandbox_id=sid, config=config)
        )
    except grpc.aio.AioRpcError as exc:
        return sid, None, exc
    return sid, str(response.container_id), None


def skip_if_image_volume_unsupported(
    error: grpc.aio.AioRpcError | None, expect_error: bool
) -> None:
    """critest's skipIfImageVolumeUnsupported, failing instead: the agent implements image
    volumes, so UNIMPLEMENTED is a regression to see, not a runtime to skip."""
    if error is None:
        return
    if error.code() == grpc.StatusCode.UNIMPLEMENTED:
        pytest.fail(f"image volumes regressed to UNIMPLEMENTED: {error.details()}")
    if not expect_error:
        raise error


IMAGE_VOLUME_PATH = "/mnt/image-volume"


async def image_volume_container(
    critest: Critest, prefix: str, image_key: str, readonly: bool = True, sub_path: str = ""
) -> tuple[str, str, str | None, grpc.aio.AioRpcError | None]:
    """(pod, the pulled image ref, container, error) of a container with an image volume."""
    sid, cid, error = await create_with_image_volume(critest, prefix, image_key, readonly, sub_path)
    image_ref = await critest.pull(critest.images[image_key])
    return sid, image_ref, cid, error


async def test_image_volume_should_return_image_digest_in_container_status_mounts(critest):
    """image_volume.go: "should return image digest in ContainerStatus mounts"."""
    sid, image_ref, cid, error = await image_volume_container(
        critest, "image-volume-digest-test-", "test-image-tag:test"
    )
    try:
        skip_if_image_volume_unsupported(error, False)
        assert cid is not None
        mounts = [
            m for m in (await critest.status(cid)).mounts if m.container_path == IMAGE_VOLUME_PATH
        ]
        assert mounts, "the image volume is missing from ContainerStatus mounts"
        assert mounts[0].image.image_ref == image_ref  # ImageSpec.image_ref (tag 20), KEP-5365
        assert await critest.remove(cid) == pb.RemoveContainerResponse()
    finally:
        await critest.cleanup_pod(sid)


async def test_image_volume_should_correctly_mount_image_and_enforce_read_only(critest):
    """image_volume.go: "should correctly mount image and enforce read-only"."""
    sid, _, cid, error = await image_volume_container(
        critest, "image-volume-mount-test-", "test-image-tag:test"
    )
    try:
        skip_if_image_volume_unsupported(error, False)
        assert cid is not None
        await critest.start(cid)
        await critest.exec_ok(cid, ["ls", "-A", IMAGE_VOLUME_PATH + "/bin/sh"])
        assert await critest.exit_code(cid, ["touch", IMAGE_VOLUME_PATH + "/test-write"]) != 0
        listed = await critest.exec_ok(cid, [IMAGE_VOLUME_PATH + "/bin/ls", IMAGE_VOLUME_PATH])
        assert "bin" in listed.split()  # not noexec: the image's own ls runs
        await critest.stop(cid)
        assert await critest.remove(cid) == pb.RemoveContainerResponse()
    finally:
        await critest.cleanup_pod(sid)


async def test_image_volume_should_reject_image_volume_with_readonly_set_to_false(critest):
    """image_volume.go: "should reject Image Volume with Readonly set to false"."""
    sid, _, cid, error = await image_volume_container(
        critest, "image-volume-readonly-test-", "test-image-tag:test", readonly=False
    )
    try:
        skip_if_image_volume_unsupported(error, True)
        assert cid is None and error is not None, "Readonly=false must be rejected"
    finally:
        await critest.cleanup_pod(sid)


async def test_image_volume_subpath_should_succeed_when_using_a_valid_subpath(critest):
    """image_volume.go: subPath "should succeed when using a valid subPath"."""
    sid, _, cid, error = await image_volume_container(
        critest, "image-volume-subpath-test-", "test-image-predefined-group", sub_path="etc"
    )
    try:
        skip_if_image_volume_unsupported(error, False)
        assert cid is not None
        await critest.start(cid)
        await critest.exec_ok(cid, ["ls", IMAGE_VOLUME_PATH])
        # The full image root would put passwd at <path>/etc/passwd: subPath was applied.
        assert await critest.exit_code(cid, ["ls", IMAGE_VOLUME_PATH + "/etc/passwd"]) != 0
        await critest.exec_ok(cid, ["ls", IMAGE_VOLUME_PATH + "/passwd"])
        await critest.stop(cid)
        assert await critest.remove(cid) == pb.RemoveContainerResponse()
    finally:
        await critest.cleanup_pod(sid)


async def test_image_volume_subpath_should_fail_when_subpath_does_not_exist_in_the_image(critest):
    """image_volume.go: subPath "should fail when subPath does not exist in the image"."""
    sid, _, cid, error = await image_volume_container(
        critest, "image-volume-subpath-fail-test-", "test-image-tag:test", sub_path="not-existing"
    )
    try:
        skip_if_image_volume_unsupported(error, True)
        assert cid is None and error is not None, "a missing subPath must fail CreateContainer"
    finally:
        await critest.cleanup_pod(sid)
