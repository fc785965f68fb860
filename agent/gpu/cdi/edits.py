"""CDI container edits: checked against the host, then applied to an OCI runtime spec.

``check_edits`` runs when a container asks for devices, before anything is
created: container paths must be absolute (device nodes under ``/dev``), a
device node's host path must be a device node (its type, major and minor are
read from it when the spec omits them), a bind mount's source and a hook's
program must exist. A problem is an ``InvalidArgument`` that names the CDI
device and what is wrong. The result carries every number ``apply_edits``
needs, so applying never touches the host.

``apply_edits`` is the one function that puts CDI edits into the OCI spec dict
``pods.spec.container_spec`` builds, as the reference library's
``ContainerEdits.Apply`` does: env (a key already set is replaced), device nodes
(``linux.devices`` plus an allow rule in ``linux.resources.devices``; uid/gid
default to the process user's when non-zero), mounts (one at the same
destination is replaced; parents sorted before children), hooks by name,
``additionalGids`` (0 ignored), ``intelRdt`` and ``netDevices``. Imports only
``cdi.spec`` and ``errors``.
"""

from __future__ import annotations

import dataclasses
import os
import stat
from typing import Any

from agent.errors import InvalidArgument
from agent.gpu.cdi.spec import ContainerEdits, DeviceNode, Hook, Mount

__all__ = ["apply_edits", "check_edits"]


def _clean_absolute(path: str) -> bool:
    return os.path.isabs(path) and ".." not in path.split("/")


def _check_node(label: str, node: DeviceNode) -> DeviceNode:
    where = f"CDI device {label}: device node {node.path or '(empty)'}"
    if not _clean_absolute(node.path):
        raise InvalidArgument(f"{where}: the container path must be absolute")
    if not os.path.normpath(node.path).startswith("/dev/"):
        raise InvalidArgument(f"{where}: the container path is outside /dev")
    host = node.host_path or node.path
    if not os.path.isabs(host):
        raise InvalidArgument(f"{where}: the host path {host} must be absolute")
    if node.type and (node.major != 0 or node.type == "p"):
        filled = node  # everything given: nothing read from the host (as the reference)
        mode = node.file_mode
    else:
        try:
            st = os.stat(host)
        except OSError as exc:
            raise InvalidArgument(f"{where}: host device {host}: {exc.strerror}") from None
        if stat.S_ISCHR(st.st_mode):
            kind = "c"
        elif stat.S_ISBLK(st.st_mode):
            kind = "b"
        elif stat.S_ISFIFO(st.st_mode):
            kind = "p"
        else:
            raise InvalidArgument(f"{where}: host path {host} is not a device node")
        given = "c" if node.type == "u" else node.type
        if given and given != kind:
            raise InvalidArgument(f"{where}: type '{node.type}' but {host} is type '{kind}'")
        mode = node.file_mode if node.file_mode is not None else stat.S_IMODE(st.st_mode)
        filled = dataclasses.replace(
            node,
            type=node.type or kind,
            major=node.major or (os.major(st.st_rdev) if kind != "p" else 0),
            minor=node.minor if node.major else (os.minor(st.st_rdev) if kind != "p" else 0),
        )
    return dataclasses.replace(filled, host_path=host, file_mode=mode)


def _is_bind(mount: Mount) -> bool:
    return mount.type in ("", "bind", "rbind") or any(o in ("bind", "rbind") for o in mount.options)


def _check_mount(label: str, mount: Mount) -> None:
    where = f"CDI device {label}: mount {mount.container_path or '(empty)'}"
    if not _clean_absolute(mount.container_path):
        raise InvalidArgument(f"{where}: the container path must be absolute")
    if _is_bind(mount):
        if not os.path.isabs(mount.host_path):
            raise InvalidArgument(f"{where}: the host path {mount.host_path} must be absolute")
        if not os.path.exists(mount.host_path):
            raise InvalidArgument(f"{where}: the host path {mount.host_path} does not exist")


def _check_hook(label: str, hook: Hook) -> None:
    where = f"CDI device {label}: {hook.hook_name} hook {hook.path or '(empty)'}"
    if not os.path.isabs(hook.path):
        raise InvalidArgument(f"{where}: the hook path must be absolute")
    if not os.path.isfile(hook.path):
        raise InvalidArgument(f"{where}: the hook program does not exist")
    if not os.access(hook.path, os.X_OK):
        raise InvalidArgument(f"{where}: the hook program is not executable")


