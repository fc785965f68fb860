"""The node's CDI spec against the real driver, and a real container given one GPU by CDI.

* The spec: every GPU by index and UUID plus ``all``, built from the real
  inventory and the real driver files (under the driver root), and its edits
  resolve against the host: ``/dev/nvidia<minor>`` with NVIDIA's major, the
  control nodes, ``libcuda.so``/``libnvidia-ml.so`` and ``nvidia-smi``.
* The container (only where runc can create one here): a root filesystem with
  nothing but the C library ``nvidia-smi`` needs (and busybox when there is
  one); ``GpuService`` applies the edits for ``nvidia.com/gpu=<uuid>`` and runc
  runs ``nvidia-smi -L`` from the mounted host binary, which must list exactly
  that GPU; with busybox, a CUDA-free check lists ``/dev/nvidia*`` and
  ``libcuda.so*`` inside. The CRI path (``CDI_devices`` through ``pods/`` into
  the same ``GpuService``) is covered on the simulated node by
  ``tests/integration/test_gpu_containers.py``; a full agent (registry, CNI,
  conmon) is more than the bare GPU machine can take along.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from agent.config import GpuSection
from agent.gpu.backend import GpuBackend
from agent.gpu.inventory import Inventory
from agent.gpu.service import GpuService
from tests.support.nvidia_host import driver_root

pytestmark = pytest.mark.gpu

NVIDIA_MAJOR = 195


def find_runc() -> str:
    for candidate in (
        os.environ.get("MODEL_AGENT_GPU_RUNC", ""),
        "/usr/sbin/runc",
        shutil.which("runc") or "",
    ):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return ""


def find_busybox() -> str:
    for candidate in (
        os.environ.get("MODEL_AGENT_GPU_BUSYBOX", ""),
        "/bin/busybox",
        shutil.which("busybox") or "",
    ):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return ""


@pytest.fixture
def service(tmp_path, nvml: GpuBackend) -> GpuService:
    root = driver_root()
    cdi = tmp_path / "cdi"
    # runc gives a hook only the environment the spec names; where the agent is not
    # installed but on PYTHONPATH (run.sh), a wrapper carries the path along.
    hook = tmp_path / "cdi-hook"
    hook.write_text(
        "#!/bin/sh\n"
        f"PYTHONPATH={shlex.quote(os.environ.get('PYTHONPATH', ''))} "
        f'exec {shlex.quote(sys.executable)} -m agent.gpu.cdi.hook "$@"\n'
    )
    hook.chmod(0o755)
    section = GpuSection(
        backend="nvml",
        driver_root=root,
        container_driver_root=root,
        cdi_spec_dirs=[str(tmp_path / "etc-cdi"), str(cdi)],
        node_spec_dir=str(cdi),
        ldconfig_path=shutil.which("ldconfig") or "/sbin/ldconfig",
        hook_command=[str(hook)],
    )
    gpu = GpuService(section, backend=nvml)
    gpu.start()  # the backend is the session's: closed by its own fixture
    return gpu


def test_the_node_spec_from_the_real_driver(service: GpuService, nvml: GpuBackend):
    info = service.status_info()
    inventory = Inventory.read(nvml)
    assert info["nodeSpec"]["problems"] == [], info["nodeSpec"]
    with open(info["nodeSpec"]["path"]) as f:
        names = {d["name"] for d in json.load(f)["devices"]}
    for gpu in inventory.usable():
        assert {str(gpu.index), gpu.uuid} <= names
    assert "all" in names
    gpu0 = inventory.usable()[0]
    edits, assignment = service.resolve(cdi_devices=[f"nvidia.com/gpu={gpu0.uuid}"])
    assert [g.uuid for g in assignment.grants] == [gpu0.uuid]
    nodes = {n.path: n for n in edits.device_nodes}
    own = nodes[f"/dev/nvidia{gpu0.minor}"]
    assert (own.type, own.major, own.minor) == ("c", NVIDIA_MAJOR, gpu0.minor)
    assert nodes["/dev/nvidiactl"].minor == 255
    assert "/dev/nvidia-uvm" in nodes, "nvidia-uvm is needed for CUDA"
    names_mounted = {os.path.basename(m.container_path): m for m in edits.mounts}
    assert any(n.startswith("libcuda.so.") for n in names_mounted)
    assert any(n.startswith("libnvidia-ml.so.") for n in names_mounted)
    assert "nvidia-smi" in names_mounted
    for mount in edits.mounts:
        assert os.path.exists(mount.host_path), mount


# -- a real container ------------------------------------------------------------


def _ldd_deps(binary: str, skip_under: str) -> list[str]:
    env = dict(os.environ)
    libs = [os.path.join(skip_under, d) for d in ("lib64", "lib")]
    env["LD_LIBRARY_PATH"] = ":".join([*libs, env.get("LD_LIBRARY_PATH", "")]).strip(":")
    done = subprocess.run(["ldd", binary], capture_output=True, text=True, timeout=30, env=env)
    deps = []
    for line in done.stdout.splitlines():
        match = re.search(r"(/\S+)\s+\(0x", line)
        if match and not match.group(1).startswith(skip_under.rstrip("/") + "/"):
            deps.append(match.group(1))
    return deps


def _rootfs(base: str, smi: str, busybox: str, skip_under: str) -> str:
    """A root filesystem holding only nvidia-smi's C library (and busybox): no NVIDIA files."""
    rootfs = os.path.join(base, "rootfs")
    for d in ("proc", "dev", "tmp", "etc/ld.so.conf.d", "bin"):
        os.makedirs(os.path.join(rootfs, d), exist_ok=True)
    for dep in _ldd_deps(smi, skip_under):
        target = os.path.join(rootfs, dep.lstrip("/"))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copy2(os.path.realpath(dep), target)
    with open(os.path.join(rootfs, "etc/ld.so.conf"), "w") as f:
        f.write("include /etc/ld.so.conf.d/*.conf\n")
    with open(os.path.join(rootfs, "etc/passwd"), "w") as f:
        f.write("root:x:0:0:root:/:/bin/sh\n")
    if busybox:
        shutil.copy2(busybox, os.path.join(rootfs, "bin/busybox"))
    return rootfs


