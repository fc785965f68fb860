"""A pod's network: its pinned namespace, attached to the CNI network of the node.

The network is the cluster's (first valid config in ``network.cni_conf_dir``)
or the agent's own default bridge network (written at start under the root
dir), as ``network.default_network`` chooses. What ADD used — the conflist and its result — is kept
with the sandbox, so DEL later runs against exactly that, even if the node's
config changed meanwhile (libcni does the same with its cache).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

from agent.config import Config
from agent.errors import AgentError, FailedPrecondition
from agent.network import (
    NetworkConfig,
    cni,
    find_network,
    loopback_network,
    netns,
    network_conf_dirs,
    update_pod_cidr,
    write_default_conflist,
)
from agent.pods.model import SandboxConfig

__all__ = ["Attachment", "PodNetwork"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Attachment:
    netns: str
    network_conf: str  # JSON: {"path", "name", "cniVersion", "conflist"}
    result: str  # the CNI ADD result (JSON)
    ips: tuple[str, ...]


class PodNetwork:
    def __init__(self, config: Config) -> None:
        network = config.network
        self._config = config
        self.pin_dir = os.path.join(config.agent.state_dir, "netns")
        self.own_conf_dir = os.path.join(config.agent.root_dir, "cni", "net.d")
        self.ipam_dir = os.path.join(config.agent.root_dir, "cni", "ipam")
        self.conf_dirs = network_conf_dirs(
            network.default_network, network.cni_conf_dir, self.own_conf_dir
        )
        self.bin_dirs = list(network.cni_bin_dirs)
        self.timeout = network.cni_timeout_seconds

    async def prepare(self) -> None:
        """Make the pin directory usable and write the agent's default network."""
        await netns.prepare_dir(self.pin_dir)
        write_default_conflist(
            self.own_conf_dir,
            pod_cidr=self._config.network.pod_cidr,
            bridge=self._config.network.bridge,
            ipam_data_dir=self.ipam_dir,
        )

    async def update_pod_cidr(self, pod_cidr: str) -> None:
        await update_pod_cidr(
            self.own_conf_dir,
            pod_cidr=pod_cidr,
            bridge=self._config.network.bridge,
            ipam_data_dir=self.ipam_dir,
        )

    def current(self) -> NetworkConfig:
        lookup = find_network(self.conf_dirs, self.bin_dirs)
        if lookup.network is None:
            raise FailedPrecondition(f"network not ready: {lookup.explain(self.conf_dirs)}")
        return lookup.network

    @staticmethod
    def _args(sandbox_id: str, config: SandboxConfig) -> dict[str, str]:
        m = config.metadata
        return {
            "IgnoreUnknown": "1",
            "K8S_POD_NAMESPACE": m.namespace,
            "K8S_POD_NAME": m.name,
            "K8S_POD_INFRA_CONTAINER_ID": sandbox_id,
            "K8S_POD_UID": m.uid,
        }

    def _runtime_config(self, config: SandboxConfig) -> dict[str, object]:
        mappings = [
            cni.PortMapping(p.host_port, p.container_port, p.protocol.lower(), p.host_ip)
            for p in config.port_mappings
        ]
        return cni.port_mappings_config(mappings)

    async def attach(
        self,
        sandbox_id: str,
        config: SandboxConfig,
        prepared: Callable[[str, str], None] = lambda netns_path, network_conf: None,
        *,
        userns: str = "",
    ) -> Attachment:
        """A new namespace attached to the network; undone completely if any step fails.

        ``prepared(netns_path, network_conf)`` runs before CNI ADD, so the caller
        can record what must be detached if the agent dies in the middle. ``userns``:
        the pod's pinned user namespace, which then owns the network namespace.
        """
        network = self.current()
        path = await netns.create(self.pin_dir, sandbox_id, userns=userns)
        network_conf = json.dumps(
            {
                "path": network.path,
                "name": network.name,
                "cniVersion": network.cni_version,
                "conflist": network.conflist,
            }
        )
        try:
            prepared(path, network_conf)
            await cni.add(
                loopback_network(),
                container_id=sandbox_id,
                netns_path=path,
                ifname="lo",
                bin_dirs=self.bin_dirs,
                timeout=self.timeout,
            )
            result = await cni.add(
                network,
                container_id=sandbox_id,
                netns_path=path,
                args=self._args(sandbox_id, config),
                runtime_config=self._runtime_config(config),
                bin_dirs=self.bin_dirs,
                timeout=self.timeout,
            )
        except BaseException:
            with contextlib.suppress(AgentError):
                await self._delete(sandbox_id, config, path, network, None)
            await netns.remove(path)
            raise
        return Attachment(path, network_conf, result.to_json(), tuple(cni.pod_ips(result)))

    async def detach(
        self,
        sandbox_id: str,
        config: SandboxConfig,
        *,
        netns_path: str,
        network_conf: str,
        result: str,
    ) -> None:
        """CNI DEL with what ADD used, then remove the namespace; idempotent."""
        if network_conf:
            doc = json.loads(network_conf)
            network = NetworkConfig(
                path=doc["path"],
                name=doc["name"],
                cni_version=doc["cniVersion"],
                conflist=doc["conflist"],
            )
            previous = cni.CniResult.from_json(result) if result else None
            await self._delete(sandbox_id, config, netns_path, network, previous)
        if netns_path:
            await netns.remove(netns_path)

    async def _delete(
        self,
        sandbox_id: str,
        config: SandboxConfig,
        path: str,
        network: NetworkConfig,
        previous: cni.CniResult | None,
    ) -> None:
        await cni.delete(
            network,
            container_id=sandbox_id,
            netns_path=path,
            args=self._args(sandbox_id, config),
            runtime_config=self._runtime_config(config),
            prev_result=previous,
            bin_dirs=self.bin_dirs,
            timeout=self.timeout,
        )
