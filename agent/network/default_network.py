"""The agent's own pod network, for clusters that install no CNI config.

One bridge on the node (``network.bridge``) with the pods' gateway on it and
masquerading for traffic leaving the pod subnet, ``host-local`` addresses
from ``network.pod_cidr`` (one IPv4 and/or one IPv6 range, comma-separated
as the kubelet sends them) recorded under the agent's own directory rather
than ``/var/lib/cni``, and ``portmap`` for hostPorts. It is written as an
ordinary conflist, so ``cni_config`` finds it the same way as a cluster's.
Whether it is used at all is ``network.default_network``
(:func:`network_conf_dirs`): ``auto`` (only when the cluster's directory has
no usable config), ``always`` or ``never``.

The default subnet, 10.217.0.0/16, stays clear of the ranges other runtimes
and network add-ons use out of the box (podman and containerd 10.88/16, CRI-O
10.85/16, Docker 172.17/16 and up, flannel 10.244/16, Calico 192.168/16, k3s
10.42/16 and 10.43/16, kubespray 10.233/16, OpenShift 10.128/14, the usual
Service range 10.96/12), so the fallback network never shadows them.

``lo`` is not part of it: like containerd, the caller runs the standalone
``loopback`` plugin (``loopback_network()``) on every pod first.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
from typing import Any

from agent._util.fs import atomic_write
from agent._util.proc import run
from agent.errors import AgentError, InvalidArgument
from agent.network.cni_config import NetworkConfig

__all__ = [
    "CNI_VERSION",
    "CONFLIST_NAME",
    "NETWORK_NAME",
    "default_conflist",
    "loopback_network",
    "network_conf_dirs",
    "parse_pod_cidrs",
    "reconcile_bridge",
    "update_pod_cidr",
    "write_default_conflist",
]

log = logging.getLogger(__name__)

#: The newest spec Debian 12's plugins (1.1.1) speak.
CNI_VERSION = "1.0.0"
NETWORK_NAME = "model-agent"
#: Sorts before most vendors' files, but a cluster's conf dir is searched first anyway.
CONFLIST_NAME = "10-model-agent.conflist"
_LOOPBACK_NAME = "cni-loopback"
_IP_TIMEOUT = 10.0

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def network_conf_dirs(mode: str, cluster_conf_dir: str, own_conf_dir: str) -> list[str]:
    """The CNI config directories searched, in order, for ``network.default_network``.

    ``auto``: the cluster's first, then the agent's own (the first usable
    config wins, so a cluster's network takes over as soon as it is written);
    ``never``: only the cluster's; ``always``: only the agent's own.
    """
    if mode == "never":
        return [cluster_conf_dir]
    if mode == "always":
        return [own_conf_dir]
    if mode == "auto":
        return [cluster_conf_dir, own_conf_dir]
    raise InvalidArgument(f"network.default_network: unknown mode {mode!r}")


def parse_pod_cidrs(pod_cidr: str) -> list[Network]:
    """``"10.217.0.0/16"`` or ``"10.217.0.0/16,fd00:217::/64"``: at most one of each family."""
    networks: list[Network] = []
    for part in (p.strip() for p in pod_cidr.split(",")):
        try:
            net = ipaddress.ip_network(part)
        except ValueError as exc:
            raise InvalidArgument(f"pod CIDR {pod_cidr!r}: {exc}") from None
        if any(n.version == net.version for n in networks):
            raise InvalidArgument(f"pod CIDR {pod_cidr!r}: more than one IPv{net.version} subnet")
        if net.num_addresses < 4:  # network, gateway, one pod, broadcast
            raise InvalidArgument(f"pod CIDR {pod_cidr!r}: {net} is too small for pods")
        networks.append(net)
    return sorted(networks, key=lambda n: n.version)


def default_conflist(*, pod_cidr: str, bridge: str, ipam_data_dir: str) -> dict[str, Any]:
    """The conflist of the default network (no files written)."""
    networks = parse_pod_cidrs(pod_cidr)
    default_routes = {4: "0.0.0.0/0", 6: "::/0"}
    return {
        "cniVersion": CNI_VERSION,
        "name": NETWORK_NAME,
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "isGateway": True,
                "ipMasq": True,
                # a pod reaching itself through a Service or hostPort comes back in
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": str(net)}] for net in networks],
                    "routes": [{"dst": default_routes[net.version]} for net in networks],
                    "dataDir": ipam_data_dir,
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True},
        ],
    }


def write_default_conflist(
    conf_dir: str, *, pod_cidr: str, bridge: str, ipam_data_dir: str
) -> NetworkConfig:
    """Write ``<conf_dir>/10-model-agent.conflist`` atomically; the network it holds.

    The file is left untouched when it already says the same, so its mtime
    only moves when the network changed.
    """
    conflist = default_conflist(pod_cidr=pod_cidr, bridge=bridge, ipam_data_dir=ipam_data_dir)
    path = os.path.join(conf_dir, CONFLIST_NAME)
    data = json.dumps(conflist, indent=2).encode() + b"\n"
    os.makedirs(conf_dir, mode=0o755, exist_ok=True)
    try:
        with open(path, "rb") as f:
            unchanged = f.read() == data
    except FileNotFoundError:
        unchanged = False
    if not unchanged:
        atomic_write(path, data)
    return NetworkConfig(path=path, name=NETWORK_NAME, cni_version=CNI_VERSION, conflist=conflist)


def _current_subnets(conf_dir: str) -> list[str] | None:
    try:
        with open(os.path.join(conf_dir, CONFLIST_NAME), "rb") as f:
            data = json.load(f)
        ranges = data["plugins"][0]["ipam"]["ranges"]
        return [str(r[0]["subnet"]) for r in ranges]
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None


async def update_pod_cidr(conf_dir: str, *, pod_cidr: str, bridge: str, ipam_data_dir: str) -> bool:
    """Rewrite the default network for a new pod CIDR (``UpdateRuntimeConfig``).

    Returns whether the conflist changed. Pods already attached keep their
    addresses: host-local releases by container id, whatever the range. The
    bridge is then reconciled (:func:`reconcile_bridge`) even when the file
    was already up to date, so calling this again heals a bridge that was
    busy the first time.
    """
    networks = parse_pod_cidrs(pod_cidr)
    changed = _current_subnets(conf_dir) != [str(n) for n in networks]
    if changed:
        write_default_conflist(
            conf_dir, pod_cidr=pod_cidr, bridge=bridge, ipam_data_dir=ipam_data_dir
        )
    await reconcile_bridge(bridge, pod_cidr)
    return changed


def _bridge_ports(bridge: str) -> list[str] | None:
    """The interfaces enslaved to ``bridge``; None when there is no such bridge."""
    try:
        return os.listdir(f"/sys/class/net/{bridge}/brif")
    except FileNotFoundError:
        return None


async def reconcile_bridge(bridge: str, pod_cidr: str) -> list[str]:
    """Drop gateway addresses of an old pod CIDR from an idle bridge; those dropped.

    The bridge plugin refuses a bridge whose IPv4 gateway is from another
    subnet ("already has an IP address different from ..."), so after the
    pod CIDR changed no new pod could start. With no pod attached the stale
    addresses are removed and the next ADD puts the new gateway on. While
    pods of the old subnet remain nothing is touched (their default route is
    that gateway) and a warning says new pods fail until they are gone; the
    caller reconciles again then (e.g. at start, or after removing a pod).
    """
    networks = parse_pod_cidrs(pod_cidr)
    if _bridge_ports(bridge) is None:
        return []  # the first ADD creates it with the new gateway
    done = await run(["ip", "-j", "addr", "show", "dev", bridge], timeout=_IP_TIMEOUT)
    try:
        links = json.loads(done.stdout or b"[]")
        addresses = [
            f"{a['local']}/{a['prefixlen']}"
            for link in links
            for a in link.get("addr_info", ())
            if a.get("scope") == "global"
        ]
    except (ValueError, KeyError, TypeError) as exc:
        raise AgentError(f"cannot read the addresses of bridge {bridge}: {exc}") from None
    stale = [a for a in addresses if not any(ipaddress.ip_interface(a).ip in n for n in networks)]
    if not stale:
        return []
    ports = _bridge_ports(bridge) or []
    if ports:
        log.warning(
            "bridge %s still serves %d pod(s) on %s; new pods on %s fail until they are gone",
            bridge,
            len(ports),
            ", ".join(stale),
            ", ".join(str(n) for n in networks),
        )
        return []
    for address in stale:
        await run(["ip", "addr", "del", address, "dev", bridge], timeout=_IP_TIMEOUT)
    log.info("bridge %s: removed gateway(s) %s of an old pod CIDR", bridge, ", ".join(stale))
    return stale


def loopback_network() -> NetworkConfig:
    """The standalone ``loopback`` network every pod's ``lo`` is brought up with."""
    conflist = {
        "cniVersion": CNI_VERSION,
        "name": _LOOPBACK_NAME,
        "plugins": [{"type": "loopback"}],
    }
    return NetworkConfig(path="", name=_LOOPBACK_NAME, cni_version=CNI_VERSION, conflist=conflist)
