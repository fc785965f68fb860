"""Linux capabilities of a container: containerd's default set, ``add``/``drop`` with
``ALL`` on either side, and what ``privileged`` grants (what the agent holds)."""

from __future__ import annotations

from agent.errors import InvalidArgument
from agent.pods.model import Capabilities

__all__ = ["DEFAULT_CAPABILITIES", "all_capabilities", "cap_name", "effective_capabilities"]

#: containerd's default set (pkg/oci/spec.go defaultUnixCaps).
DEFAULT_CAPABILITIES = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
)


_CAPABILITY_NAMES = (
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
)


def all_capabilities() -> list[str]:
    """Every capability the agent itself holds: what ``privileged`` and ``ALL`` grant.

    Like containerd's ``WithAllCurrentCapabilities``: asking runc for one the
    agent lacks (root without CAP_SYS_RESOURCE, say) would fail the container.
    """
    try:
        with open("/proc/self/status") as f:
            mask = next(int(line.split()[1], 16) for line in f if line.startswith("CapBnd:"))
    except (OSError, ValueError, StopIteration):
        mask = (1 << len(_CAPABILITY_NAMES)) - 1
    return [f"CAP_{name}" for bit, name in enumerate(_CAPABILITY_NAMES) if mask >> bit & 1]


def cap_name(name: str) -> str:
    upper = name.upper()
    return upper if upper.startswith("CAP_") else f"CAP_{upper}"


def effective_capabilities(caps: Capabilities, *, privileged: bool) -> list[str]:
    """Default set, plus ``add``, minus ``drop``; ``ALL`` works on either side (as containerd)."""
    everything = all_capabilities()
    if privileged:
        return everything
    adds = [cap_name(c) for c in caps.add]
    drops = [cap_name(c) for c in caps.drop]
    for name in (*adds, *drops):
        if name != "CAP_ALL" and name not in everything and name not in _known():
            raise InvalidArgument(f"unknown capability '{name}'")
    result = list(DEFAULT_CAPABILITIES)
    if "CAP_ALL" in adds:
        result = list(everything)
    for name in adds:
        if name != "CAP_ALL" and name not in result:
            result.append(name)
    if "CAP_ALL" in drops:
        # Drop everything except what was explicitly added (containerd's rule).
        result = [c for c in result if c in adds and c != "CAP_ALL"]
    result = [c for c in result if c not in drops]
    return result


def _known() -> set[str]:
    return {f"CAP_{n}" for n in _CAPABILITY_NAMES}