def _config(args: list[str], cgroup: str) -> dict[str, Any]:
    caps = ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_SETGID", "CAP_SETUID", "CAP_KILL"]
    return {
        "ociVersion": "1.0.2-dev",
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": ["PATH=/bin:/usr/bin", "NVIDIA_VISIBLE_DEVICES=all"],
            "cwd": "/",
            "capabilities": dict.fromkeys(("bounding", "effective", "permitted"), caps),
        },
        "root": {"path": "rootfs", "readonly": False},
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {
                "destination": "/dev",
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
            },
        ],
        "linux": {
            "namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount")],
            "cgroupsPath": cgroup,
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
        },
    }


class _Runc:
    def __init__(self, runc: str, state: str) -> None:
        self.runc, self.state = runc, state
        self.ids: list[str] = []

    def run(self, bundle: str) -> subprocess.CompletedProcess[str]:
        cid = f"ma-test-gpu-{uuid.uuid4().hex[:10]}"
        self.ids.append(cid)
        with open(os.path.join(bundle, "config.json")) as f:
            config = json.load(f)
        config["linux"]["cgroupsPath"] = f"/{cid}"
        with open(os.path.join(bundle, "config.json"), "w") as f:
            json.dump(config, f)
        try:
            return subprocess.run(
                [self.runc, "--root", self.state, "run", "--bundle", bundle, cid],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=120,
            )
        finally:
            self.delete(cid)

    def delete(self, cid: str) -> None:
        subprocess.run(
            [self.runc, "--root", self.state, "delete", "--force", cid],
            capture_output=True,
            timeout=30,
        )
        for base in ("/sys/fs/cgroup", *(f"/sys/fs/cgroup/{c}" for c in _controllers())):
            with contextlib.suppress(OSError):
                os.rmdir(os.path.join(base, cid))


