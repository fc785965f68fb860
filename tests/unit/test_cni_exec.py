"""The CNI plugin protocol as libcni speaks it, checked against tiny fake plugins.

The fakes are one Python script installed under several names; the conf each
gets on stdin says what to do (``"on": {"ADD": "error"}``) and where to log the
environment and stdin it saw, so each test reads back exactly what a plugin got.
Nothing here touches the host network: ``/proc/self/ns/net`` stands in for a
pod namespace, and the fakes never enter it.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import time

import pytest

from agent.config import load
from agent.errors import (
    AgentError,
    ConfigError,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unimplemented,
)
from agent.network import cni, default_network, netns
from agent.network.cni import CniError, CniInterface, CniIP, CniResult, PortMapping
from agent.network.cni_config import NetworkConfig

HOST_NS = "/proc/self/ns/net"

FAKE_PLUGIN = """#!{python}
import json, os, sys, time
SUPPORTED = {supported!r}
command = os.environ.get("CNI_COMMAND", "")
raw = sys.stdin.read()
conf = json.loads(raw) if raw.strip() else {{}}
if command == "VERSION":
    print(json.dumps({{"cniVersion": "1.0.0", "supportedVersions": SUPPORTED}}))
    sys.exit(0)
name = os.path.basename(sys.argv[0])
if conf.get("log"):
    env = {{k: v for k, v in os.environ.items() if k.startswith("CNI_")}}
    with open(conf["log"], "a") as f:
        record = {{"plugin": name, "command": command, "env": env, "stdin": conf}}
        f.write(json.dumps(record) + "\\n")
how = conf.get("on", {{}}).get(command, "ok")
error = {{"cniVersion": conf.get("cniVersion"), "code": 7, "msg": name + " refuses",
         "details": "by design"}}
if how == "error":
    print(json.dumps(error))
    sys.exit(1)
if how == "error-exit0":
    print(json.dumps(error))
    sys.exit(0)
if how == "stderr":
    sys.stderr.write("something broke\\n")
    sys.exit(2)
if how == "garbage":
    print("this is not json")
    sys.exit(0)
if how == "unavailable":
    print(json.dumps({{"code": 50, "msg": "daemon down"}}))
    sys.exit(1)
if how == "hang":
    with open(conf["pidfile"], "w") as f:
        f.write(str(os.getpid()))
    time.sleep(60)
if command == "ADD":
    result = dict(conf.get("prevResult") or {{"cniVersion": conf["cniVersion"]}})
    if conf.get("address"):
        interfaces = list(result.get("interfaces", []))
        interfaces.append({{"name": os.environ["CNI_IFNAME"], "sandbox": os.environ["CNI_NETNS"]}})
        ips = list(result.get("ips", []))
        ips.append({{"address": conf["address"], "interface": len(interfaces) - 1}})
        result.update(interfaces=interfaces, ips=ips)
    print(json.dumps(result))
