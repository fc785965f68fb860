"""The mounts and devices of a container's OCI spec: the defaults every container gets
(protocols.md §6.1), the kubelet's bind mounts with their propagation checked
against the host's, and device nodes with their cgroup allow rules."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Sequence
from typing import Any

from agent.errors import InvalidArgument
from agent.pods.model import Device, Mount

__all__ = ["cri_mounts", "default_mounts", "device_entries", "host_devices", "merge_mounts"]

_PROPAGATION = {"PRIVATE": "rprivate", "HOST_TO_CONTAINER": "rslave", "BIDIRECTIONAL": "rshared"}


def default_mounts(
    *, privileged: bool, shm: str, readonly_sys: bool = True
) -> list[dict[str, Any]]:
    sys_options = ["nosuid", "noexec", "nodev"] + (
        ["ro"] if readonly_sys and not privileged else []
    )
    cgroup_options = ["nosuid", "noexec", "nodev", "relatime", "ro" if not privileged else "rw"]
    mounts = [
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
        {
            "destination": "/dev/pts",
            "type": "devpts",
            "source": "devpts",
            "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        },
        {
            "destination": "/dev/mqueue",
            "type": "mqueue",
            "source": "mqueue",
            "options": ["nosuid", "noexec", "nodev"],
        },
        {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": sys_options},
        {
            "destination": "/sys/fs/cgroup",
            "type": "cgroup",
            "source": "cgroup",
            "options": cgroup_options,
        },
    ]
    if shm:
        mounts.append(
            {
                "destination": "/dev/shm",
                "type": "bind",
                "source": shm,
                "options": ["rbind", "nosuid", "nodev", "noexec"],
            }
        )
    else:
        mounts.append(
            {
                "destination": "/dev/shm",
                "type": "tmpfs",
                "source": "shm",
                "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
            }
        )
    return mounts


def _depth(path: str) -> int:
    return len([p for p in os.path.normpath(path).split("/") if p])


def merge_mounts(
    defaults: list[dict[str, Any]], extra: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Extra (CRI and pod) mounts win over defaults at the same path; /dev drops /dev/*."""
    targets = {os.path.normpath(m["destination"]) for m in extra}
    kept = []
    for mount in defaults:
        dest = os.path.normpath(mount["destination"])
        if dest in targets:
            continue
        if "/dev" in targets and dest.startswith("/dev/"):
            continue
        kept.append(mount)
    merged = kept + extra
    # Parents before children, stable otherwise (containerd sorts by depth).
    return sorted(merged, key=lambda m: _depth(m["destination"]))


def _mountinfo_propagation(path: str) -> str:
    """ "shared", "slave" or "private" for the mount containing ``path`` on the host."""
    best = ("", "private")
    real = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            mount_point = fields[4]
            optional = fields[6 : fields.index("-")]
            prefix = mount_point.rstrip("/") + "/"
            if (real == mount_point or real.startswith(prefix) or mount_point == "/") and (
                len(mount_point) >= len(best[0])
            ):
                kind = "private"
                if any(o.startswith("shared:") for o in optional):
                    kind = "shared"
                elif any(o.startswith("master:") for o in optional):
                    kind = "slave"
                best = (mount_point, kind)
    return best[1]


def cri_mounts(mounts: Sequence[Mount]) -> tuple[list[dict[str, Any]], str]:
    """OCI mounts for the kubelet's bind mounts, and the rootfs propagation they need."""
    result = []
    rootfs_propagation = ""
    for mount in mounts:
        if not os.path.exists(mount.host_path):
            raise InvalidArgument(
                f"mount host path '{mount.host_path}' (for {mount.container_path}) does not exist"
            )
        propagation = _PROPAGATION.get(mount.propagation)
        if propagation is None:
            raise InvalidArgument(
                f"mount {mount.container_path}: unknown propagation '{mount.propagation}'"
            )
        if propagation != "rprivate":
            # An image volume's source is the agent's own mount under its state dir: it
            # takes that dir's propagation (shared on a systemd host).
            where = (
                f"the agent's state dir (image volume {mount.image} at {mount.host_path})"
                if mount.image
                else f"the host path {mount.host_path}"
            )
            host = _mountinfo_propagation(mount.host_path)
            if propagation == "rshared" and host != "shared":
                raise InvalidArgument(
                    f"mount {mount.container_path}: Bidirectional propagation needs {where} "
                    f"on a shared mount (it is {host})"
                )
            if propagation == "rslave" and host == "private":
                raise InvalidArgument(
                    f"mount {mount.container_path}: HostToContainer propagation needs {where} "
                    "on a shared or slave mount (it is private)"
                )
            if propagation == "rshared" or not rootfs_propagation:
                rootfs_propagation = propagation
        options = ["rbind", propagation, "ro" if mount.readonly else "rw"]
        if mount.image:
            options += ["nosuid", "nodev"]  # an image's content: never setuid, no devices
        result.append(
            {
                "destination": mount.container_path,
                "type": "bind",
                "source": mount.host_path,
                "options": options,
            }
        )
    return result, rootfs_propagation


def device_entries(devices: Iterable[Device]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``linux.devices`` and the cgroup allow rules for the kubelet's devices."""
    nodes, rules = [], []
    for device in devices:
        try:
            st = os.stat(device.host_path)
        except FileNotFoundError:
            raise InvalidArgument(f"device {device.host_path} does not exist") from None
        if stat.S_ISCHR(st.st_mode):
            kind = "c"
        elif stat.S_ISBLK(st.st_mode):
            kind = "b"
        else:
            raise InvalidArgument(f"{device.host_path} is not a device node")
        permissions = device.permissions or "rwm"
        if not set(permissions) <= set("rwm"):
            raise InvalidArgument(
                f"device {device.host_path}: permissions '{permissions}' are not a subset of rwm"
            )
        major, minor = os.major(st.st_rdev), os.minor(st.st_rdev)
        nodes.append(
            {
                "path": device.container_path,
                "type": kind,
                "major": major,
                "minor": minor,
                "fileMode": stat.S_IMODE(st.st_mode),
                "uid": st.st_uid,
                "gid": st.st_gid,
            }
        )
        rules.append(
            {"allow": True, "type": kind, "major": major, "minor": minor, "access": permissions}
        )
    return nodes, rules


def host_devices() -> list[Device]:
    """Every device node under the host's /dev (what a privileged container sees)."""
    found = []
    for dirpath, dirnames, filenames in os.walk("/dev"):
        dirnames[:] = [d for d in dirnames if d not in ("pts", "shm", "mqueue", "fd")]
        for name in filenames:
            path = os.path.join(dirpath, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                if path in ("/dev/console", "/dev/ptmx", "/dev/tty"):
                    continue
                found.append(Device(path, path, "rwm"))
    return found
