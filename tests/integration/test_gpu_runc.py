"""The node CDI spec's edits in a real runc container: device nodes, cgroup rules, mounts, hook.

A simulated two-GPU node with real character devices (NVIDIA's major 195) and a
fake driver (ELF libraries, binaries). ``GpuService`` resolves ``nvidia.com/gpu=1``
and applies the edits to a hand-made OCI bundle around a static busybox; runc
runs it. Inside, the container sees ``/dev/nvidia1`` and the control nodes only;
opening ``/dev/nvidia1`` reaches the (absent) driver — ENXIO — while a node made
for GPU 0 is refused by the device cgroup — EPERM; the driver files are mounted
read-only; and the ``createContainer`` hook really ran ldconfig in the
container's root. The wiring into ``pods/`` (CDI_devices through the CRI) is the
lead's; this checks everything below it with the real runtime.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from agent.config import load
from agent.gpu.cdi.ldcache import read_ld_so_cache
from agent.gpu.service import GpuService
from tests.support.fake_driver import DRIVER_VERSION
from tests.support.gpu_node import GPU1, MIG0, GpuNode, make_gpu_node

pytestmark = pytest.mark.integration

RUNC = "/usr/sbin/runc"
BUSYBOX = "/bin/busybox"
CGROUP_ROOT = "/sys/fs/cgroup"
LIB = "/usr/lib/x86_64-linux-gnu"
V = DRIVER_VERSION
CAPS = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_KILL",
]

if os.geteuid() != 0 or not os.access(RUNC, os.X_OK) or not os.path.isfile(BUSYBOX):
    pytest.skip("needs root, runc and a static busybox", allow_module_level=True)


def cgroup_dirs(name: str) -> list[str]:
    candidates = [os.path.join(CGROUP_ROOT, name)]
    candidates += (os.path.join(CGROUP_ROOT, entry, name) for entry in os.listdir(CGROUP_ROOT))
    return [path for path in candidates if os.path.isdir(path)]


def base_config(script: str, cgroup: str) -> dict[str, Any]:
    return {
        "ociVersion": "1.0.2-dev",
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": ["/bin/busybox", "sh", "-c", script],
            "env": ["PATH=/bin", "NVIDIA_VISIBLE_DEVICES=all"],
            "cwd": "/",
            "capabilities": dict.fromkeys(("bounding", "effective", "permitted"), CAPS),
        },
        "root": {"path": "rootfs", "readonly": True},  # the hook must run before the remount
        "hostname": "gpu-test",
        "mounts": [
            {
                "destination": "/proc",
                "type": "proc",
                "source": "proc",
                "options": ["nosuid", "noexec", "nodev"],
            },
            {
                "destination": "/dev",
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
            },
        ],
        "linux": {
            "namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount", "network")],
            "cgroupsPath": cgroup,
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
        },
    }


@pytest.fixture
def gpu(short_dir: str) -> Iterator[tuple[GpuNode, GpuService]]:
    node = make_gpu_node(os.path.join(short_dir, "node"), mig=True)
    path = os.path.join(short_dir, "config.toml")
    open(path, "w").close()
    service = GpuService(load(path, environ={}, overrides=node.config_keys()).gpu)
    service.start()
    yield node, service
    service.close()


@pytest.fixture
def run_container(short_dir: str) -> Iterator[Any]:
    state = os.path.join(short_dir, "runc")
    started: list[str] = []

    def run(
        config: dict[str, Any], rootfs_setup: Any = None
    ) -> tuple[subprocess.CompletedProcess[str], str]:
        cid = f"ma-test-gpu-{uuid.uuid4().hex[:12]}"
        started.append(cid)
        bundle = os.path.join(short_dir, cid)
        rootfs = os.path.join(bundle, "rootfs")
        for d in ("bin", "proc", "dev", "etc/ld.so.conf.d"):
            os.makedirs(os.path.join(rootfs, d))
        shutil.copy2(BUSYBOX, os.path.join(rootfs, "bin", "busybox"))
        with open(os.path.join(rootfs, "etc/ld.so.conf"), "w") as f:
            f.write("include /etc/ld.so.conf.d/*.conf\n")
        config["linux"]["cgroupsPath"] = f"/{cid}"
        with open(os.path.join(bundle, "config.json"), "w") as f:
            json.dump(config, f)
        done = subprocess.run(
            [RUNC, "--root", state, "run", "--bundle", bundle, cid],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
        )
        subprocess.run(
            [RUNC, "--root", state, "delete", "--force", cid], capture_output=True, timeout=30
        )
        assert cgroup_dirs(cid) == [], "runc left the container's cgroup behind"
        return done, rootfs

    yield run
    for cid in started:
        subprocess.run(
            [RUNC, "--root", state, "delete", "--force", cid], capture_output=True, timeout=30
        )
        for path in cgroup_dirs(cid):
            with contextlib.suppress(OSError):
                os.rmdir(path)


SCRIPT = """
cd /dev; echo "devs: $(busybox ls nvidia* nvidia-caps 2>/dev/null | busybox tr '\\n' ' ')"
echo "nvidia1: $(busybox stat -c '%t:%T' /dev/nvidia1)"
busybox cat /dev/nvidia1 2>&1 | busybox head -1 | busybox sed 's/^/open1: /'
busybox mknod /dev/other c 195 0 && busybox cat /dev/other 2>&1 | busybox sed 's/^/open0: /'
echo "libs: $(busybox ls /usr/lib/x86_64-linux-gnu | busybox tr '\\n' ' ')"
echo "smi: $(busybox head -c 2 /usr/bin/nvidia-smi)"
busybox touch /usr/lib/x86_64-linux-gnu/libcuda.so.{v} 2>&1 | busybox sed 's/^/write: /'
echo "visible: $NVIDIA_VISIBLE_DEVICES"
"""


def test_gpu_1_in_a_runc_container(gpu, run_container):
    _, service = gpu
    edits, assignment = service.resolve(cdi_devices=["nvidia.com/gpu=1"])
    assert [g.uuid for g in assignment.grants] == [GPU1]
    config = base_config(SCRIPT.replace("{v}", V), "")
    service.apply(config, edits)
    done, rootfs = run_container(config)
    assert done.returncode == 0, done.stderr
    out = dict(line.split(": ", 1) for line in done.stdout.strip().splitlines() if ": " in line)
    devs = set(out["devs"].split())
    assert devs == {"nvidia1", "nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-modeset"}
    assert out["nvidia1"] == "c3:1"  # 195:1 in hex, made by runc from the host node
    assert "No such device or address" in out["open1"]  # allowed: reaches the (absent) driver
    assert "Operation not permitted" in out["open0"]  # GPU 0: refused by the device cgroup
    libs = set(out["libs"].split())
    assert {f"libcuda.so.{V}", f"libnvidia-ml.so.{V}", "libcuda.so.1", "libcuda.so"} <= libs
    assert out["smi"] == "#!"  # the fake driver's nvidia-smi, mounted
    assert "Read-only file system" in out["write"]
    assert out["visible"] == GPU1
    # The hook ran ldconfig in the container's root: its cache names container paths.
    cache = {e.name: e.path for e in read_ld_so_cache(os.path.join(rootfs, "etc/ld.so.cache"))}
    assert cache["libcuda.so.1"] == f"{LIB}/libcuda.so.1"
    assert cache["libnvidia-ml.so.1"] == f"{LIB}/libnvidia-ml.so.1"


def test_a_mig_device_in_a_runc_container(gpu, run_container):
    _, service = gpu
    edits, assignment = service.resolve(cdi_devices=[f"nvidia.com/gpu={MIG0}"])
    assert assignment.mig_uuids == (MIG0,)
    config = base_config("busybox find /dev -type c -name 'nvidia*'", "")
    service.apply(config, edits)
    done, _ = run_container(config)
    assert done.returncode == 0, done.stderr
    assert {p.removeprefix("/dev/") for p in done.stdout.split()} == {
        "nvidia1",
        "nvidiactl",
        "nvidia-uvm",
        "nvidia-uvm-tools",
        "nvidia-modeset",
        "nvidia-caps/nvidia-cap12",
        "nvidia-caps/nvidia-cap13",
    }


def test_the_secure_default_in_a_runc_container(gpu, run_container):
    _, service = gpu
    edits, assignment = service.resolve(
        image_env={"NVIDIA_VISIBLE_DEVICES": "all"}, cri_env={"NVIDIA_VISIBLE_DEVICES": "0"}
    )
    assert assignment.grants == ()
    config = base_config(
        'busybox ls /dev | busybox grep -c nvidia; echo "v=$NVIDIA_VISIBLE_DEVICES"', ""
    )
    service.apply(config, edits)
    done, _ = run_container(config)
    assert done.stdout.split() == ["0", "v=void"], done.stderr
