"""The CNI verbs as libcni runs them: ADD, DEL, CHECK and STATUS over a conflist.

A network is a conflist (``cni_config.NetworkConfig``); each plugin runs
through ``cni_exec``:

* ADD runs the plugins in order, each getting the previous one's result;
  the last result is the attachment's result, which the caller persists
  (``CniResult.to_json``) because DEL and CHECK need it back;
* DEL runs them in reverse with the cached ADD result; it is idempotent and
  safe after a partial or failed ADD, and a namespace that is gone is fine;
  each plugin gets its own timeout and a failure does not stop the others,
  so IPAM is always released;
* CHECK and STATUS (CNI 1.1; "not supported" counts as healthy) as in the spec.

Nothing here knows about pods or CRI types.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from agent.errors import AgentError, NotFound, Unimplemented
from agent.network import netns
from agent.network.cni_config import NetworkConfig, find_plugin
from agent.network.cni_exec import (
    INCOMPATIBLE_VERSION,
    INVALID_ENVIRONMENT,
    CniError,
    PluginVersion,
    PortMapping,
    check_attachment,
    invoke,
    plugin_config,
    plugin_version,
    plugins_of,
    port_mappings_config,
    start_call,
    version_tuple,
)
from agent.network.cni_result import CniDNS, CniInterface, CniIP, CniResult, CniRoute, pod_ips

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
    check_attachment(container_id, ifname)
    if not netns.exists(netns_path):
        raise NotFound(f"network namespace {netns_path} does not exist")
    call = start_call(
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
    for plugin in plugins_of(network):
        conf = plugin_config(
            plugin,
            name=network.name,
            cni_version=network.cni_version,
            prev_result=result,
            runtime_config=runtime_config,
        )
        result = await invoke(call, plugin, conf)
        if not isinstance(result, Mapping):
            raise CniError(network.name, str(plugin.get("type")), "ADD", "returned no result")
    try:
        return CniResult.parse(result)
    except ValueError as exc:
        last = str(plugins_of(network)[-1].get("type"))
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
    check_attachment(container_id, ifname)
    live = netns_path if netns_path and netns.exists(netns_path) else ""
    call = start_call(
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
    if version_tuple(network.cni_version) < (0, 4, 0):
        cached = None
    failures: list[AgentError] = []
    for plugin in reversed(plugins_of(network)):
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
                await invoke(call, plugin, conf)
            except CniError as exc:
                log.debug("CNI DEL %s: %s; trying once more", network.name, exc)
                await invoke(call, plugin, conf)
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
    check_attachment(container_id, ifname)
    if network.conflist.get("disableCheck") is True:
        return
    if version_tuple(network.cni_version) < (0, 4, 0):
        raise Unimplemented(
            f"CNI network '{network.name}' uses spec {network.cni_version or '0.1.0'}, "
            "which has no CHECK"
        )
    if not netns.exists(netns_path):
        raise NotFound(f"network namespace {netns_path} does not exist")
    call = start_call(
        network,
        "CHECK",
        container_id=container_id,
        netns_path=netns_path,
        ifname=ifname,
        args=args,
        bin_dirs=bin_dirs,
        timeout=timeout,
    )
    for plugin in plugins_of(network):
        conf = plugin_config(
            plugin,
            name=network.name,
            cni_version=network.cni_version,
            prev_result=prev_result.raw,
            runtime_config=runtime_config,
        )
        await invoke(call, plugin, conf)


async def status(network: NetworkConfig, *, bin_dirs: Sequence[str], timeout: float) -> None:
    """CNI 1.1 STATUS: raise ``CniError`` when a plugin says it cannot take pods.

    Like libcni, networks older than 1.1.0 are not asked. A plugin whose
    VERSION lists no spec from 1.1.0 on does not know STATUS (old plugins
    answer it with a misleading "missing containerID") and counts as ready.
    """
    if version_tuple(network.cni_version) < (1, 1, 0):
        return
    call = start_call(network, "STATUS", bin_dirs=bin_dirs, timeout=timeout)
    for plugin in plugins_of(network):
        plugin_type = str(plugin.get("type", ""))
        path = find_plugin(plugin_type, list(bin_dirs))
        if path is not None:
            supported = (await plugin_version(path)).supported
            if all(version_tuple(v) < (1, 1, 0) for v in supported):
                log.debug("CNI STATUS %s: %s predates STATUS", network.name, plugin_type)
                continue
        conf = plugin_config(plugin, name=network.name, cni_version=network.cni_version)
        try:
            await invoke(call, plugin, conf)
        except CniError as exc:
            if exc.code == INCOMPATIBLE_VERSION or (
                exc.code == INVALID_ENVIRONMENT and "CNI_COMMAND" in exc.msg
            ):
                log.debug("CNI STATUS %s: %s does not support STATUS", network.name, plugin_type)
                continue
            raise