"""


def install(bin_dir, name, supported=("0.3.1", "0.4.0", "1.0.0")):
    path = bin_dir / name
    path.write_text(FAKE_PLUGIN.format(python=sys.executable, supported=list(supported)))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


@pytest.fixture
def bins(tmp_path):
    directory = tmp_path / "bin"
    directory.mkdir()
    for name in ("fake-a", "fake-b", "fake-c"):
        install(directory, name)
    install(directory, "fake-new", supported=("1.0.0", "1.1.0"))
    return directory


@pytest.fixture
def log_path(tmp_path):
    return tmp_path / "calls.jsonl"


def calls(log_path):
    if not log_path.exists():
        return []
    return [json.loads(line) for line in log_path.read_text().splitlines()]


def network(log_path, *plugins, version="1.0.0", name="testnet", **extra):
    conflist = {
        "cniVersion": version,
        "name": name,
        "plugins": [{"log": str(log_path), **p} for p in plugins],
        **extra,
    }
    return NetworkConfig(path="", name=name, cni_version=version, conflist=conflist)


def kwargs(bins, **more):
    values = {
        "container_id": "c0ffee",
        "netns_path": HOST_NS,
        "bin_dirs": [str(bins)],
        "timeout": 10,
    }
    values.update(more)
    return values


# ---------------------------------------------------------------------------
# stdin building


def test_plugin_config_injects_name_version_and_prev_result():
    plugin = {"type": "bridge", "bridge": "br0"}
    conf = cni.plugin_config(plugin, name="net", cni_version="1.0.0", prev_result={"ips": []})
    assert conf == {
        "type": "bridge",
        "bridge": "br0",
        "name": "net",
        "cniVersion": "1.0.0",
        "prevResult": {"ips": []},
    }
    assert plugin == {"type": "bridge", "bridge": "br0"}  # the conflist is not mutated


def test_runtime_config_is_filtered_by_declared_capabilities():
    runtime = {"portMappings": [{"hostPort": 80}], "bandwidth": {"ingressRate": 1}, "mac": "x"}
    conf = cni.plugin_config(
        {"type": "portmap", "capabilities": {"portMappings": True, "mac": False}},
        name="n",
        cni_version="1.0.0",
        runtime_config=runtime,
    )
    assert conf["runtimeConfig"] == {"portMappings": [{"hostPort": 80}]}
    bare = cni.plugin_config(
        {"type": "bridge"}, name="n", cni_version="1.0.0", runtime_config=runtime
    )
    assert "runtimeConfig" not in bare
    unused = cni.plugin_config(
        {"type": "tuning", "capabilities": {"ipRanges": True}},
        name="n",
        cni_version="1.0.0",
        runtime_config=runtime,
    )
    assert "runtimeConfig" not in unused


def test_port_mappings_config_keeps_host_ports_only():
    config = cni.port_mappings_config(
        [
            PortMapping(8080, 80, "TCP"),
            PortMapping(0, 9090),
            PortMapping(5353, 53, "UDP", host_ip="127.0.0.1"),
        ]
    )
    assert config == {
        "portMappings": [
            {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
            {"hostPort": 5353, "containerPort": 53, "protocol": "udp", "hostIP": "127.0.0.1"},
        ]
    }
    assert cni.port_mappings_config([PortMapping(0, 80)]) == {}


# ---------------------------------------------------------------------------
# ADD / DEL / CHECK against fake plugins


async def test_add_runs_plugins_in_order_chaining_prev_result(bins, log_path):
    net = network(
        log_path,
        {"type": "fake-a", "address": "10.1.0.5/24"},
        {"type": "fake-b", "capabilities": {"portMappings": True}},
        {"type": "fake-c", "address": "fd00::5/64"},
    )
    runtime = {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]}
    args = {"IgnoreUnknown": "1", "K8S_POD_NAMESPACE": "ns", "K8S_POD_NAME": "web"}
    result = await cni.add(net, **kwargs(bins, ifname="net1", args=args, runtime_config=runtime))
    seen = calls(log_path)
    assert [c["plugin"] for c in seen] == ["fake-a", "fake-b", "fake-c"]
    first, second, third = (c["stdin"] for c in seen)
    assert "prevResult" not in first
    assert second["prevResult"]["ips"] == [{"address": "10.1.0.5/24", "interface": 0}]
    assert third["prevResult"] == second["prevResult"]  # fake-b passed it through
    assert second["runtimeConfig"] == runtime
    assert "runtimeConfig" not in first and "runtimeConfig" not in third
    for conf in (first, second, third):
        assert conf["name"] == "testnet" and conf["cniVersion"] == "1.0.0"
    env = seen[0]["env"]
    assert env == {
        "CNI_COMMAND": "ADD",
        "CNI_CONTAINERID": "c0ffee",
        "CNI_NETNS": HOST_NS,
        "CNI_IFNAME": "net1",
        "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=web",
        "CNI_PATH": str(bins),
    }
    assert [ip.address for ip in result.ips] == ["10.1.0.5/24", "fd00::5/64"]
    assert cni.pod_ips(result) == ["10.1.0.5", "fd00::5"]
    assert result.interfaces[0] == CniInterface(name="net1", sandbox=HOST_NS)


async def test_delete_runs_in_reverse_with_the_cached_result(bins, log_path):
    net = network(
        log_path,
        {"type": "fake-a", "address": "10.1.0.5/24"},
        {"type": "fake-b", "capabilities": {"portMappings": True}},
    )
    runtime = {"portMappings": [{"hostPort": 1, "containerPort": 2, "protocol": "tcp"}]}
    added = await cni.add(net, **kwargs(bins, runtime_config=runtime))
    cached = CniResult.from_json(added.to_json())
    assert cached == added
    log_path.unlink()
    await cni.delete(net, **kwargs(bins, runtime_config=runtime, prev_result=cached))
    seen = calls(log_path)
    assert [(c["plugin"], c["command"]) for c in seen] == [("fake-b", "DEL"), ("fake-a", "DEL")]
    assert all(c["stdin"]["prevResult"] == added.raw for c in seen)
    assert seen[0]["stdin"]["runtimeConfig"] == runtime
    assert seen[0]["env"]["CNI_NETNS"] == HOST_NS


async def test_delete_before_0_4_0_sends_no_prev_result(bins, log_path):
    net = network(log_path, {"type": "fake-a", "address": "10.1.0.5/24"}, version="0.3.1")
    added = await cni.add(net, **kwargs(bins))
    log_path.unlink()
    await cni.delete(net, **kwargs(bins, prev_result=added))
    assert "prevResult" not in calls(log_path)[0]["stdin"]


async def test_delete_with_a_missing_netns_passes_an_empty_one(bins, log_path, tmp_path):
    net = network(log_path, {"type": "fake-a"})
    await cni.delete(net, **kwargs(bins, netns_path=str(tmp_path / "gone")))
    plain = tmp_path / "plain-file"  # a file left where a pin was is no namespace either
    plain.write_text("")
    await cni.delete(net, **kwargs(bins, netns_path=str(plain)))
    assert [c["env"]["CNI_NETNS"] for c in calls(log_path)] == ["", ""]


async def test_delete_runs_every_plugin_and_retries_a_failing_one(bins, log_path):
    net = network(log_path, {"type": "fake-a"}, {"type": "fake-b", "on": {"DEL": "error"}})
    with pytest.raises(CniError, match="plugin fake-b failed \\(DEL\\): fake-b refuses"):
        await cni.delete(net, **kwargs(bins))
    assert [c["plugin"] for c in calls(log_path)] == ["fake-b", "fake-b", "fake-a"]


async def test_delete_reports_every_failure(bins, log_path):
    net = network(
        log_path,
        {"type": "fake-a", "on": {"DEL": "stderr"}},
        {"type": "fake-b", "on": {"DEL": "error"}},
    )
    with pytest.raises(AgentError) as info:
        await cni.delete(net, **kwargs(bins))
    assert "fake-a" in str(info.value) and "fake-b" in str(info.value)


async def test_plugin_error_json_becomes_a_clear_error(bins, log_path):
    net = network(log_path, {"type": "fake-a"}, {"type": "fake-b", "on": {"ADD": "error"}})
    with pytest.raises(CniError) as info:
        await cni.add(net, **kwargs(bins))
    error = info.value
    assert (error.plugin, error.command, error.code) == ("fake-b", "ADD", 7)
    assert (error.msg, error.details) == ("fake-b refuses", "by design")
    assert str(error) == (
        "CNI network 'testnet': plugin fake-b failed (ADD): fake-b refuses: by design (code 7)"
    )


@pytest.mark.parametrize(
    ("how", "expected"),
    [
        ("error-exit0", "fake-a refuses"),  # an error object is an error, whatever the status
        ("stderr", "exited with 2: something broke"),
        ("garbage", "not JSON: this is not json"),
    ],
)
async def test_other_plugin_failures(bins, log_path, how, expected):
    net = network(log_path, {"type": "fake-a", "on": {"ADD": how}})
    with pytest.raises(CniError, match=expected):
        await cni.add(net, **kwargs(bins))


async def test_a_plugin_without_a_result_fails_add(bins, log_path, tmp_path):
    silent = tmp_path / "bin" / "fake-silent"
    silent.write_text("#!/bin/sh\ncat >/dev/null\n")
    silent.chmod(0o755)
    net = network(log_path, {"type": "fake-silent"})
    with pytest.raises(CniError, match="fake-silent failed \\(ADD\\): returned no result"):
        await cni.add(net, **kwargs(bins))


async def test_a_hanging_plugin_is_killed_at_the_timeout(bins, log_path, tmp_path):
    pidfile = tmp_path / "pid"
    net = network(log_path, {"type": "fake-a", "on": {"ADD": "hang"}, "pidfile": str(pidfile)})
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded, match="plugin fake-a \\(ADD\\) did not finish within"):
        await cni.add(net, **kwargs(bins, timeout=1.5))
    assert time.monotonic() - started < 5
    pid = int(pidfile.read_text())
    assert not os.path.exists(f"/proc/{pid}")


async def test_the_timeout_covers_the_whole_call(bins, log_path, tmp_path):
    net = network(
        log_path,
        {"type": "fake-a"},
        {"type": "fake-b", "on": {"ADD": "hang"}, "pidfile": str(tmp_path / "pid")},
    )
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded, match="fake-b"):
        await cni.add(net, **kwargs(bins, timeout=2))
    assert time.monotonic() - started < 4


async def test_missing_plugin_and_missing_netns(bins, log_path, tmp_path):
    with pytest.raises(FailedPrecondition, match="plugin 'nope' not found"):
        await cni.add(network(log_path, {"type": "nope"}), **kwargs(bins))
    with pytest.raises(NotFound, match="does not exist"):
        await cni.add(
            network(log_path, {"type": "fake-a"}), **kwargs(bins, netns_path=str(tmp_path / "x"))
        )


@pytest.mark.parametrize(
    "bad",
    [
        {"container_id": ""},
        {"container_id": "-leading-dash"},
        {"container_id": "has/slash"},
        {"ifname": "much-too-long-name"},
        {"ifname": "a b"},
        {"args": {"K": "a;b"}},
    ],
)
async def test_invalid_attachment_arguments(bins, log_path, bad):
    with pytest.raises(InvalidArgument):
        await cni.add(network(log_path, {"type": "fake-a"}), **kwargs(bins, **bad))
    assert calls(log_path) == []


async def test_check_passes_the_cached_result(bins, log_path):
    net = network(log_path, {"type": "fake-a", "address": "10.1.0.5/24"}, {"type": "fake-b"})
    added = await cni.add(net, **kwargs(bins))
    log_path.unlink()
    await cni.check(net, **kwargs(bins, prev_result=added))
    seen = calls(log_path)
    assert [(c["plugin"], c["command"]) for c in seen] == [("fake-a", "CHECK"), ("fake-b", "CHECK")]
    assert all(c["stdin"]["prevResult"] == added.raw for c in seen)


async def test_check_disabled_or_unsupported(bins, log_path):
    result = CniResult(cni_version="1.0.0")
    disabled = network(log_path, {"type": "fake-a", "on": {"CHECK": "error"}}, disableCheck=True)
    await cni.check(disabled, **kwargs(bins, prev_result=result))
    old = network(log_path, {"type": "fake-a"}, version="0.3.1")
    with pytest.raises(Unimplemented, match="no CHECK"):
        await cni.check(old, **kwargs(bins, prev_result=result))
    assert calls(log_path) == []


async def test_status_only_asks_plugins_that_know_it(bins, log_path):
    await cni.status(network(log_path, {"type": "fake-a"}), bin_dirs=[str(bins)], timeout=10)
    assert calls(log_path) == []  # a 1.0.0 network has no STATUS
    mixed = network(log_path, {"type": "fake-a"}, {"type": "fake-new"}, version="1.1.0")
    await cni.status(mixed, bin_dirs=[str(bins)], timeout=10)
    seen = calls(log_path)
    assert [(c["plugin"], c["command"]) for c in seen] == [("fake-new", "STATUS")]
    assert seen[0]["env"]["CNI_CONTAINERID"] == ""


async def test_status_reports_an_unavailable_plugin(bins, log_path):
    net = network(log_path, {"type": "fake-new", "on": {"STATUS": "unavailable"}}, version="1.1.0")
    with pytest.raises(CniError, match="daemon down \\(code 50\\)"):
        await cni.status(net, bin_dirs=[str(bins)], timeout=10)


# ---------------------------------------------------------------------------
# Results

BRIDGE_RESULT = {
    "cniVersion": "1.0.0",
    "interfaces": [
        {"name": "ma-br0", "mac": "a2:61:1f:82:f3:a6"},
        {"name": "vethd16323c9", "mac": "82:13:a0:a7:a7:17"},
        {"name": "eth0", "mac": "2e:c5:00:f6:43:c5", "sandbox": "/run/model-agent/netns/p"},
    ],
    "ips": [
        {"interface": 2, "address": "10.88.0.2/16", "gateway": "10.88.0.1"},
        {"interface": 1, "address": "169.254.0.9/32"},
        {"interface": 2, "address": "fd00::2/64", "gateway": "fd00::1"},
        {"interface": 2, "address": "10.88.0.3/16"},
    ],
    "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0", "gw": "fd00::1"}],
    "dns": {"nameservers": ["10.96.0.10"], "search": ["svc.cluster.local"]},
}


def test_parse_a_1_0_result():
    result = CniResult.parse(BRIDGE_RESULT)
    assert result.interfaces[2] == CniInterface(
        name="eth0", mac="2e:c5:00:f6:43:c5", sandbox="/run/model-agent/netns/p"
    )
    assert result.ips[0] == CniIP(address="10.88.0.2/16", gateway="10.88.0.1", interface=2)
    assert result.ips[0].ip == "10.88.0.2" and result.ips[2].version == 6
    assert [r.dst for r in result.routes] == ["0.0.0.0/0", "::/0"]
    assert result.routes[1].gw == "fd00::1"
    assert result.dns.nameservers == ("10.96.0.10",)
    assert result.dns.search == ("svc.cluster.local",)
    assert json.loads(result.to_json()) == BRIDGE_RESULT


def test_pod_ips_ipv4_first_without_prefix_and_host_side_addresses():
    result = CniResult.parse(BRIDGE_RESULT)
    assert cni.pod_ips(result) == ["10.88.0.2", "10.88.0.3", "fd00::2"]
    v6_first = CniResult.parse(
        {"cniVersion": "1.0.0", "ips": [{"address": "fd00::7/64"}, {"address": "10.0.0.7/8"}]}
    )
    assert cni.pod_ips(v6_first) == ["10.0.0.7", "fd00::7"]
    host_only = CniResult.parse(
        {"interfaces": [{"name": "veth0"}], "ips": [{"address": "10.0.0.7/8", "interface": 0}]}
    )
    assert cni.pod_ips(host_only) == ["10.0.0.7"]  # better than nothing


def test_parse_a_legacy_0_2_0_result():
    result = CniResult.parse(
        {
            "cniVersion": "0.2.0",
            "ip4": {"ip": "10.1.0.4/24", "gateway": "10.1.0.1", "routes": [{"dst": "0.0.0.0/0"}]},
            "ip6": {"ip": "fd00::4/64"},
        }
    )
    assert cni.pod_ips(result) == ["10.1.0.4", "fd00::4"]
    assert result.ips[0].gateway == "10.1.0.1"
    assert result.routes[0].dst == "0.0.0.0/0"


@pytest.mark.parametrize(
    "raw",
    [
        {"ips": [{"address": "not-an-ip"}]},
        {"ips": [{"gateway": "10.0.0.1"}]},
        {"ips": "10.0.0.1"},
        {"interfaces": [1, 2]},
    ],
)
def test_parse_rejects_malformed_results(raw):
    with pytest.raises(ValueError):  # noqa: PT011 - the reason varies; the type is the contract
        CniResult.parse(raw)


def test_from_json_of_a_corrupt_cache_is_an_agent_error():
    with pytest.raises(AgentError, match="cached CNI result is unreadable"):
        CniResult.from_json("{truncated")
    with pytest.raises(AgentError, match="cached CNI result is unreadable"):
        CniResult.from_json("[]")


# ---------------------------------------------------------------------------
# netns counters parsing

PROC_NET_DEV = """\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     280       4    0    0    0     0          0         0      280       4    0    0    0     0       0          0
  eth0:    1866      19    1    2    0     0          0         0      906      11    3    4    0     0       0          0
