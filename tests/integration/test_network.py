"""Pod networking with the real plugins: pinned namespaces, bridge, host-local, portmap.

Each test gets its own bridge (``mt-<hex>``), a free /24 of 10.250.0.0/16 and an IPAM
directory in its temp dir. Traffic only goes to the test's own pod addresses, its own
bridge's gateway and 127.0.0.1. The fixture deletes the bridge and any CNI iptables
chains and rules the test added (portmap's shared ``CNI-HOSTPORT-*`` chains outlive
the last DEL), and puts ``ip_forward`` back, which the bridge plugin turns on.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import secrets
import socket
import stat
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from agent.errors import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from agent.network import cni, default_network, netns
from agent.network.cni import CniError, CniResult, PortMapping
from agent.network.cni_config import NetworkConfig
from tests.support.network import (
    CNI_BIN_DIRS,
    HostNetworkState,
    cni_chains,
    echo,
    echo_server,
    free_subnet,
    iptables_lines,
    iptables_mentioning,
    link_exists,
    sh,
    unique_bridge,
)

pytestmark = pytest.mark.integration

TIMEOUT = 30.0


@dataclass
class NetEnv:
    pin_dir: str
    conf_dir: str
    ipam_dir: str
    bin_dir: str
    bridge: str
    subnet: ipaddress.IPv4Network
    network: NetworkConfig
    state: HostNetworkState
    container_ids: list[str] = field(default_factory=list)

    def new_id(self) -> str:
        """A container id the teardown knows to clean up after."""
        cid = secrets.token_hex(32)
        self.container_ids.append(cid)
        return cid

    @property
    def bin_dirs(self) -> list[str]:
        return [self.bin_dir, *CNI_BIN_DIRS]

    @property
    def gateway(self) -> str:
        return str(self.subnet[1])

    def allocations(self) -> list[str]:
        """host-local's per-address files (its ``lock`` and ``last_reserved_ip.*`` stay)."""
        directory = os.path.join(self.ipam_dir, default_network.NETWORK_NAME)
        if not os.path.isdir(directory):
            return []
        return [
            n for n in os.listdir(directory) if n != "lock" and not n.startswith("last_reserved")
        ]

    def with_plugins(self, *extra: dict[str, object]) -> NetworkConfig:
        """The default network with more (fake) plugins after its own."""
        conflist = dict(self.network.conflist)
        conflist["plugins"] = [*conflist["plugins"], *extra]
        return NetworkConfig("", self.network.name, self.network.cni_version, conflist)

    def bridge_ports(self) -> list[str]:
        """Host-side veths on the test's bridge (other tests' pods are elsewhere)."""
        try:
            return sorted(os.listdir(f"/sys/class/net/{self.bridge}/brif"))
        except FileNotFoundError:
            return []

    def assert_nothing_left(self, container_id: str, *results: CniResult) -> None:
        assert self.bridge_ports() == []
        assert not any(link_exists(host_veth(r)) for r in results)
        assert self.allocations() == []
        assert iptables_mentioning(container_id) == []
        chains = {line[1:] for t in ("nat", "filter") for line in iptables_lines(t)}
        assert not cni_chains(self.network.name, container_id) & chains


def pod_args(container_id: str) -> dict[str, str]:
    return {
        "IgnoreUnknown": "1",
        "K8S_POD_NAMESPACE": "default",
        "K8S_POD_NAME": f"pod-{container_id[:6]}",
        "K8S_POD_INFRA_CONTAINER_ID": container_id,
        "K8S_POD_UID": f"uid-{container_id[:8]}",
    }


FAKE = """#!{python}
import json, os, sys, time
conf = json.loads(sys.stdin.read() or "{{}}")
if os.environ.get("CNI_COMMAND") == "VERSION":
    print(json.dumps({{"cniVersion": "1.0.0", "supportedVersions": ["1.0.0"]}}))
elif os.environ.get("CNI_COMMAND") != "ADD":
    pass
elif conf.get("hang"):
    with open(conf["pidfile"], "w") as f:
        f.write(str(os.getpid()))
    time.sleep(120)
else:
    print(json.dumps({{"cniVersion": "1.0.0", "code": 11, "msg": "quota exceeded",
                      "details": "no more pods today"}}))
    sys.exit(1)
"""