def check_edits(label: str, edits: ContainerEdits) -> ContainerEdits:
    """``edits`` validated against the host, device nodes completed from it (see module doc)."""
    nodes = tuple(_check_node(label, node) for node in edits.device_nodes)
    for mount in edits.mounts:
        _check_mount(label, mount)
    for hook in edits.hooks:
        _check_hook(label, hook)
    for net in edits.net_devices:
        if "/" in net.host_interface_name or "/" in net.name:
            raise InvalidArgument(f"CDI device {label}: invalid net device '{net.name}'")
    return dataclasses.replace(edits, device_nodes=nodes)


# ---------------------------------------------------------------------------
# Applying


def _depth(path: str) -> int:
    return len([p for p in os.path.normpath(path).split("/") if p])


def _apply_env(process: dict[str, Any], env: tuple[str, ...]) -> None:
    current: list[str] = process.setdefault("env", [])
    for item in env:
        key = item.partition("=")[0]
        for i, existing in enumerate(current):
            if existing.partition("=")[0] == key:
                current[i] = item
                break
        else:
            current.append(item)


def _apply_nodes(spec: dict[str, Any], nodes: tuple[DeviceNode, ...]) -> None:
    linux = spec.setdefault("linux", {})
    devices: list[dict[str, Any]] = linux.setdefault("devices", [])
    rules: list[dict[str, Any]] = linux.setdefault("resources", {}).setdefault("devices", [])
    user = spec.get("process", {}).get("user", {})
    for node in nodes:
        entry: dict[str, Any] = {"path": node.path, "type": node.type}
        if node.type != "p":
            entry["major"] = node.major
            entry["minor"] = node.minor
        if node.file_mode is not None:
            entry["fileMode"] = node.file_mode
        uid = node.uid if node.uid is not None else (user.get("uid") or None)
        gid = node.gid if node.gid is not None else (user.get("gid") or None)
        if uid is not None:
            entry["uid"] = uid
        if gid is not None:
            entry["gid"] = gid
        devices[:] = [d for d in devices if d.get("path") != node.path]
        devices.append(entry)
        if node.type in ("b", "c", "u"):
            rules.append(
                {
                    "allow": True,
                    "type": "b" if node.type == "b" else "c",
                    "major": node.major,
                    "minor": node.minor,
                    "access": node.permissions or "rwm",
                }
            )


def _apply_mounts(spec: dict[str, Any], mounts: tuple[Mount, ...]) -> None:
    current: list[dict[str, Any]] = spec.setdefault("mounts", [])
    for mount in mounts:
        target = os.path.normpath(mount.container_path)
        current[:] = [m for m in current if os.path.normpath(m["destination"]) != target]
        entry: dict[str, Any] = {
            "destination": mount.container_path,
            "type": mount.type or ("bind" if _is_bind(mount) else "none"),
            "source": mount.host_path,
        }
        if mount.options:
            entry["options"] = list(mount.options)
        current.append(entry)
    current.sort(key=lambda m: _depth(m["destination"]))  # stable: parents first


def _apply_hooks(spec: dict[str, Any], hooks: tuple[Hook, ...]) -> None:
    for hook in hooks:
        entry: dict[str, Any] = {"path": hook.path}
        if hook.args:
            entry["args"] = list(hook.args)
        if hook.env:
            entry["env"] = list(hook.env)
        if hook.timeout is not None:
            entry["timeout"] = hook.timeout
        spec.setdefault("hooks", {}).setdefault(hook.hook_name, []).append(entry)


def apply_edits(spec: dict[str, Any], edits: ContainerEdits) -> None:
    """Put ``edits`` (from ``check_edits``) into the OCI runtime ``spec``, in place."""
    process = spec.setdefault("process", {})
    if edits.env:
        _apply_env(process, edits.env)
    if edits.device_nodes:
        _apply_nodes(spec, edits.device_nodes)
    if edits.mounts:
        _apply_mounts(spec, edits.mounts)
    if edits.hooks:
        _apply_hooks(spec, edits.hooks)
    gids = [g for g in edits.additional_gids if g != 0]
    if gids:
        user = process.setdefault("user", {"uid": 0, "gid": 0})
        current: list[int] = user.setdefault("additionalGids", [])
        current.extend(g for g in gids if g not in current)
    if edits.intel_rdt is not None:
        rdt = edits.intel_rdt
        values = {
            "closID": rdt.clos_id,
            "l3CacheSchema": rdt.l3_cache_schema,
            "memBwSchema": rdt.mem_bw_schema,
            "schemata": list(rdt.schemata),
            "enableMonitoring": rdt.enable_monitoring,
            "enableCMT": rdt.enable_cmt,
            "enableMBM": rdt.enable_mbm,
        }
        spec.setdefault("linux", {})["intelRdt"] = {k: v for k, v in values.items() if v}
    if edits.net_devices:
        net = spec.setdefault("linux", {}).setdefault("netDevices", {})
        for device in edits.net_devices:
            net[device.host_interface_name] = {"name": device.name}
