"""``network.default_network`` and the fallback subnet (no host access)."""

from __future__ import annotations

import ipaddress

import pytest

from agent.config import load
from agent.errors import ConfigError, InvalidArgument
from agent.network.default_network import network_conf_dirs


def test_conf_dirs_per_mode():
    assert network_conf_dirs("auto", "/etc/cni/net.d", "/own") == ["/etc/cni/net.d", "/own"]
    assert network_conf_dirs("never", "/etc/cni/net.d", "/own") == ["/etc/cni/net.d"]
    assert network_conf_dirs("always", "/etc/cni/net.d", "/own") == ["/own"]
    with pytest.raises(InvalidArgument):
        network_conf_dirs("sometimes", "/etc/cni/net.d", "/own")


def test_config_key_and_choices(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[network]\ndefault_network = "never"\n')
    assert load(str(path), environ={}).network.default_network == "never"
    path.write_text('[network]\ndefault_network = "maybe"\n')
    with pytest.raises(ConfigError, match=r"network.default_network: 'maybe' is not one of"):
        load(str(path), environ={})


def test_default_subnet_avoids_other_runtimes_defaults(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("")
    subnet = ipaddress.ip_network(load(str(path), environ={}).network.pod_cidr)
    others = [
        "10.88.0.0/16",  # podman, containerd's example bridge
        "10.85.0.0/16",  # CRI-O
        "172.17.0.0/16",  # Docker
        "10.244.0.0/16",  # flannel, kind
        "192.168.0.0/16",  # Calico
        "10.42.0.0/16",  # k3s pods
        "10.43.0.0/16",  # k3s services
        "10.233.0.0/16",  # kubespray
        "10.128.0.0/14",  # OpenShift SDN
        "10.96.0.0/12",  # kubeadm's Service range
    ]
    assert not [o for o in others if subnet.overlaps(ipaddress.ip_network(o))]