@pytest.fixture
async def net_env(short_dir: str) -> AsyncIterator[NetEnv]:
    state = HostNetworkState.capture()
    bridge = unique_bridge()
    subnet = free_subnet()
    bin_dir = os.path.join(short_dir, "bin")
    os.makedirs(bin_dir)
    fake = os.path.join(bin_dir, "ma-fake")
    with open(fake, "w") as f:
        f.write(FAKE.format(python=sys.executable))
    os.chmod(fake, stat.S_IRWXU)
    conf_dir = os.path.join(short_dir, "net.d")
    ipam_dir = os.path.join(short_dir, "ipam")
    network = default_network.write_default_conflist(
        conf_dir, pod_cidr=str(subnet), bridge=bridge, ipam_data_dir=ipam_dir
    )
    env = NetEnv(
        pin_dir=os.path.join(short_dir, "netns"),
        conf_dir=conf_dir,
        ipam_dir=ipam_dir,
        bin_dir=bin_dir,
        bridge=bridge,
        subnet=subnet,
        network=network,
        state=state,
    )
    try:
        yield env
    finally:
        # Unpinning a namespace destroys it and with it any veth a failed test left.
        await netns.cleanup_dir(env.pin_dir, release_dir=True)
        if link_exists(bridge):
            sh("ip", "link", "del", bridge)
        state.restore(network.name, env.container_ids)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def mounted(path: str) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == os.path.realpath(path) for line in f)


# ---------------------------------------------------------------------------
# Namespaces


async def test_netns_pins_live_in_a_private_dir_and_go_away(short_dir: str):
    pin_dir = os.path.join(short_dir, "netns")
    try:
        pin = await netns.create(pin_dir, "pod-a")
        assert pin == os.path.join(pin_dir, "pod-a")
        assert netns.exists(pin) and mounted(pin)
        with open("/proc/self/mountinfo") as f:
            own = [line.split() for line in f if line.split()[4] == os.path.realpath(pin_dir)]
        assert own and not any(tag.startswith(("shared:", "master:")) for tag in own[-1][6:])
        links = (await netns.run_in(pin, ["ip", "-o", "link"], 5)).stdout.decode()
        assert [line.split(":")[1].strip() for line in links.splitlines()] == ["lo"]
        assert "state DOWN" in links  # lo comes up with the loopback plugin, not here
        assert await netns.interface_counters(pin) == {}
        with pytest.raises(AlreadyExists):
            await netns.create(pin_dir, "pod-a")
        with pytest.raises(InvalidArgument):
            await netns.create(pin_dir, "../escape")

        await netns.remove(pin)
        assert not netns.exists(pin) and not mounted(pin) and not os.path.exists(pin)
        await netns.remove(pin)  # idempotent
        with pytest.raises(NotFound):
            await netns.run_in(pin, ["true"], 5)

        kept = await netns.create(pin_dir, "pod-b")
        gone = await netns.create(pin_dir, "pod-c")
        with open(os.path.join(pin_dir, "stale"), "w"):
            pass  # a pin file a crash left unmounted
        removed = await netns.cleanup_dir(pin_dir, keep={"pod-b"})
        assert sorted(removed) == [gone, os.path.join(pin_dir, "stale")]
        assert netns.exists(kept) and not os.path.exists(gone)
    finally:
        await netns.cleanup_dir(pin_dir, release_dir=True)
    assert not mounted(pin_dir) and os.listdir(pin_dir) == []


