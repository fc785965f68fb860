"""What the node install asks of and does to the host: systemd, kernel, GPUs, the database.

Each function takes the host paths it reads (``/proc``, ``/proc/sys``, ...) as arguments,
so tests point them at trees they made. Subprocesses go through :func:`run` (explicit
argv and timeout, stderr in the error): this package runs before the agent's own
dependencies exist, so it cannot use ``agent._util.proc``. Imports only the standard
library.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import sqlite3
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "Gpu",
    "InstallError",
    "agent_pid",
    "apply_kernel_settings",
    "database_schema",
    "detect_gpus",
    "gpu_labels",
    "missing_prerequisites",
    "pod_count",
    "run",
    "systemd_is_init",
]


class InstallError(Exception):
    """An install or uninstall step that cannot go on; the message says what to do."""


def run(
    argv: Sequence[str], *, timeout: float, check: bool = True
) -> subprocess.CompletedProcess[str]:
    try:
        done = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout, check=False
        )
    except FileNotFoundError:
        raise InstallError(f"{argv[0]}: not found") from None
    except subprocess.TimeoutExpired:
        raise InstallError(f"{' '.join(argv)}: no answer within {timeout:.0f}s") from None
    if check and done.returncode != 0:
        detail = (done.stderr or done.stdout).strip()[-2000:]
        raise InstallError(f"{' '.join(argv)} failed (exit {done.returncode}): {detail}")
    return done


def systemd_is_init(run_dir: str = "/run") -> bool:
    """systemd is PID 1 (``sd_booted``: it creates ``/run/systemd/system`` at boot)."""
    return os.path.isdir(os.path.join(run_dir, "systemd", "system"))


def apply_kernel_settings(
    modules: Sequence[str], sysctls: Mapping[str, str], *, proc_sys: str = "/proc/sys"
) -> list[str]:
    """Load ``modules`` and set ``sysctls`` now; what could not be done (the files written
    to /etc/modules-load.d and /etc/sysctl.d still apply them at the next boot)."""
    problems = []
    for module in modules:
        if shutil.which("modprobe") is None:
            problems.append(f"modprobe not found: load {module} by hand")
            continue
        done = run(["modprobe", module], timeout=30, check=False)
        if done.returncode != 0:
            problems.append(f"modprobe {module}: {done.stderr.strip() or 'failed'}")
    for key, value in sysctls.items():
        path = os.path.join(proc_sys, *key.split("."))
        try:
            with open(path, "w") as f:
                f.write(value)
        except OSError as exc:
            problems.append(f"{key} = {value}: {exc.strerror} ({path})")
    return problems


@dataclass(frozen=True, slots=True)
class Gpu:
    bus_id: str
    model: str


def detect_gpus(proc: str = "/proc") -> list[Gpu]:
    """NVIDIA GPUs the driver knows (``/proc/driver/nvidia/gpus/<bus id>/information``).

    Enough for node labels without NVML; the agent's GPU module reports the rest.
    """
    base = os.path.join(proc, "driver", "nvidia", "gpus")
    try:
        bus_ids = sorted(os.listdir(base))
    except OSError:
        return []
    gpus = []
    for bus_id in bus_ids:
        model = ""
        with contextlib.suppress(OSError), open(os.path.join(base, bus_id, "information")) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "Model":
                    model = value.strip()
        gpus.append(Gpu(bus_id, model))
    return gpus


def gpu_labels(gpus: Sequence[Gpu]) -> dict[str, str]:
    """Node labels in the form NVIDIA's GPU feature discovery uses; empty without GPUs."""
    if not gpus:
        return {}
    labels = {"nvidia.com/gpu.present": "true", "nvidia.com/gpu.count": str(len(gpus))}
    models = {g.model for g in gpus if g.model}
    if len(models) == 1:
        # label values: 63 chars of [A-Za-z0-9_.-], alphanumeric at both ends
        product = re.sub(r"[^A-Za-z0-9_.-]+", "-", models.pop()).strip("-_.")[:63]
        if product:
            labels["nvidia.com/gpu.product"] = product.rstrip("-_.")
    return labels


#: binary -> the Debian package that has it
_PREREQUISITES = {
    "runc": "runc",
    "conmon": "conmon",
    "catatonit": "catatonit",
    "iptables": "iptables",
    "ip": "iproute2",
    "nsenter": "util-linux",
}
_CNI_PLUGINS = ("bridge", "host-local", "loopback", "portmap")


def missing_prerequisites(cni_bin_dirs: Sequence[str]) -> list[str]:
    """What the agent needs on the node but is not there, each with its Debian package."""
    missing = [
        f"{binary} (Debian package {package})"
        for binary, package in _PREREQUISITES.items()
        if shutil.which(binary) is None
    ]
    missing.extend(
        f"CNI plugin {plugin} in {' or '.join(cni_bin_dirs)} "
        "(Debian package containernetworking-plugins)"
        for plugin in _CNI_PLUGINS
        if not any(os.access(os.path.join(d, plugin), os.X_OK) for d in cni_bin_dirs)
    )
    return missing


def agent_pid(state_dir: str) -> int | None:
    """The pid of the agent holding ``<state_dir>/model-agent.lock``; None when none runs."""
    path = os.path.join(state_dir, "model-agent.lock")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.read(fd, 32).decode(errors="replace").strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _read_only(path: str) -> sqlite3.Connection:
    """``metadata.db`` opened read-only: the installer never changes the agent's records."""
    try:
        return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    except sqlite3.Error as exc:
        raise InstallError(f"cannot open {path}: {exc}") from None


def database_schema(path: str) -> tuple[int, str] | None:
    """The schema version of ``metadata.db`` and the last agent version that started on it."""
    if not os.path.exists(path):
        return None
    conn = _read_only(path)
    try:
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        last = ""
        with contextlib.suppress(sqlite3.Error):
            row = conn.execute(
                "SELECT value FROM agent_info WHERE key = 'last_start_version'"
            ).fetchone()
            last = row[0] if row else ""
        return int(version), last
    except sqlite3.Error as exc:
        raise InstallError(f"cannot read the schema version of {path}: {exc}") from None
    finally:
        conn.close()


def pod_count(path: str) -> int:
    """How many pod sandboxes ``metadata.db`` records (0 without a database or its table):
    what a change that running pods would not survive must wait for."""
    if not os.path.exists(path):
        return 0
    conn = _read_only(path)
    try:
        (count,) = conn.execute("SELECT count(*) FROM sandboxes").fetchone()
        return int(count)
    except sqlite3.Error as exc:
        if "no such table" in str(exc):
            return 0  # a database from before pods were stored (schema < 3)
        raise InstallError(f"cannot count the pods in {path}: {exc}") from None
    finally:
        conn.close()
