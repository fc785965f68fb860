"""Per-pod directories and the files every container of a pod shares.

    <root_dir>/sandboxes/<id>/   hostname, hosts, resolv.conf, the CNI result
    <state_dir>/sandboxes/<id>/  the pod's /dev/shm (a tmpfs), the infra bundle

resolv.conf comes from the kubelet's DNS config (or the node's own file);
hosts maps localhost and the pod's hostname to its IP (the kubelet usually
mounts its own); a pod on the host network gets the node's files. A pod the
kubelet gave no hostname gets the node's, as with containerd and CRI-O (the
pod's name may be longer than the 64 bytes a hostname can hold).
"""

from __future__ import annotations

import os
import shutil

from agent._util.fs import atomic_write
from agent.pods.model import SandboxConfig
from agent.pods.spec import PodFiles
from agent.pods.state import SandboxRecord

__all__ = ["PodDirs", "pod_hostname"]


def pod_hostname(config: SandboxConfig) -> str:
    """The kubelet's hostname for the pod; the node's on the host network or if none given."""
    if config.security.namespaces.network == "NODE" or not config.hostname:
        return os.uname().nodename
    return config.hostname


class PodDirs:
    def __init__(self, root_dir: str, state_dir: str) -> None:
        self.root = os.path.join(root_dir, "sandboxes")
        self.state = os.path.join(state_dir, "sandboxes")
        os.makedirs(self.root, mode=0o711, exist_ok=True)
        os.makedirs(self.state, mode=0o711, exist_ok=True)  # traversed to /dev/shm (userns)
        os.chmod(self.state, 0o711)

    def persistent(self, sandbox_id: str) -> str:
        return os.path.join(self.root, sandbox_id)

    def volatile(self, sandbox_id: str) -> str:
        return os.path.join(self.state, sandbox_id)

    def shm(self, sandbox_id: str) -> str:
        return os.path.join(self.volatile(sandbox_id), "shm")

    def bundle(self, sandbox_id: str) -> str:
        return os.path.join(self.volatile(sandbox_id), "bundle")

    def files(self, sandbox: SandboxRecord) -> PodFiles:
        base = self.persistent(sandbox.id)
        shared_ipc = sandbox.config.security.namespaces.ipc != "NODE"
        return PodFiles(
            hostname=os.path.join(base, "hostname"),
            hosts=os.path.join(base, "hosts"),
            resolv_conf=os.path.join(base, "resolv.conf"),
            shm=self.shm(sandbox.id) if shared_ipc else "",
            netns=sandbox.netns,
        )

    def create(self, sandbox_id: str) -> None:
        os.makedirs(self.persistent(sandbox_id), mode=0o755)
        os.makedirs(self.bundle(sandbox_id), mode=0o700)
        os.makedirs(self.shm(sandbox_id), mode=0o755)

    def delete(self, sandbox_id: str) -> None:
        shutil.rmtree(self.persistent(sandbox_id), ignore_errors=True)
        shutil.rmtree(self.volatile(sandbox_id), ignore_errors=True)

    def write_files(self, sandbox_id: str, config: SandboxConfig, ips: list[str]) -> None:
        base = self.persistent(sandbox_id)
        host_network = config.security.namespaces.network == "NODE"
        hostname = pod_hostname(config)
        # A pod does not outlive a reboot (it is NOTREADY after one): no fsync needed.
        atomic_write(os.path.join(base, "hostname"), f"{hostname}\n".encode(), durable=False)
        resolv = self._resolv_conf(config).encode()
        atomic_write(os.path.join(base, "resolv.conf"), resolv, durable=False)
        hosts = self._hosts(hostname, ips, host_network)
        atomic_write(os.path.join(base, "hosts"), hosts, durable=False)

    @staticmethod
    def _resolv_conf(config: SandboxConfig) -> str:
        dns = config.dns
        if dns is None or not (dns.servers or dns.searches or dns.options):
            try:
                with open("/etc/resolv.conf") as f:
                    return f.read()
            except OSError:
                return ""
        lines = [f"nameserver {server}" for server in dns.servers]
        if dns.searches:
            lines.append("search " + " ".join(dns.searches))
        if dns.options:
            lines.append("options " + " ".join(dns.options))
        return "\n".join(lines) + "\n"

    @staticmethod
    def _hosts(hostname: str, ips: list[str], host_network: bool) -> bytes:
        if host_network:
            try:
                with open("/etc/hosts", "rb") as f:
                    return f.read()
            except OSError:
                pass
        lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
        lines += [f"{ip}\t{hostname}" for ip in ips]
        return ("\n".join(lines) + "\n").encode()