async def test_concurrent_creates_share_one_dir_mount(short_dir: str):
    pin_dir = os.path.join(short_dir, "netns")
    try:
        pins = await asyncio.gather(*(netns.create(pin_dir, f"p{i}") for i in range(6)))
        assert all(netns.exists(p) for p in pins)
        with open("/proc/self/mountinfo") as f:
            dir_mounts = [ln for ln in f if ln.split()[4] == os.path.realpath(pin_dir)]
        assert len(dir_mounts) == 1
    finally:
        await netns.cleanup_dir(pin_dir, release_dir=True)


# ---------------------------------------------------------------------------
# The default network end to end


async def test_pod_gets_an_address_is_reachable_and_leaves_nothing(net_env: NetEnv):
    """ADD loopback + the default network, talk to the pod, DEL, and check the host.

    The hostPort is reached at 127.0.0.1: with ``snat: true`` portmap marks
    connections from 127.0.0.1 for masquerade and sets ``route_localnet`` on the
    bridge, so the DNAT-ed packet may leave with a 127/8 source; the pod sees the
    bridge gateway as the peer. That is the address node-local users of a hostPort
    use. The gateway (a host address on the test's own bridge) works as well.
    """
    cid = net_env.new_id()
    pin = await netns.create(net_env.pin_dir, cid)
    args = pod_args(cid)
    host_port = free_port()
    runtime = cni.port_mappings_config([PortMapping(host_port, 8080)])
    common: dict[str, Any] = {
        "container_id": cid,
        "netns_path": pin,
        "args": args,
        "timeout": TIMEOUT,
    }

    lo = await cni.add(
        default_network.loopback_network(), ifname="lo", bin_dirs=net_env.bin_dirs, **common
    )
    result = await cni.add(
        net_env.network, runtime_config=runtime, bin_dirs=net_env.bin_dirs, **common
    )
    cached = result.to_json()  # what the sandbox code persists for DEL

    (pod_ip,) = cni.pod_ips(result)
    assert ipaddress.ip_address(pod_ip) in net_env.subnet
    (ip,) = result.ips
    assert ip.gateway == net_env.gateway
    assert ip.interface is not None
    assert result.interfaces[ip.interface].name == "eth0"
    assert result.interfaces[ip.interface].sandbox == pin
    assert cni.pod_ips(lo) == ["127.0.0.1", "::1"] or cni.pod_ips(lo) == ["127.0.0.1"]
    lo_link = (await netns.run_in(pin, ["ip", "-o", "link", "show", "lo"], 5)).stdout.decode()
    assert ",UP," in lo_link or ",UP>" in lo_link
    addrs = (await netns.run_in(pin, ["ip", "-o", "-4", "addr"], 5)).stdout.decode()
    assert f"inet {pod_ip}/24" in addrs and "inet 127.0.0.1/8" in addrs

    before = (await netns.interface_counters(pin))["eth0"]
    async with echo_server(pin, 8080):
        assert await echo(pod_ip, 8080) == f"ping from {net_env.gateway}".encode()
        assert await echo("127.0.0.1", host_port, b"hp") == f"hp from {net_env.gateway}".encode()
        assert (
            await echo(net_env.gateway, host_port, b"gw") == f"gw from {net_env.gateway}".encode()
        )
    after = (await netns.interface_counters(pin))["eth0"]
    assert after.rx_packets > before.rx_packets and after.tx_packets > before.tx_packets
    assert after.rx_bytes > before.rx_bytes + 3 * 40  # three connections at least
    assert after.tx_bytes > before.tx_bytes

    assert iptables_mentioning(cid)  # masquerade and hostport rules exist while attached
    cached_result = CniResult.from_json(cached)
    await cni.check(net_env.network, prev_result=cached_result, bin_dirs=net_env.bin_dirs, **common)
    try:
        await cni.check(
            net_env.network,
            prev_result=cached_result,
            runtime_config=runtime,
            bin_dirs=net_env.bin_dirs,
            **common,
        )
    except CniError as exc:
        # portmap up to 1.2 also looks for IPv6 rules of an IPv4-only pod on CHECK
        # (containernetworking/plugins#819); Debian 12 ships 1.1.1.
        assert "could not check ipv6 dnat" in str(exc)

    await cni.delete(
        net_env.network,
        prev_result=CniResult.from_json(cached),
        runtime_config=runtime,
        bin_dirs=net_env.bin_dirs,
        **common,
    )
    await cni.delete(
        default_network.loopback_network(),
        ifname="lo",
        prev_result=lo,
        bin_dirs=net_env.bin_dirs,
        **common,
    )
    await netns.remove(pin)
    assert not mounted(pin) and not os.path.exists(pin)
    net_env.assert_nothing_left(cid, result)
    with pytest.raises(OSError):  # noqa: PT011 - refused or timed out, either way gone
        await echo("127.0.0.1", host_port, timeout=1)


