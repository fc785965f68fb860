"""Pod networking: network namespaces and CNI plugin execution. No CRI types here."""

from agent.network import cni, netns
from agent.network.cni import plugin_version
from agent.network.cni_config import NetworkConfig, find_network, find_plugin
from agent.network.default_network import (
    loopback_network,
    network_conf_dirs,
    update_pod_cidr,
    write_default_conflist,
)
from agent.network.netns import InterfaceCounters, parse_proc_net_dev

__all__ = [
    "InterfaceCounters",
    "NetworkConfig",
    "cni",
    "find_network",
    "find_plugin",
    "loopback_network",
    "netns",
    "network_conf_dirs",
    "parse_proc_net_dev",
    "plugin_version",
    "update_pod_cidr",
    "write_default_conflist",
]
