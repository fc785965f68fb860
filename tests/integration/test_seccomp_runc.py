"""runc accepts the seccomp objects we generate, and the kernel enforces them.

Each test runs a busybox container from a hand-made OCI bundle with ``runc run`` in the
foreground (no terminal, stdout/stderr captured). ``unshare(CLONE_NEWUSER)`` is the
witness: the kernel lets any process create a user namespace, so when it fails with EPERM
in the container, the seccomp profile is what refused it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from agent.pods.seccomp import default_profile, from_docker_json
from tests.support import run as run_ids

pytestmark = pytest.mark.integration

RUNC = "/usr/sbin/runc"
BUSYBOX = "/bin/busybox"  # Debian's busybox-static: runs in an otherwise empty rootfs
CGROUP_ROOT = "/sys/fs/cgroup"
#: containerd's default capabilities: notably no CAP_SYS_ADMIN.
CAPS = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
]
#: Runs (fork + exec), then tries a user namespace, then reports its exit status.
UNSHARE_SCRIPT = "echo ok; busybox unshare -U /bin/busybox true; echo unshare=$?"

RunContainer = Callable[..., subprocess.CompletedProcess[str]]

if os.geteuid() != 0 or not os.access(RUNC, os.X_OK) or not os.path.isfile(BUSYBOX):
    pytest.skip("needs root, runc and a static busybox", allow_module_level=True)


def cgroup_dirs(name: str) -> list[str]:
    """Where runc would have made the cgroup ``/<name>`` (any v1 controller, or v2)."""
    candidates = [os.path.join(CGROUP_ROOT, name)]
    candidates += (os.path.join(CGROUP_ROOT, entry, name) for entry in os.listdir(CGROUP_ROOT))
    return [path for path in candidates if os.path.isdir(path)]


def bundle_config(
    script: str, seccomp: dict[str, Any] | None, cgroup: str, no_new_privs: bool
) -> dict[str, Any]:
    linux: dict[str, Any] = {
        "namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount", "network")],
        "cgroupsPath": cgroup,
        "resources": {"devices": [{"allow": False, "access": "rwm"}]},
        "maskedPaths": ["/proc/kcore", "/proc/keys", "/sys/firmware"],
        "readonlyPaths": ["/proc/sys", "/proc/sysrq-trigger"],
    }
    if seccomp is not None:
        linux["seccomp"] = seccomp
    return {
        "ociVersion": "1.0.2-dev",
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": ["/bin/busybox", "sh", "-c", script],
            "env": ["PATH=/bin"],
            "cwd": "/",
            "capabilities": {"bounding": CAPS, "effective": CAPS, "permitted": CAPS},
            "noNewPrivileges": no_new_privs,
        },
        "root": {"path": "rootfs", "readonly": True},
        "hostname": "seccomp-test",
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
        "linux": linux,
    }


@pytest.fixture
def run_container(short_dir: str) -> Iterator[RunContainer]:
    """``run(script, seccomp)``: one container to completion; cleans up after itself.

    With ``no_new_privs`` (kubelet: allowPrivilegeEscalation false) runc loads the filter
    just before exec instead of before dropping capabilities.
    """
    state = os.path.join(short_dir, "runc")
    started: list[str] = []

    def run(
        script: str, seccomp: dict[str, Any] | None, no_new_privs: bool = False
    ) -> subprocess.CompletedProcess[str]:
        cid = f"ma-test-seccomp-{run_ids.tag()}"
        started.append(cid)
        bundle = os.path.join(short_dir, cid)
        os.makedirs(os.path.join(bundle, "rootfs", "bin"))
        for mountpoint in ("proc", "dev"):
            os.makedirs(os.path.join(bundle, "rootfs", mountpoint))
        shutil.copy2(BUSYBOX, os.path.join(bundle, "rootfs", "bin", "busybox"))
        with open(os.path.join(bundle, "config.json"), "w") as f:
            json.dump(bundle_config(script, seccomp, f"/{cid}", no_new_privs), f)
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
        # A cgroup cannot be removed while a process is in it, so none left means none ran on.
        assert cgroup_dirs(cid) == [], "runc left the container's cgroup behind"
        return done

    yield run
    for cid in started:
        subprocess.run(
            [RUNC, "--root", state, "delete", "--force", cid], capture_output=True, timeout=30
        )
        for path in cgroup_dirs(cid):
            with contextlib.suppress(OSError):
                os.rmdir(path)


def test_without_seccomp_the_kernel_allows_a_user_namespace(run_container):
    """The control: this syscall is not refused by capabilities or the host."""
    done = run_container(UNSHARE_SCRIPT, None)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["ok", "unshare=0"]


@pytest.mark.parametrize("no_new_privs", [False, True])
def test_runtime_default_runs_programs_and_refuses_unshare_with_eperm(run_container, no_new_privs):
    done = run_container(UNSHARE_SCRIPT, default_profile(CAPS), no_new_privs)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["ok", "unshare=1"]
    assert "Operation not permitted" in done.stderr


def test_runtime_default_with_sys_admin_allows_unshare(run_container):
    """The capability-conditional rule reaches runc (the process itself lacks the cap)."""
    done = run_container(UNSHARE_SCRIPT, default_profile([*CAPS, "CAP_SYS_ADMIN"]))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["ok", "unshare=0"]


def test_a_converted_localhost_profile_is_enforced(run_container):
    """archMap, errnoRet and a rule dropped by ``includes.caps`` all reach runc right."""
    profile = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "archMap": [
            {
                "architecture": "SCMP_ARCH_X86_64",
                "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"],
            },
            {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]},
        ],
        "syscalls": [
            {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
            {
                "names": ["uname"],
                "action": "SCMP_ACT_ERRNO",
                "includes": {"caps": ["CAP_SYS_ADMIN"]},
            },
        ],
    }
    seccomp = from_docker_json(json.dumps(profile).encode(), CAPS)
    script = "busybox mkdir /dev/x; echo mkdir=$?; busybox uname -s"
    done = run_container(script, seccomp)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["mkdir=1", "Linux"]
    assert "Permission denied" in done.stderr  # EACCES (13), not the default EPERM