def _controllers() -> list[str]:
    with contextlib.suppress(OSError):
        return [e for e in os.listdir("/sys/fs/cgroup") if os.path.isdir(f"/sys/fs/cgroup/{e}")]
    return []


@pytest.fixture
def runc(tmp_path) -> Iterator[_Runc]:
    path = find_runc()
    if not path:
        pytest.skip("no runc here (set MODEL_AGENT_GPU_RUNC or bring the runc .deb)")
    if os.geteuid() != 0:
        pytest.skip("runc needs root")
    runner = _Runc(path, str(tmp_path / "runc-state"))
    yield runner
    for cid in runner.ids:
        runner.delete(cid)


def _probe(runc: _Runc, tmp_path, busybox: str) -> None:
    """Skip, with runc's words, where this machine cannot create a container at all."""
    bundle = tmp_path / "probe"
    rootfs = bundle / "rootfs"
    for d in ("proc", "dev", "bin"):
        (rootfs / d).mkdir(parents=True)
    args = ["/bin/busybox", "true"] if busybox else ["/nonexistent"]
    if busybox:
        shutil.copy2(busybox, rootfs / "bin/busybox")
    (bundle / "config.json").write_text(json.dumps(_config(args, "")))
    done = runc.run(str(bundle))
    if busybox and done.returncode != 0:
        pytest.skip(f"runc cannot create a container here: {done.stderr.strip()[-300:]}")
    if not busybox and "nonexistent" not in done.stderr:
        pytest.skip(f"runc cannot create a container here: {done.stderr.strip()[-300:]}")


def test_a_container_given_one_gpu_by_cdi_sees_exactly_it(service, runc, tmp_path, nvml):
    busybox = find_busybox()
    _probe(runc, tmp_path, busybox)
    gpu = Inventory.read(nvml).usable()[0]
    edits, _ = service.resolve(cdi_devices=[f"nvidia.com/gpu={gpu.uuid}"])
    smi = next(m for m in edits.mounts if os.path.basename(m.container_path) == "nvidia-smi")
    libcuda = next(
        m for m in edits.mounts if os.path.basename(m.container_path).startswith("libcuda.so")
    )
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    rootfs = _rootfs(
        str(bundle),
        smi.host_path,
        busybox,
        driver_root() if driver_root() != "/" else "/nonexistent",
    )
    if busybox:
        script = (
            f"busybox ls /dev | busybox grep '^nvidia' | busybox sed 's/^/dev: /'; "
            f"busybox ls {os.path.dirname(libcuda.container_path)} | busybox grep '^libcuda.so' "
            f"| busybox sed 's/^/lib: /'; {smi.container_path} -L"
        )
        args = ["/bin/busybox", "sh", "-c", script]
    else:
        args = [smi.container_path, "-L"]
    config = _config(args, "")
    service.apply(config, edits)
    (bundle / "config.json").write_text(json.dumps(config))
    done = runc.run(str(bundle))
    assert done.returncode == 0, done.stderr + done.stdout
    lines = done.stdout.splitlines()
    listed = [line for line in lines if line.startswith("GPU ")]
    assert len(listed) == 1 and gpu.uuid in listed[0], done.stdout
    if busybox:
        devs = {line[5:] for line in lines if line.startswith("dev: ")}
        assert f"nvidia{gpu.minor}" in devs and "nvidiactl" in devs and "nvidia-uvm" in devs
        others = {f"nvidia{g.minor}" for g in Inventory.read(nvml).usable() if g.uuid != gpu.uuid}
        assert not devs & others, devs
        libs = {line[5:] for line in lines if line.startswith("lib: ")}
        assert "libcuda.so.1" in libs  # made by the ldconfig hook inside the container
        cache = os.path.join(rootfs, "etc/ld.so.cache")
        assert os.path.exists(cache) and stat.S_ISREG(os.stat(cache).st_mode)