async def test_delete_is_idempotent_even_without_the_netns(net_env: NetEnv):
    cid = net_env.new_id()
    pin = await netns.create(net_env.pin_dir, cid)
    common: dict[str, Any] = {
        "container_id": cid,
        "netns_path": pin,
        "args": pod_args(cid),
        "bin_dirs": net_env.bin_dirs,
        "timeout": TIMEOUT,
    }
    result = await cni.add(net_env.network, **common)
    assert net_env.allocations() == [cni.pod_ips(result)[0]]
    await cni.delete(net_env.network, prev_result=result, **common)
    await cni.delete(net_env.network, prev_result=result, **common)
    await netns.remove(pin)
    await cni.delete(net_env.network, prev_result=result, **common)  # netns gone: still fine
    await cni.delete(net_env.network, **common)  # nothing cached either
    net_env.assert_nothing_left(cid, result)


async def test_status_of_the_real_plugins(net_env: NetEnv):
    # STATUS raises when a plugin cannot take pods; ready plugins answer nothing.
    await cni.status(net_env.network, bin_dirs=net_env.bin_dirs, timeout=TIMEOUT)
    conflist = {**net_env.network.conflist, "cniVersion": "1.1.0"}
    newer = NetworkConfig("", net_env.network.name, "1.1.0", conflist)
    # Debian's plugins (1.1.1) predate STATUS: they are not asked, so they count as ready.
    await cni.status(newer, bin_dirs=net_env.bin_dirs, timeout=TIMEOUT)
    missing = {**conflist, "plugins": [*conflist["plugins"], {"type": "no-such-plugin"}]}
    broken = NetworkConfig("", net_env.network.name, "1.1.0", missing)
    with pytest.raises(FailedPrecondition, match="no-such-plugin"):
        await cni.status(broken, bin_dirs=net_env.bin_dirs, timeout=TIMEOUT)


# ---------------------------------------------------------------------------
# Failures: ADD fails, the caller DELs, nothing remains


async def test_failing_plugin_after_the_real_ones(net_env: NetEnv):
    cid = net_env.new_id()
    pin = await netns.create(net_env.pin_dir, cid)
    runtime = cni.port_mappings_config([PortMapping(free_port(), 80)])
    common: dict[str, Any] = {
        "container_id": cid,
        "netns_path": pin,
        "args": pod_args(cid),
        "runtime_config": runtime,
        "bin_dirs": net_env.bin_dirs,
        "timeout": TIMEOUT,
    }
    network = net_env.with_plugins({"type": "ma-fake"})
    with pytest.raises(CniError) as info:
        await cni.add(network, **common)
    assert str(info.value) == (
        "CNI network 'model-agent': plugin ma-fake failed (ADD): quota exceeded: "
        "no more pods today (code 11)"
    )
    assert iptables_mentioning(cid) and net_env.allocations()  # bridge and portmap ran

    await cni.delete(network, **common)  # what the caller does after a failed ADD
    links = (await netns.run_in(pin, ["ip", "-o", "link"], 5)).stdout.decode()
    assert "eth0" not in links
    await netns.remove(pin)
    net_env.assert_nothing_left(cid)


