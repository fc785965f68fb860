"""Running one CNI plugin the way libcni does: the standard environment, the plugin's
stdin config, one deadline for the whole call, the spec's error object.

Every call runs its plugins with ``CNI_COMMAND``, ``CNI_CONTAINERID``,
``CNI_NETNS``, ``CNI_IFNAME``, ``CNI_ARGS`` and ``CNI_PATH`` and, on stdin,
the plugin's own config plus ``name``, ``cniVersion``, ``prevResult`` and the
``runtimeConfig`` entries of the capabilities the plugin declares. A failure
becomes ``CniError`` naming the network, plugin and command; a plugin still
running at the deadline is killed (``DeadlineExceeded``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agent._util.proc import run
from agent.errors import AgentError, DeadlineExceeded, FailedPrecondition, InvalidArgument
from agent.network.cni_config import NetworkConfig, find_plugin

__all__ = [
    "INCOMPATIBLE_VERSION",
    "INVALID_ENVIRONMENT",
    "Call",
    "CniError",
    "PluginVersion",
    "PortMapping",
    "check_attachment",
    "invoke",
    "plugin_config",
    "plugin_version",
    "plugins_of",
    "port_mappings_config",
    "start_call",
    "version_tuple",
]

log = logging.getLogger(__name__)

_VERSION_TIMEOUT = 5.0

#: CNI error codes (spec "Error codes") that mean "this plugin cannot do that command".
INCOMPATIBLE_VERSION = 1

INVALID_ENVIRONMENT = 4

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
class Call:
    """What every plugin of one ADD/DEL/CHECK/STATUS call shares."""

    network: NetworkConfig
    command: str
    env: dict[str, str]
    bin_dirs: tuple[str, ...]
    timeout: float
    deadline: float


def version_tuple(version: str) -> tuple[int, ...]:
    if not version:
        return (0, 1, 0)  # libcni: no cniVersion means 0.1.0
    try:
        return tuple(int(part) for part in version.split("."))
    except ValueError:
        return (0, 0, 0)


def check_attachment(container_id: str, ifname: str) -> None:
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


def start_call(
    network: NetworkConfig,
    command: str,
    *,
    container_id: str = "",
    netns_path: str = "",
    ifname: str = "",
    args: Mapping[str, str] | None = None,
    bin_dirs: Sequence[str],
    timeout: float,
) -> Call:
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
    return Call(network, command, env, tuple(bin_dirs), timeout, deadline)


def plugins_of(network: NetworkConfig) -> list[Mapping[str, Any]]:
    plugins = network.conflist.get("plugins")
    if not isinstance(plugins, list) or not plugins:
        raise FailedPrecondition(f"CNI network '{network.name}' has no plugins")
    return plugins


async def invoke(call: Call, plugin: Mapping[str, Any], conf: Mapping[str, Any]) -> Any:
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
    call: Call, plugin_type: str, returncode: int, output: Any, stdout: bytes, stderr: bytes
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
