"""Run CNI plugins the way libcni does: ADD, DEL, CHECK, STATUS and VERSION.

A network is a conflist (``cni_config.NetworkConfig``). Each call runs its
plugins one after another with the standard environment (``CNI_COMMAND``,
``CNI_CONTAINERID``, ``CNI_NETNS``, ``CNI_IFNAME``, ``CNI_ARGS``, ``CNI_PATH``)
and, on stdin, the plugin's own config plus ``name``, ``cniVersion``,
``prevResult`` and the ``runtimeConfig`` entries of the capabilities the
plugin declares:

* ADD runs the plugins in order, each getting the previous one's result;
  the last result is the attachment's result, which the caller persists
  (``CniResult.to_json``) because DEL and CHECK need it back;
* DEL runs them in reverse with the cached ADD result; it is idempotent and
  safe after a partial or failed ADD, and a namespace that is gone is fine;
* CHECK and STATUS (CNI 1.1; "not supported" counts as healthy) as in the spec.

Plugin failures become ``CniError`` naming the network, plugin and command;
one ``timeout`` bounds a whole call, and a plugin still running when it ends
is killed (``DeadlineExceeded``). Nothing here knows about pods or CRI types.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from agent._util.proc import run
from agent.errors import (
    AgentError,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unimplemented,
)
from agent.network import netns
from agent.network.cni_config import NetworkConfig, find_plugin

__all__ = [
    "CniDNS",
    "CniError",
    "CniIP",
    "CniInterface",
    "CniResult",
    "CniRoute",
    "PluginVersion",
    "PortMapping",
    "add",
    "check",
    "delete",
    "plugin_config",
    "plugin_version",
    "pod_ips",
    "port_mappings_config",
    "status",
]

log = logging.getLogger(__name__)

_VERSION_TIMEOUT = 5.0
#: CNI error codes (spec "Error codes") that mean "this plugin cannot do that command".
_INCOMPATIBLE_VERSION = 1
_INVALID_ENVIRONMENT = 4
_CONTAINER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: How much unparsable plugin output goes into an error message.
_OUTPUT_TAIL = 500


class CniError(AgentError):
    """A CNI plugin failed: exited non-zero or answered a CNI error object."""

    def __init__(
        self,
        network: str,
        plugin: str,
        command: str,
        msg: str,
        *,
        code: int | None = None,
        details: str = "",
    ) -> None:
        self.network = network
        self.plugin = plugin
        self.command = command
        self.code = code
        self.msg = msg
        self.details = details
        text = f"CNI network '{network}': plugin {plugin} failed ({command}): {msg}"
        if details:
            text += f": {details}"
        if code is not None:
            text += f" (code {code})"
        super().__init__(text)


# ---------------------------------------------------------------------------
# Results


@dataclass(frozen=True, slots=True)
class CniInterface:
    name: str
    mac: str = ""
    #: the netns path for an interface inside the pod; empty for host interfaces
    sandbox: str = ""


@dataclass(frozen=True, slots=True)
class CniIP:
    #: with prefix length: ``10.88.0.5/16``
    address: str
    gateway: str = ""
    #: index into ``CniResult.interfaces``; None when the plugin did not say
    interface: int | None = None

    @property
    def ip(self) -> str:
        """The address without its prefix length."""
        return str(ipaddress.ip_interface(self.address).ip)

    @property
    def version(self) -> int:
        return ipaddress.ip_interface(self.address).version


@dataclass(frozen=True, slots=True)
class CniRoute:
    dst: str
    gw: str = ""


@dataclass(frozen=True, slots=True)
class CniDNS:
    nameservers: tuple[str, ...] = ()
    domain: str = ""
    search: tuple[str, ...] = ()
    options: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class CniResult:
    """What ADD produced; ``raw`` is the plugin's JSON, cached for DEL and CHECK."""

    cni_version: str
    interfaces: tuple[CniInterface, ...] = ()
    ips: tuple[CniIP, ...] = ()
    routes: tuple[CniRoute, ...] = ()
    dns: CniDNS = field(default_factory=CniDNS)
    raw: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> CniResult:
        """Read a result of any spec version (0.1.0 ``ip4``/``ip6`` through 1.x)."""
        if not isinstance(raw, Mapping):
            raise ValueError("a CNI result must be a JSON object")
        interfaces = tuple(
            CniInterface(
                name=str(i.get("name", "")),
                mac=str(i.get("mac", "")),
                sandbox=str(i.get("sandbox", "")),
            )
            for i in _objects(raw.get("interfaces"), "interfaces")
        )
        ips: list[CniIP] = []
        routes = [_route(r) for r in _objects(raw.get("routes"), "routes")]
        for ip in _objects(raw.get("ips"), "ips"):
            index = ip.get("interface")
            ips.append(
                CniIP(
                    address=_address(ip.get("address")),
                    gateway=str(ip.get("gateway") or ""),
                    interface=index if isinstance(index, int) and index >= 0 else None,
                )
            )
        for legacy in ("ip4", "ip6"):  # spec 0.1.0/0.2.0
            config = raw.get(legacy)
            if isinstance(config, Mapping):
                ips.append(
                    CniIP(
                        address=_address(config.get("ip")), gateway=str(config.get("gateway") or "")
                    )
                )
                routes.extend(_route(r) for r in _objects(config.get("routes"), "routes"))
        dns_value = raw.get("dns")
        dns: Mapping[str, Any] = dns_value if isinstance(dns_value, Mapping) else {}
        return cls(
            cni_version=str(raw.get("cniVersion", "")),
            interfaces=interfaces,
            ips=tuple(ips),
            routes=tuple(routes),
            dns=CniDNS(
                nameservers=tuple(str(s) for s in dns.get("nameservers") or ()),
                domain=str(dns.get("domain") or ""),
                search=tuple(str(s) for s in dns.get("search") or ()),
                options=tuple(str(s) for s in dns.get("options") or ()),
            ),
            raw=dict(raw),
        )

    def to_json(self) -> str:
        """The result as the plugin wrote it; ``from_json`` reads it back."""
        return json.dumps(self.raw, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> CniResult:
        try:
            return cls.parse(json.loads(text))
        except (ValueError, TypeError) as exc:
            raise AgentError(f"cached CNI result is unreadable: {exc}") from None


def _objects(value: Any, what: str) -> list[Mapping[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
        raise ValueError(f"'{what}' is not a list of objects")
    return value


def _address(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"IP address {value!r} is not a string")
    ipaddress.ip_interface(value)  # raises ValueError with the reason
    return value


def _route(value: Mapping[str, Any]) -> CniRoute:
    return CniRoute(dst=str(value.get("dst", "")), gw=str(value.get("gw") or ""))


def pod_ips(result: CniResult) -> list[str]:
    """The pod's addresses for PodSandboxStatus: IPv4 first, then IPv6, no prefix.

    Addresses a plugin put on a host-side interface (one without a sandbox)
    are left out, as containerd does, unless that would leave none.
    """
    in_pod = [
        ip
        for ip in result.ips
        if ip.interface is None
        or (ip.interface < len(result.interfaces) and result.interfaces[ip.interface].sandbox)
    ]
    chosen = in_pod or list(result.ips)
    ordered = [ip.ip for ip in chosen if ip.version == 4] + [
        ip.ip for ip in chosen if ip.version == 6
    ]
    return list(dict.fromkeys(ordered))


# ---------------------------------------------------------------------------
# Runtime config (capability arguments)


@dataclass(frozen=True, slots=True)
class PortMapping:
    """A hostPort; becomes one entry of the ``portMappings`` capability."""

    host_port: int
    container_port: int
    protocol: str = "tcp"
    host_ip: str = ""


def port_mappings_config(mappings: Sequence[PortMapping]) -> dict[str, Any]:
    """``runtime_config`` entries for port mappings (those with a host port only)."""
    entries = []
    for m in mappings:
        if m.host_port <= 0:
            continue  # a containerPort without hostPort is informational only
        entry: dict[str, Any] = {
            "hostPort": m.host_port,
            "containerPort": m.container_port,
            "protocol": m.protocol.lower(),
        }
        if m.host_ip:
            entry["hostIP"] = m.host_ip
        entries.append(entry)
    return {"portMappings": entries} if entries else {}


def plugin_config(
    plugin: Mapping[str, Any],
    *,
    name: str,
    cni_version: str,
    prev_result: Mapping[str, Any] | None = None,
    runtime_config: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One plugin's stdin: its conf plus name, version, prevResult, runtimeConfig.

    Only capabilities the plugin declares (``"capabilities": {"x": true}``)
    are passed in ``runtimeConfig``, and the key is left out when none apply,
    exactly as libcni does, so a plugin never sees arguments it did not ask for.
    """
    conf = dict(plugin)
    conf["name"] = name
    conf["cniVersion"] = cni_version
    if prev_result is not None:
        conf["prevResult"] = dict(prev_result)
    capabilities = plugin.get("capabilities")
    if isinstance(capabilities, Mapping) and runtime_config:
        wanted = {k: v for k, v in runtime_config.items() if capabilities.get(k) is True}
        if wanted:
            conf["runtimeConfig"] = wanted
    return conf


# ---------------------------------------------------------------------------
# Invoking plugins


@dataclass(frozen=True, slots=True)
class PluginVersion:
    path: str
    supported: tuple[str, ...]


async def plugin_version(path: str) -> PluginVersion:
    """Ask a plugin which CNI spec versions it supports (``CNI_COMMAND=VERSION``)."""
    env = {"CNI_COMMAND": "VERSION", "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    done = await run([path], timeout=_VERSION_TIMEOUT, input=b'{"cniVersion":"1.0.0"}', env=env)
    try:
        data = json.loads(done.stdout)
        supported = tuple(str(v) for v in data.get("supportedVersions", ()))
    except (json.JSONDecodeError, AttributeError) as exc:
        raise AgentError(f"{path}: VERSION answered something that is not CNI JSON") from exc
    return PluginVersion(path, supported)


@dataclass(frozen=True, slots=True)
class _Call:
    """What every plugin of one ADD/DEL/CHECK/STATUS call shares."""

    network: NetworkConfig
    command: str
    env: dict[str, str]
    bin_dirs: tuple[str, ...]
    timeout: float
    deadline: float


def _version_tuple(version: str) -> tuple[int, ...]:
    if not version:
        return (0, 1, 0)  # libcni: no cniVersion means 0.1.0
    try:
        return tuple(int(part) for part in version.split("."))
    except ValueError:
        return (0, 0, 0)


def _check_attachment(container_id: str, ifname: str) -> None:
    if not _CONTAINER_ID.fullmatch(container_id):
        raise InvalidArgument(f"CNI container id {container_id!r} is not valid")
    if (
        not ifname
        or len(ifname.encode()) > 15
        or ifname in (".", "..")
        or any(c in ifname for c in "/:")
        or any(c.isspace() for c in ifname)
    ):
        raise InvalidArgument(f"interface name {ifname!r} is not valid")


def _cni_args(args: Mapping[str, str] | None) -> str:
    for key, value in (args or {}).items():
        if not key or any(c in key for c in "=;") or ";" in value:
            raise InvalidArgument(f"CNI argument {key}={value} may not contain ';' or '='")
    return ";".join(f"{k}={v}" for k, v in (args or {}).items())


def _start(
    network: NetworkConfig,
    command: str,
    *,
    container_id: str = "",
    netns_path: str = "",
    ifname: str = "",
    args: Mapping[str, str] | None = None,
    bin_dirs: Sequence[str],
    timeout: float,
) -> _Call:
    # Like libcni, the agent's own environment (PATH above all: plugins run
    # iptables and friends) is passed on; only the CNI_ variables are ours.
    env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
    env.setdefault("PATH", _DEFAULT_PATH)
    env.update(
        CNI_COMMAND=command,
        CNI_CONTAINERID=container_id,
        CNI_NETNS=netns_path,
        CNI_IFNAME=ifname,
        CNI_ARGS=_cni_args(args),
        CNI_PATH=os.pathsep.join(bin_dirs),
    )
    deadline = asyncio.get_running_loop().time() + timeout
    return _Call(network, command, env, tuple(bin_dirs), timeout, deadline)


def _plugins(network: NetworkConfig) -> list[Mapping[str, Any]]:
    plugins = network.conflist.get("plugins")
    if not isinstance(plugins, list) or not plugins:
        raise FailedPrecondition(f"CNI network '{network.name}' has no plugins")
    return plugins


async def _invoke(call: _Call, plugin: Mapping[str, Any], conf: Mapping[str, Any]) -> Any:
    """Run one plugin; its parsed stdout (None when empty)."""
    name = call.network.name
    plugin_type = str(plugin.get("type", ""))
    path = find_plugin(plugin_type, list(call.bin_dirs))
    if path is None:
        raise FailedPrecondition(
            f"CNI network '{name}': plugin '{plugin_type}' not found in {', '.join(call.bin_dirs)}"
        )
    remaining = call.deadline - asyncio.get_running_loop().time()
    if remaining <= 0:
        raise DeadlineExceeded(
            f"CNI network '{name}': no time left for plugin {plugin_type} ({call.command}) "
            f"within the {call.timeout:g}s CNI timeout"
        )
    log.debug("CNI %s %s: running %s", call.command, name, path)
    try:
        done = await run(
            [path],
            timeout=remaining,
            input=json.dumps(conf).encode(),
            env=call.env,
            check=False,
        )
    except DeadlineExceeded:
        raise DeadlineExceeded(
            f"CNI network '{name}': plugin {plugin_type} ({call.command}) did not finish "
            f"within the {call.timeout:g}s CNI timeout and was killed"
        ) from None
    except OSError as exc:
        raise CniError(name, plugin_type, call.command, f"cannot run {path}: {exc}") from None
    output = _json_or_none(done.stdout)
    if done.returncode != 0 or (isinstance(output, Mapping) and "code" in output):
        raise _plugin_error(call, plugin_type, done.returncode, output, done.stdout, done.stderr)
    if output is None and done.stdout.strip():
        raise CniError(
            name,
            plugin_type,
            call.command,
            f"answered something that is not JSON: {_tail(done.stdout)}",
        )
    return output


def _json_or_none(data: bytes) -> Any:
    if not data.strip():
        return None
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def _tail(data: bytes) -> str:
    return data.decode(errors="replace").strip()[-_OUTPUT_TAIL:]


def _plugin_error(
    call: _Call, plugin_type: str, returncode: int, output: Any, stdout: bytes, stderr: bytes
) -> CniError:
    """The spec's error object (``code``, ``msg``, ``details``), else stderr."""
    name = call.network.name
    if isinstance(output, Mapping) and ("code" in output or "msg" in output):
        code = output.get("code")
        return CniError(
            name,
            plugin_type,
            call.command,
            str(output.get("msg") or f"exited with {returncode}"),
            code=code if isinstance(code, int) else None,
            details=str(output.get("details") or ""),
        )
    detail = _tail(stderr) or _tail(stdout) or "no output"
    return CniError(name, plugin_type, call.command, f"exited with {returncode}: {detail}")


# ---------------------------------------------------------------------------
# The commands


async def add(
    network: NetworkConfig,
    *,
    container_id: str,
    netns_path: str,
    ifname: str = "eth0",
    args: Mapping[str, str] | None = None,
    runtime_config: Mapping[str, Any] | None = None,
    bin_dirs: Sequence[str],
    timeout: float,
) -> CniResult:
    """Attach the namespace to ``network``; the result to persist for DEL/CHECK.

    On failure nothing is undone here: like every CRI runtime, the caller
    calls :func:`delete`, which copes with whatever a partial ADD left.
    """
    _check_attachment(container_id, ifname)
    if not netns.exists(netns_path):
        raise NotFound(f"network namespace {netns_path} does not exist")
    call = _start(
        network,
        "ADD",
        container_id=container_id,
        netns_path=netns_path,
        ifname=ifname,
        args=args,
        bin_dirs=bin_dirs,
        timeout=timeout,
    )
    result: Any = None
    for plugin in _plugins(network):
        conf = plugin_config(
            plugin,
            name=network.name,
            cni_version=network.cni_version,
            prev_result=result,
            runtime_config=runtime_config,
        )
        result = await _invoke(call, plugin, conf)
        if not isinstance(result, Mapping):
            raise CniError(network.name, str(plugin.get("type")), "ADD", "returned no result")
    try:
        return CniResult.parse(result)
    except ValueError as exc:
        last = str(_plugins(network)[-1].get("type"))
        raise CniError(network.name, last, "ADD", f"returned an unreadable result: {exc}") from None


async def delete(
    network: NetworkConfig,
    *,
    container_id: str,
    netns_path: str,
    ifname: str = "eth0",
    args: Mapping[str, str] | None = None,
    runtime_config: Mapping[str, Any] | None = None,
    prev_result: CniResult | None = None,
    bin_dirs: Sequence[str],
    timeout: float,
) -> None:
    """Detach: the plugins in reverse order, with the cached ADD result.

    Idempotent and safe after a partial ADD (``prev_result=None``). A
    namespace that no longer exists is passed as an empty ``CNI_NETNS``,
    which the spec allows and plugins answer by releasing what they still
    can. Every plugin runs even when one fails; a failing plugin is tried
    once more first, because DEL is idempotent and the bridge plugin (up to
    1.1) deletes the veth and only then fails on the masquerade chain a
    failed ADD never created: its second DEL finds nothing left to fail on.
    """
    _check_attachment(container_id, ifname)
    live = netns_path if netns_path and netns.exists(netns_path) else ""
    call = _start(
        network,
        "DEL",
        container_id=container_id,
        netns_path=live,
        ifname=ifname,
        args=args,
        bin_dirs=bin_dirs,
        timeout=timeout,
    )
    # libcni hands the cached result to DEL from spec 0.4.0 on.
    cached = prev_result.raw if prev_result is not None else None
    if _version_tuple(network.cni_version) < (0, 4, 0):
        cached = None
    failures: list[AgentError] = []
    for plugin in reversed(_plugins(network)):
        conf = plugin_config(
            plugin,
            name=network.name,
            cni_version=network.cni_version,
            prev_result=cached,
            runtime_config=runtime_config,
        )
        # Each plugin gets the whole timeout: one that hangs must not keep the
        # others (bridge, IPAM) from releasing what they hold.
        call = replace(call, deadline=asyncio.get_running_loop().time() + timeout)
        try:
            try:
                await _invoke(call, plugin, conf)
            except CniError as exc:
                log.debug("CNI DEL %s: %s; trying once more", network.name, exc)
                await _invoke(call, plugin, conf)
        except AgentError as exc:
            failures.append(exc)
    if len(failures) == 1:
        raise failures[0]
    if failures:
        raise AgentError("; ".join(str(f) for f in failures))


async def check(
    network: NetworkConfig,
    *,
    container_id: str,
    netns_path: str,
    ifname: str = "eth0",
    args: Mapping[str, str] | None = None,
    runtime_config: Mapping[str, Any] | None = None,
    prev_result: CniResult,
    bin_dirs: Sequence[str],
    timeout: float,
) -> None:
    """Ask every plugin whether the attachment is still as ADD made it.

    Networks that set ``disableCheck`` pass without running anything; specs
    before 0.4.0 have no CHECK (``Unimplemented``).
    """
    _check_attachment(container_id, ifname)
    if network.conflist.get("disableCheck") is True:
        return
    if _version_tuple(network.cni_version) < (0, 4, 0):
        raise Unimplemented(
            f"CNI network '{network.name}' uses spec {network.cni_version or '0.1.0'}, "
            "which has no CHECK"
        )
    if not netns.exists(netns_path):
        raise NotFound(f"network namespace {netns_path} does not exist")
    call = _start(
        network,
        "CHECK",
        container_id=container_id,
        netns_path=netns_path,
        ifname=ifname,
        args=args,
        bin_dirs=bin_dirs,
        timeout=timeout,
    )
    for plugin in _plugins(network):
        conf = plugin_config(
            plugin,
            name=network.name,
            cni_version=network.cni_version,
            prev_result=prev_result.raw,
            runtime_config=runtime_config,
        )
        await _invoke(call, plugin, conf)


async def status(network: NetworkConfig, *, bin_dirs: Sequence[str], timeout: float) -> None:
    """CNI 1.1 STATUS: raise ``CniError`` when a plugin says it cannot take pods.

    Like libcni, networks older than 1.1.0 are not asked. A plugin whose
    VERSION lists no spec from 1.1.0 on does not know STATUS (old plugins
    answer it with a misleading "missing containerID") and counts as ready.
    """
    if _version_tuple(network.cni_version) < (1, 1, 0):
        return
    call = _start(network, "STATUS", bin_dirs=bin_dirs, timeout=timeout)
    for plugin in _plugins(network):
        plugin_type = str(plugin.get("type", ""))
        path = find_plugin(plugin_type, list(bin_dirs))
        if path is not None:
            supported = (await plugin_version(path)).supported
            if all(_version_tuple(v) < (1, 1, 0) for v in supported):
                log.debug("CNI STATUS %s: %s predates STATUS", network.name, plugin_type)
                continue
        conf = plugin_config(plugin, name=network.name, cni_version=network.cni_version)
        try:
            await _invoke(call, plugin, conf)
        except CniError as exc:
            if exc.code == _INCOMPATIBLE_VERSION or (
                exc.code == _INVALID_ENVIRONMENT and "CNI_COMMAND" in exc.msg
            ):
                log.debug("CNI STATUS %s: %s does not support STATUS", network.name, plugin_type)
                continue
            raise