"""  # noqa: E501


def test_parse_proc_net_dev_skips_lo():
    counters = netns.parse_proc_net_dev(PROC_NET_DEV)
    assert list(counters) == ["eth0"]
    eth0 = counters["eth0"]
    assert (eth0.rx_bytes, eth0.rx_packets, eth0.rx_errors, eth0.rx_dropped) == (1866, 19, 1, 2)
    assert (eth0.tx_bytes, eth0.tx_packets, eth0.tx_errors, eth0.tx_dropped) == (906, 11, 3, 4)


def test_exists_asks_the_kernel(tmp_path):
    assert netns.exists("/proc/self/ns/net")
    assert not netns.exists("/proc/self/ns/uts")  # an nsfs file, but not a network namespace
    plain = tmp_path / "f"
    plain.write_text("")
    assert not netns.exists(str(plain))
    assert not netns.exists(str(tmp_path / "missing"))


# ---------------------------------------------------------------------------
# The default network and its config keys


def test_default_conflist_dual_stack():
    conflist = default_network.default_conflist(
        pod_cidr="fd00:88::/64,10.88.0.0/16", bridge="ma-br0", ipam_data_dir="/var/lib/ma/ipam"
    )
    bridge, portmap = conflist["plugins"]
    assert conflist["name"] == "model-agent" and conflist["cniVersion"] == "1.0.0"
    assert bridge["type"] == "bridge" and bridge["bridge"] == "ma-br0"
    assert bridge["isGateway"] and bridge["ipMasq"] and bridge["hairpinMode"]
    assert bridge["ipam"] == {
        "type": "host-local",
        "ranges": [[{"subnet": "10.88.0.0/16"}], [{"subnet": "fd00:88::/64"}]],
        "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}],
        "dataDir": "/var/lib/ma/ipam",
    }
    assert portmap == {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True}


@pytest.mark.parametrize(
    ("cidr", "why"),
    [
        ("10.88.0.0/31", "too small"),
        ("10.88.0.1/16", "host bits"),
        ("10.88.0.0/16,10.89.0.0/16", "more than one IPv4"),
        ("banana", "does not appear to be"),
    ],
)
def test_bad_pod_cidrs(cidr, why):
    with pytest.raises(InvalidArgument, match=why):
        default_network.parse_pod_cidrs(cidr)


async def test_write_and_update_default_conflist(tmp_path):
    conf_dir = str(tmp_path / "net.d")
    written = default_network.write_default_conflist(
        conf_dir, pod_cidr="10.88.0.0/16", bridge="mt-none0", ipam_data_dir="/x"
    )
    path = os.path.join(conf_dir, "10-model-agent.conflist")
    assert written.path == path
    with open(path) as f:
        assert json.load(f) == written.conflist
    os.utime(path, (0, 0))
    default_network.write_default_conflist(
        conf_dir, pod_cidr="10.88.0.0/16", bridge="mt-none0", ipam_data_dir="/x"
    )
    assert os.stat(path).st_mtime == 0  # identical content is not rewritten
    assert not await default_network.update_pod_cidr(
        conf_dir, pod_cidr="10.88.0.0/16", bridge="mt-none0", ipam_data_dir="/x"
    )
    assert await default_network.update_pod_cidr(
        conf_dir, pod_cidr="10.99.0.0/16", bridge="mt-none0", ipam_data_dir="/x"
    )
    with open(path) as f:
        ranges = json.load(f)["plugins"][0]["ipam"]["ranges"]
    assert ranges == [[{"subnet": "10.99.0.0/16"}]]
    assert [p for p in os.listdir(conf_dir) if p != "10-model-agent.conflist"] == []


def test_loopback_network():
    lo = default_network.loopback_network()
    assert lo.plugin_types == ["loopback"]
    assert lo.conflist["name"] == lo.name and lo.conflist["cniVersion"] == lo.cni_version


def test_network_config_keys(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[network]\nbridge = "br-x"\npod_cidr = "10.1.0.0/16,fd00::/64"\n')
    config = load(str(path), environ={})
    assert config.network.bridge == "br-x"
    assert config.network.cni_timeout_seconds > 0
    for bad in (
        'bridge = "a-name-that-is-too-long"',
        'bridge = "has space"',
        'bridge = ""',
        "cni_timeout_seconds = 0",
        'pod_cidr = "10.1.0.0/16,10.2.0.0/16"',
    ):
        path.write_text(f"[network]\n{bad}\n")
        with pytest.raises(ConfigError, match="network\\."):
            load(str(path), environ={})
