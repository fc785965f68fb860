"""The text of every file the node install writes: unit, crictl.yaml, kernel settings.

``deploy/systemd/model-agent.service`` in the repository is :func:`unit_text` for the
default layout (a test keeps them identical). Imports only the standard library.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from agent.install.layout import Layout

__all__ = [
    "KERNEL_MODULES",
    "MARKER",
    "SYSCTLS",
    "crictl_text",
    "kubelet_settings",
    "modules_load_text",
    "sysctl_text",
    "toml_text",
    "unit_text",
]

#: First line of every file the install writes that a person might also have written.
MARKER = "# Written by model-agent install; uninstall removes it."

#: ``overlay`` for container root filesystems, ``br_netfilter`` so bridged pod traffic
#: passes iptables (Services, network policies).
KERNEL_MODULES = ("overlay", "br_netfilter")

SYSCTLS: Mapping[str, str] = {
    "net.ipv4.ip_forward": "1",
    "net.bridge.bridge-nf-call-iptables": "1",
    "net.bridge.bridge-nf-call-ip6tables": "1",
}


def unit_text(layout: Layout) -> str:
    """The systemd unit, modelled on containerd's.

    ``Type=notify``: the agent sends READY=1 once recovered, so ``Before=kubelet.service``
    means the kubelet finds a usable runtime. ``KillMode=process``: stopping or restarting
    the unit signals the agent only; conmon (in this unit's cgroup) and the containers (in
    the kubelet's pod cgroups, with either driver) keep running, and the next start adopts
    them. ``Delegate=yes``: systemd leaves the cgroups below the unit to the agent.
    ``OOMScoreAdjust=-999``: the node's runtime is the last thing the OOM killer takes.
    """
    executable = layout.executable
    config = layout.config_file
    return f"""{MARKER}
[Unit]
Description=model-agent: Kubernetes CRI runtime for serving ML models
Documentation=https://kubernetes.io/docs/setup/production-environment/container-runtimes/
After=network-online.target local-fs.target
Wants=network-online.target
Before=kubelet.service
StartLimitIntervalSec=0

[Service]
Type=notify
NotifyAccess=main
ExecStartPre=-/sbin/modprobe overlay
ExecStartPre=-/sbin/modprobe br_netfilter
ExecStart={executable} serve --config {config}
Environment=PYTHONUNBUFFERED=1
KillMode=process
Delegate=yes
Restart=always
RestartSec=2
TimeoutStartSec=15min
TimeoutStopSec=60
LimitNOFILE=1048576
LimitNPROC=infinity
LimitCORE=infinity
TasksMax=infinity
OOMScoreAdjust=-999

[Install]
WantedBy=multi-user.target
"""


def crictl_text(layout: Layout) -> str:
    endpoint = f"unix://{layout.socket}"
    return f"{MARKER}\nruntime-endpoint: {endpoint}\nimage-endpoint: {endpoint}\ntimeout: 10\n"


def modules_load_text() -> str:
    return MARKER + "\n" + "".join(f"{m}\n" for m in KERNEL_MODULES)


def sysctl_text() -> str:
    return MARKER + "\n" + "".join(f"{k} = {v}\n" for k, v in SYSCTLS.items())


def kubelet_settings(layout: Layout, cgroup_driver: str) -> str:
    """What the kubelet needs to use this runtime, as KubeletConfiguration and as flags."""
    endpoint = f"unix://{layout.socket}"
    return (
        "# KubeletConfiguration (e.g. /var/lib/kubelet/config.yaml):\n"
        f"containerRuntimeEndpoint: {endpoint}\n"
        f"imageServiceEndpoint: {endpoint}\n"
        f"cgroupDriver: {cgroup_driver}\n"
        "# or, as kubelet flags:\n"
        f"#   --container-runtime-endpoint={endpoint} --image-service-endpoint={endpoint}"
        f" --cgroup-driver={cgroup_driver}\n"
    )


_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def toml_text(tree: Mapping[str, Any]) -> str:
    """A TOML document for a tree of tables, strings, numbers, booleans and lists."""
    lines: list[str] = []
    _toml_table(tree, [], lines)
    return "\n".join(lines) + "\n"


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.match(key) else _toml_string(key)


def _toml_string(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def _toml_table(tree: Mapping[str, Any], path: list[str], lines: list[str]) -> None:
    scalars = {k: v for k, v in tree.items() if not isinstance(v, Mapping)}
    tables = {k: v for k, v in tree.items() if isinstance(v, Mapping)}
    if scalars and path:
        lines.append("[" + ".".join(_toml_key(p) for p in path) + "]")
    for key, value in scalars.items():
        lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
    for key, value in tables.items():
        _toml_table(value, [*path, key], lines)
