"""Is this node able to run pods? The facts behind the CRI ``Status`` RPC.

Two conditions, as the kubelet reads them every few seconds:

* runtime ready: conmon and the default handler's OCI runtime are found and
  answer ``--version`` (the CRI layer adds "still recovering");
* network ready: a usable CNI network config exists (the cluster's, and/or the
  agent's own default network as ``network.default_network`` says).

Each is checked against the host on every call (cheaply; see ``oci.probe``),
so removing runc or the CNI config shows up at the next poll.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

from agent.config import Config
from agent.errors import AgentError
from agent.network import find_network, find_plugin, network_conf_dirs, plugin_version
from agent.oci import BinaryProbe, resolve_binary

__all__ = ["Condition", "HealthReport", "NodeHealth"]


@dataclass(frozen=True, slots=True)
class Condition:
    ready: bool
    reason: str = ""
    message: str = ""


@dataclass(frozen=True, slots=True)
class HealthReport:
    runtime: Condition
    network: Condition
    #: handler name -> binary path, for the handlers whose binary exists
    handlers: dict[str, str]
    #: component -> version text (runc, conmon, CNI plugins), for verbose Status
    versions: dict[str, str] = field(default_factory=dict)
    network_config: str = ""


class NodeHealth:
    def __init__(self, config: Config, own_conf_dir: str) -> None:
        """``own_conf_dir`` holds the agent's default network's conflist."""
        self._config = config
        # The cluster's CNI config dir first (auto): its network wins over our default.
        self._conf_dirs = network_conf_dirs(
            config.network.default_network, config.network.cni_conf_dir, own_conf_dir
        )
        default = config.runtime.handlers[config.runtime.default_handler]
        self._probe = BinaryProbe(
            {config.runtime.default_handler: default.path, "conmon": config.runtime.conmon_path}
        )

    async def check(self, *, verbose: bool = False) -> HealthReport:
        probe = await self._probe.check()
        runtime = Condition(probe.ok, probe.reason, probe.message)
        handlers = {
            name: path
            for name, handler in self._config.runtime.handlers.items()
            if (path := resolve_binary(handler.path)) is not None
        }
        bin_dirs = self._config.network.cni_bin_dirs
        lookup = find_network(self._conf_dirs, bin_dirs)
        versions = dict(probe.versions)
        if lookup.network is None:
            message = lookup.explain(self._conf_dirs)
            if self._config.network.default_network == "never":
                message += " (network.default_network = never: waiting for the cluster's CNI)"
            network = Condition(False, "NetworkPluginNotReady", message)
            return HealthReport(runtime, network, handlers, versions)
        if verbose:
            for plugin_type in lookup.network.plugin_types:
                path = find_plugin(plugin_type, bin_dirs)
                if path is None:  # pragma: no cover - find_network checked it a moment ago
                    continue
                with contextlib.suppress(AgentError, OSError):
                    info = await plugin_version(path)
                    versions[f"cni/{plugin_type}"] = f"{path} (CNI {', '.join(info.supported)})"
        return HealthReport(
            runtime, Condition(True), handlers, versions, network_config=lookup.network.path
        )