@pytest.mark.slow
async def test_hanging_plugin_is_killed_at_the_timeout(net_env: NetEnv):
    cid = net_env.new_id()
    pin = await netns.create(net_env.pin_dir, cid)
    pidfile = os.path.join(net_env.bin_dir, "hang.pid")
    network = net_env.with_plugins({"type": "ma-fake", "hang": True, "pidfile": pidfile})
    common: dict[str, Any] = {
        "container_id": cid,
        "netns_path": pin,
        "args": pod_args(cid),
        "bin_dirs": net_env.bin_dirs,
    }
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded, match="plugin ma-fake \\(ADD\\) did not finish within"):
        await cni.add(network, timeout=4, **common)
    assert time.monotonic() - started < 7
    with open(pidfile) as f:
        assert not os.path.exists(f"/proc/{f.read().strip()}")

    await cni.delete(network, timeout=TIMEOUT, **common)
    await netns.remove(pin)
    net_env.assert_nothing_left(cid)


async def test_pod_cidr_change_partial_bridge_add_and_reconcile(net_env: NetEnv):
    """A new pod CIDR while a pod holds the old gateway: the bridge plugin fails
    half-way (veth made, address set, then "already has an IP address"), DEL
    must still clean that up (it needs the retry: bridge 1.1 fails its first DEL
    on a masquerade chain it never created), and once the old pod is gone
    ``update_pod_cidr`` moves the bridge to the new gateway.
    """
    old_id, new_id_ = net_env.new_id(), net_env.new_id()
    old_pin = await netns.create(net_env.pin_dir, "old")
    new_pin = await netns.create(net_env.pin_dir, "new")
    base: dict[str, Any] = {"bin_dirs": net_env.bin_dirs, "timeout": TIMEOUT}
    old: dict[str, Any] = {
        "container_id": old_id,
        "netns_path": old_pin,
        "args": pod_args(old_id),
        **base,
    }
    new: dict[str, Any] = {
        "container_id": new_id_,
        "netns_path": new_pin,
        "args": pod_args(new_id_),
        **base,
    }
    old_result = await cni.add(net_env.network, **old)

    subnet2 = free_subnet()
    update: dict[str, Any] = {"bridge": net_env.bridge, "ipam_data_dir": net_env.ipam_dir}
    changed = await default_network.update_pod_cidr(
        net_env.conf_dir, pod_cidr=str(subnet2), **update
    )
    assert changed
    network2 = default_network.write_default_conflist(
        net_env.conf_dir, pod_cidr=str(subnet2), **update
    )
    with pytest.raises(CniError, match="already has an IP address different from"):
        await cni.add(network2, **new)
    await cni.delete(network2, **new)
    assert net_env.bridge_ports() == [host_veth(old_result)]
    links = (await netns.run_in(new_pin, ["ip", "-o", "link"], 5)).stdout.decode()
    assert "eth0" not in links
    assert iptables_mentioning(new_id_) == []
    assert net_env.allocations() == cni.pod_ips(old_result)  # the old pod keeps its address

    await cni.delete(net_env.network, prev_result=old_result, **old)
    assert net_env.bridge_ports() == []
    assert not await default_network.update_pod_cidr(
        net_env.conf_dir, pod_cidr=str(subnet2), **update
    )  # the file was already right; the now idle bridge is reconciled
    result = await cni.add(network2, **new)
    assert ipaddress.ip_address(cni.pod_ips(result)[0]) in subnet2
    assert result.ips[0].gateway == str(subnet2[1])
    await cni.delete(network2, prev_result=result, **new)
    for pin in (old_pin, new_pin):
        await netns.remove(pin)
    net_env.assert_nothing_left(old_id, old_result)
    net_env.assert_nothing_left(new_id_, result)


def host_veth(result: CniResult) -> str:
    """The host-side veth of a bridge result (the interface without a sandbox)."""
    return next(i.name for i in result.interfaces[1:] if not i.sandbox)
