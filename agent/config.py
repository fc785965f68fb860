"""The agent's configuration: one frozen tree read from TOML, defaults in code.

Precedence, lowest first: the defaults below, the TOML file (default
``/etc/model-agent/config.toml``, optional), ``MODEL_AGENT_*`` environment
variables, command-line flags. Unknown keys and values of the wrong type are
errors that name the key, so a typo never silently falls back to a default.
``model-agent config`` prints the effective tree with :func:`render_toml`.

Each section is a dataclass; a field's ``metadata["doc"]`` is the comment
printed above it, ``metadata["choices"]`` restricts its values. This module
imports nothing from the agent except ``errors``.

It is longer than our ~500-line rule on purpose: every key, its default and
its documentation sit in one file, the one place an operator (and
``model-agent config``) reads them from.

Size: every key of the agent with its default and its documentation, one
dataclass per section; the file ``model-agent config`` prints is this module.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.errors import ConfigError

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "DEFAULT_IGNORED_XIDS",
    "DEFAULT_RESET_XIDS",
    "ENV_OVERRIDES",
    "KUBELET_APIS",
    "AgentSection",
    "Config",
    "GpuDevicePluginSection",
    "GpuDraSection",
    "GpuHealthSection",
    "GpuKubeletSection",
    "GpuSection",
    "GpuSharingSection",
    "ImageSection",
    "MetricsSection",
    "NetworkSection",
    "RegistryHost",
    "RuntimeHandler",
    "RuntimeSection",
    "StreamingSection",
    "load",
    "render_toml",
]

DEFAULT_CONFIG_PATH = "/etc/model-agent/config.toml"

_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")

#: Environment variables that override one key each (flags override them in turn).
ENV_OVERRIDES: Mapping[str, str] = {
    "MODEL_AGENT_SOCKET": "agent.socket",
    "MODEL_AGENT_ROOT_DIR": "agent.root_dir",
    "MODEL_AGENT_STATE_DIR": "agent.state_dir",
    "MODEL_AGENT_LOG_LEVEL": "agent.log_level",
    "MODEL_AGENT_LOG_FORMAT": "agent.log_format",
    "MODEL_AGENT_METRICS_ADDRESS": "metrics.address",
}


def _doc(text: str, **extra: Any) -> dict[str, Any]:
    return {"doc": text, **extra}


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentSection:
    root_dir: str = field(
        default="/var/lib/model-agent",
        metadata=_doc("Persistent state: content store, snapshots, metadata.db."),
    )
    state_dir: str = field(
        default="/run/model-agent",
        metadata=_doc("Volatile state (mode 0700): bundles, exit files, netns pins, the socket."),
    )
    socket: str = field(
        default="",
        metadata=_doc("CRI unix socket; empty means <state_dir>/model-agent.sock."),
    )
    log_level: str = field(
        default="info",
        metadata=_doc("Log level.", choices=("debug", "info", "warning", "error")),
    )
    log_format: str = field(
        default="text",
        metadata=_doc(
            "Log lines as text, or as one JSON object each for log shippers (UTC timestamps "
            "either way).",
            choices=("text", "json"),
        ),
    )
    shutdown_timeout_seconds: float = field(
        default=10.0,
        metadata=_doc("On SIGTERM, how long in-flight RPCs may take to finish."),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricsSection:
    """The ``/metrics`` endpoint: where it listens, who may scrape it, what it collects."""

    address: str = field(
        default="127.0.0.1:9464",
        metadata=_doc("host:port of the Prometheus endpoint (/metrics); empty disables it."),
    )
    tls_cert_file: str = field(
        default="",
        metadata=_doc(
            "PEM certificate (chain) to serve /metrics over HTTPS; with tls_key_file. Re-read "
            "when the file changes."
        ),
    )
    tls_key_file: str = field(default="", metadata=_doc("PEM private key of tls_cert_file."))
    tls_client_ca_file: str = field(
        default="",
        metadata=_doc("PEM CA bundle: when set, scrapers must present a client certificate."),
    )
    bearer_token_file: str = field(
        default="",
        metadata=_doc(
            "File holding the token scrapers send as 'Authorization: Bearer <token>'; empty: "
            "no token auth. Re-read when it changes."
        ),
    )
    basic_auth_username_file: str = field(
        default="",
        metadata=_doc("File holding the basic-auth user name (with basic_auth_password_file)."),
    )
    basic_auth_password_file: str = field(
        default="",
        metadata=_doc("File holding the basic-auth password."),
    )
    min_collect_interval_seconds: float = field(
        default=1.0,
        metadata=_doc(
            "Scrapes closer together than this reuse the previous reading of NVML and the "
            "cgroups (several Prometheus replicas cost one collection)."
        ),
    )
    dcgm_names: bool = field(
        default=True,
        metadata=_doc(
            "Also export GPU metrics under the DCGM-exporter names and labels "
            "(DCGM_FI_DEV_GPU_UTIL, ...)."
        ),
    )
    container_metrics: bool = field(
        default=True,
        metadata=_doc(
            "Export container and pod metrics under the cAdvisor names (container_*); turn "
            "off where Prometheus also scrapes the kubelet's /metrics/cadvisor."
        ),
    )
    hostname: str = field(
        default="",
        metadata=_doc("The Hostname label of GPU metrics; empty: this host's name."),
    )

    def __post_init__(self) -> None:
        files = (
            "tls_cert_file",
            "tls_key_file",
            "tls_client_ca_file",
            "bearer_token_file",
            "basic_auth_username_file",
            "basic_auth_password_file",
        )
        for key in files:
            value = getattr(self, key)
            if value and not os.path.isabs(value):
                raise ConfigError(f"metrics.{key}: '{value}' is not an absolute path")
        for one, other in (
            ("tls_cert_file", "tls_key_file"),
            ("basic_auth_username_file", "basic_auth_password_file"),
        ):
            if bool(getattr(self, one)) != bool(getattr(self, other)):
                raise ConfigError(f"metrics.{one} and metrics.{other}: set both or neither")
        if self.tls_client_ca_file and not self.tls_cert_file:
            raise ConfigError("metrics.tls_client_ca_file: needs tls_cert_file and tls_key_file")
        if self.min_collect_interval_seconds < 0:
            raise ConfigError("metrics.min_collect_interval_seconds: must not be negative")


@dataclass(frozen=True, slots=True, kw_only=True)
class RuntimeHandler:
    path: str = field(metadata=_doc("The OCI runtime binary (a name is looked up in PATH)."))
    root: str = field(
        default="",
        metadata=_doc("The runtime's --root state dir; empty means <state_dir>/<handler>."),
    )


def _default_handlers() -> dict[str, RuntimeHandler]:
    return {"runc": RuntimeHandler(path="runc"), "crun": RuntimeHandler(path="crun")}


@dataclass(frozen=True, slots=True, kw_only=True)
class RuntimeSection:
    default_handler: str = field(
        default="runc",
        metadata=_doc("Handler used when a pod names none (RuntimeClass)."),
    )
    cgroup_driver: str = field(
        default="cgroupfs",
        metadata=_doc(
            "Cgroup driver reported to the kubelet (RuntimeConfig) and used for containers.",
            choices=("cgroupfs", "systemd"),
        ),
    )
    conmon_path: str = field(
        default="conmon", metadata=_doc("The conmon binary (a name is looked up in PATH).")
    )
    default_masked_paths: bool = field(
        default=True,
        metadata=_doc(
            "Give a container whose request lists no masked and no read-only paths the "
            "runtime's defaults (/proc/keys, /proc/sys read-only, ...), as CRI-O does; the "
            "kubelet always sends them, other clients may not."
        ),
    )
    default_cgroup_parent: str = field(
        default="/model-agent",
        metadata=_doc(
            "cgroupfs driver: the cgroup of pods the kubelet gives no cgroup_parent "
            "(containers go below it by id)."
        ),
    )
    infra_binary: str = field(
        default="catatonit",
        metadata=_doc("Statically linked init run as each pod's infra process (with -P)."),
    )
    restrict_oom_score_adj: str = field(
        default="auto",
        metadata=_doc(
            "Raise oom_score_adj requests below the agent's own to it (auto: when the agent "
            "lacks CAP_SYS_RESOURCE).",
            choices=("auto", "true", "false"),
        ),
    )
    handlers: dict[str, RuntimeHandler] = field(
        default_factory=_default_handlers,
        metadata=_doc("OCI runtimes by RuntimeClass handler name."),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class NetworkSection:
    cni_conf_dir: str = field(
        default="/etc/cni/net.d",
        metadata=_doc("The cluster's CNI configs; the first valid one (by file name) is used."),
    )
    cni_bin_dirs: list[str] = field(
        default_factory=lambda: ["/opt/cni/bin", "/usr/lib/cni"],
        metadata=_doc("Where CNI plugin binaries are looked up, in order."),
    )
    default_network: str = field(
        default="auto",
        metadata=_doc(
            "When pods get the agent's own bridge network: auto = when cni_conf_dir has no "
            "usable config; never = never (NetworkReady stays false until the cluster's CNI "
            "writes its config, as with containerd and CRI-O; for kubelet nodes); always = "
            "always, ignoring cni_conf_dir.",
            choices=("auto", "always", "never"),
        ),
    )
    pod_cidr: str = field(
        default="10.217.0.0/16",
        metadata=_doc(
            "Subnet of the agent's own bridge network (dual-stack: 'IPv4-CIDR,IPv6-CIDR'); "
            "chosen away from podman's and containerd's 10.88.0.0/16."
        ),
    )
    bridge: str = field(
        default="ma-br0",
        metadata=_doc("Bridge of the agent's own network (an interface name, 15 chars at most)."),
    )
    cni_timeout_seconds: float = field(
        default=60.0,
        metadata=_doc("How long one CNI ADD/DEL/CHECK (all plugins of a network) may take."),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class RegistryHost:
    mirrors: list[str] = field(
        default_factory=list,
        metadata=_doc("Mirrors tried in order before the registry itself (http[s]://host[:port])."),
    )
    plain_http: bool = field(
        default=False,
        metadata=_doc("Talk plain HTTP to this registry (localhost registries always do)."),
    )
    insecure_skip_verify: bool = field(
        default=False, metadata=_doc("Accept any TLS certificate from this registry.")
    )
    ca_file: str = field(
        default="", metadata=_doc("PEM file of extra CA certificates for this registry.")
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class ImageSection:
    max_concurrent_downloads: int = field(
        default=4, metadata=_doc("HTTP connections one pull uses at most (blobs and blob parts).")
    )
    download_part_mb: int = field(
        default=64,
        metadata=_doc(
            "Blobs larger than this are fetched as parallel Range requests of this size."
        ),
    )
    max_concurrent_unpacks: int = field(
        default=0, metadata=_doc("Layers unpacked at the same time; 0 means one per CPU.")
    )
    pull_progress_timeout_seconds: float = field(
        default=300.0,
        metadata=_doc(
            "A pull that receives no bytes for this long fails (the kubelet sets no deadline)."
        ),
    )
    discard_unpacked_layers: bool = field(
        default=True,
        metadata=_doc("Delete a layer's compressed blob once it is unpacked (halves disk use)."),
    )
    max_layer_unpacked_gb: float = field(
        default=1000.0,
        metadata=_doc(
            "A layer whose uncompressed tar is bigger than this (GB, 10^9 bytes) is refused "
            "(RESOURCE_EXHAUSTED); 0 means no limit."
        ),
    )
    max_layer_entries: int = field(
        default=5_000_000,
        metadata=_doc(
            "A layer with more tar entries (files, dirs, links) than this is refused "
            "(RESOURCE_EXHAUSTED); 0 means no limit."
        ),
    )
    disk_reserve_mb: int = field(
        default=1024,
        metadata=_doc(
            "Free space (MiB) a pull must leave on the image filesystem; a pull that would "
            "go below it stops with RESOURCE_EXHAUSTED and removes what it wrote."
        ),
    )
    credentials_file: str = field(
        default="/etc/model-agent/auth.json",
        metadata=_doc("Node registry credentials in docker config.json form (optional file)."),
    )
    pinned_images: list[str] = field(
        default_factory=list,
        metadata=_doc("Images reported as pinned (the kubelet never garbage-collects them)."),
    )
    registries: dict[str, RegistryHost] = field(
        default_factory=dict,
        metadata=_doc("Per-registry settings, keyed by registry host as in image names."),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamingSection:
    address: str = field(
        default="127.0.0.1:0",
        metadata=_doc("host:port of the exec/attach/port-forward server; port 0 picks a free one."),
    )
    token_ttl_seconds: float = field(
        default=60.0,
        metadata=_doc("A streaming URL not used within this is forgotten (one use only)."),
    )
    stream_creation_timeout_seconds: float = field(
        default=30.0,
        metadata=_doc("A client must send its request and open its streams within this."),
    )
    stream_idle_timeout_seconds: float = field(
        default=14400.0,
        metadata=_doc("A streaming connection that carries nothing for this long is closed."),
    )


#: XIDs an application causes (bad memory access, illegal instruction, a kill, MMU faults on
#: the app's own context, ...): they say nothing about the GPU, so they never mark it unhealthy.
DEFAULT_IGNORED_XIDS = (13, 31, 43, 45, 68, 109)
#: XIDs after which NVIDIA says the GPU needs a reset: it stays unhealthy until one is seen.
DEFAULT_RESET_XIDS = (48, 62, 64, 74, 79, 95, 119, 120)
KUBELET_APIS = ("device-plugin", "dra", "split", "none")


@dataclass(frozen=True, slots=True, kw_only=True)
class GpuKubeletSection:
    dir: str = field(
        default="/var/lib/kubelet",
        metadata=_doc(
            "The kubelet's root directory: plugins_registry/, plugins/ and device-plugins/ "
            "are under it."
        ),
    )
    dra_gpus: list[str] = field(
        default_factory=list,
        metadata=_doc(
            "With gpu.kubelet_api = split: the GPUs (index or UUID) offered through DRA; every "
            "other GPU goes through the device plugin."
        ),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class GpuDraSection:
    driver_name: str = field(
        default="gpu.model-agent.io",
        metadata=_doc(
            "The DRA driver name (ResourceSlices, DeviceClass selectors, the kubelet plugin); "
            "gpu.nvidia.com replaces NVIDIA's driver with the same attribute names."
        ),
    )
    node_name: str = field(
        default="",
        metadata=_doc("This node's Kubernetes name (the ResourceSlice pool); empty: the hostname."),
    )
    kubeconfig: str = field(
        default="",
        metadata=_doc("kubeconfig for the API server; empty: the in-cluster service account."),
    )
    delete_slices_on_stop: bool = field(
        default=False,
        metadata=_doc(
            "Delete this node's ResourceSlices when the agent stops (false: keep them across "
            "restarts and upgrades; after an uninstall the kubelet deletes them once the "
            "plugin's socket has been gone for its 30 s grace period)."
        ),
    )
    retry_max_seconds: float = field(
        default=60.0,
        metadata=_doc("The longest wait between two tries of a failed API server call."),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class GpuDevicePluginSection:
    resource_name: str = field(
        default="nvidia.com/gpu",
        metadata=_doc(
            "Extended resource name of whole GPUs (and of MIG devices with mig_strategy single)."
        ),
    )
    mig_strategy: str = field(
        default="none",
        metadata=_doc(
            "MIG devices: none (GPUs only), single (every GPU's MIG devices as resource_name), "
            "mixed (one nvidia.com/mig-<profile> resource per profile).",
            choices=("none", "single", "mixed"),
        ),
    )
    env_fallback: bool = field(
        default=True,
        metadata=_doc(
            "Allocate also answers NVIDIA_VISIBLE_DEVICES and an allocation token, for kubelets "
            "that do not pass CDI devices on; only the token's devices are honoured."
        ),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class GpuSharingSection:
    replicas: int = field(
        default=1,
        metadata=_doc(
            "Time-slicing: offer each GPU N times (device plugin and DRA). No isolation: the "
            "sharers see each other's memory use and compete for the GPU."
        ),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class GpuHealthSection:
    enabled: bool = field(
        default=True,
        metadata=_doc("Watch NVML events (XID, ECC, GPU lost) and mark GPUs unhealthy."),
    )
    ignored_xids: list[int] = field(
        default_factory=lambda: list(DEFAULT_IGNORED_XIDS),
        metadata=_doc("XIDs an application causes; they never mark a GPU unhealthy."),
    )
    reset_xids: list[int] = field(
        default_factory=lambda: list(DEFAULT_RESET_XIDS),
        metadata=_doc("XIDs after which a GPU stays unhealthy until a reset is seen."),
    )
    recovery_seconds: float = field(
        default=300.0,
        metadata=_doc(
            "A GPU is healthy again after this long with no critical event while NVML answers "
            "for it; 0 never recovers without a restart."
        ),
    )
    check_interval_seconds: float = field(
        default=5.0,
        metadata=_doc("How often NVML is asked whether each GPU still answers."),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class GpuSection:
    """NVIDIA GPUs: the NVML backend, CDI spec dirs, the node's own spec, env policy.

    Checked here (``__post_init__``) so a bad value names its key like the others.
    """

    backend: str = field(
        default="nvml",
        metadata=_doc(
            "Where GPU facts come from: nvml (falls back to none, with a log line, when "
            "there is no NVML library or no GPU), simulated (simulated_file; tests and demos "
            "only) or none.",
            choices=("nvml", "simulated", "none"),
        ),
    )
    simulated_file: str = field(
        default="",
        metadata=_doc("TOML or JSON file describing simulated GPUs (backend = simulated)."),
    )
    cdi_spec_dirs: list[str] = field(
        default_factory=lambda: ["/etc/cdi", "/var/run/cdi"],
        metadata=_doc("CDI spec directories, lowest priority first (a later dir wins a name)."),
    )
    node_spec_dir: str = field(
        default="/var/run/cdi",
        metadata=_doc("Where the agent writes the node's GPU CDI spec; one of cdi_spec_dirs."),
    )
    write_node_spec: bool = field(
        default=True,
        metadata=_doc("Write (and keep current) the node's own CDI spec for its GPUs."),
    )
    cdi_kind: str = field(
        default="nvidia.com/gpu",
        metadata=_doc("vendor/class of the node's CDI devices (<kind>=<index>|<uuid>|all)."),
    )
    driver_root: str = field(
        default="/",
        metadata=_doc("Host directory the NVIDIA driver's libraries and binaries live under."),
    )
    container_driver_root: str = field(
        default="/",
        metadata=_doc(
            "Where driver_root's files appear in containers: <driver_root>/X is mounted at "
            "<container_driver_root>/X."
        ),
    )
    dev_root: str = field(
        default="/",
        metadata=_doc("Host root under which /dev/nvidia* device nodes are found."),
    )
    ld_cache: str = field(
        default="",
        metadata=_doc(
            "The ld.so.cache listing driver libraries; empty: <driver_root>/etc/ld.so.cache, "
            "else the host's /etc/ld.so.cache."
        ),
    )
    library_dirs: list[str] = field(
        default_factory=list,
        metadata=_doc(
            "Directories searched for driver libraries the ld cache lacks; empty: lib64, lib, "
            "and the usual lib dirs under driver_root."
        ),
    )
    ldconfig_path: str = field(
        default="/sbin/ldconfig",
        metadata=_doc("Host ldconfig the container hook runs on the container's root filesystem."),
    )
    hook_command: list[str] = field(
        default_factory=list,
        metadata=_doc(
            "argv prefix of the agent's CDI hook program; empty: this Python with "
            "-m agent.gpu.cdi.hook."
        ),
    )
    proc_root: str = field(
        default="/proc",
        metadata=_doc("Where /proc/devices and /proc/driver/nvidia are read (tests move it)."),
    )
    accept_env: bool = field(
        default=False,
        metadata=_doc(
            "Honour NVIDIA_VISIBLE_DEVICES from the CRI request for any GPU (false: only for "
            "GPUs the agent itself allocated to the container). The image's value never grants."
        ),
    )
    inventory_refresh_seconds: float = field(
        default=30.0,
        metadata=_doc("How often the GPU inventory is re-read (the node spec follows changes)."),
    )
    kubelet_api: str = field(
        default="device-plugin",
        metadata=_doc(
            "How the kubelet gets GPUs: device-plugin (nvidia.com/gpu), dra (ResourceSlices and "
            "claims), split (gpu.kubelet.dra_gpus through DRA, the rest through the device "
            "plugin) or none. A GPU is never offered through both.",
            choices=KUBELET_APIS,
        ),
    )
    kubelet: GpuKubeletSection = field(default_factory=GpuKubeletSection)
    dra: GpuDraSection = field(default_factory=GpuDraSection)
    device_plugin: GpuDevicePluginSection = field(default_factory=GpuDevicePluginSection)
    sharing: GpuSharingSection = field(default_factory=GpuSharingSection)
    health: GpuHealthSection = field(default_factory=GpuHealthSection)

    def __post_init__(self) -> None:
        for key in ("driver_root", "container_driver_root", "dev_root", "proc_root"):
            if not os.path.isabs(getattr(self, key)):
                raise ConfigError(f"gpu.{key}: '{getattr(self, key)}' is not an absolute path")
        for i, directory in enumerate(self.cdi_spec_dirs):
            if not os.path.isabs(directory):
                raise ConfigError(f"gpu.cdi_spec_dirs[{i}]: '{directory}' is not an absolute path")
        if self.write_node_spec and os.path.normpath(self.node_spec_dir) not in {
            os.path.normpath(d) for d in self.cdi_spec_dirs
        }:
            raise ConfigError(
                f"gpu.node_spec_dir: '{self.node_spec_dir}' is not one of gpu.cdi_spec_dirs, "
                "so the agent would not see its own spec"
            )
        vendor, sep, cls = self.cdi_kind.partition("/")
        if not sep or not vendor or not cls or "/" in cls or "=" in self.cdi_kind:
            raise ConfigError(f"gpu.cdi_kind: '{self.cdi_kind}' is not vendor/class")
        if self.backend == "simulated" and not self.simulated_file:
            raise ConfigError("gpu.simulated_file: required when gpu.backend = simulated")
        if self.inventory_refresh_seconds <= 0:
            raise ConfigError("gpu.inventory_refresh_seconds: must be positive")
        self._check_kubelet_plugins()

    def _check_kubelet_plugins(self) -> None:
        if not os.path.isabs(self.kubelet.dir):
            raise ConfigError(f"gpu.kubelet.dir: '{self.kubelet.dir}' is not an absolute path")
        if os.path.realpath(self.kubelet.dir) == "/":
            raise ConfigError("gpu.kubelet.dir: must not be /")
        if self.kubelet.dra_gpus and self.kubelet_api != "split":
            raise ConfigError("gpu.kubelet.dra_gpus: only with gpu.kubelet_api = split")
        driver = self.dra.driver_name
        if not _DNS_SUBDOMAIN.match(driver) or len(driver) > 63:
            raise ConfigError(
                f"gpu.dra.driver_name: '{driver}' is not a DNS subdomain of at most 63 characters"
            )
        if self.dra.node_name and (
            not _DNS_SUBDOMAIN.match(self.dra.node_name) or len(self.dra.node_name) > 253
        ):
            raise ConfigError(f"gpu.dra.node_name: '{self.dra.node_name}' is not a node name")
        if self.dra.retry_max_seconds <= 0:
            raise ConfigError("gpu.dra.retry_max_seconds: must be positive")
        domain, sep, name = self.device_plugin.resource_name.partition("/")
        if not sep or not _DNS_SUBDOMAIN.match(domain) or "kubernetes.io" in domain or not name:
            raise ConfigError(
                f"gpu.device_plugin.resource_name: '{self.device_plugin.resource_name}' is not "
                "an extended resource name (<domain>/<name>, outside kubernetes.io)"
            )
        if not 1 <= self.sharing.replicas <= 64:
            raise ConfigError("gpu.sharing.replicas: must be between 1 and 64")
        health = self.health
        if health.recovery_seconds < 0:
            raise ConfigError("gpu.health.recovery_seconds: must not be negative")
        if health.check_interval_seconds <= 0:
            raise ConfigError("gpu.health.check_interval_seconds: must be positive")
        for key in ("ignored_xids", "reset_xids"):
            if any(x <= 0 for x in getattr(health, key)):
                raise ConfigError(f"gpu.health.{key}: XIDs are positive numbers")


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    agent: AgentSection = field(default_factory=AgentSection)
    metrics: MetricsSection = field(default_factory=MetricsSection)
    runtime: RuntimeSection = field(default_factory=RuntimeSection)
    network: NetworkSection = field(default_factory=NetworkSection)
    image: ImageSection = field(default_factory=ImageSection)
    streaming: StreamingSection = field(default_factory=StreamingSection)
    gpu: GpuSection = field(default_factory=GpuSection)

    @property
    def socket_path(self) -> str:
        return self.agent.socket or os.path.join(self.agent.state_dir, "model-agent.sock")


# ---------------------------------------------------------------------------
# Loading


def load(
    path: str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Build the effective config.

    ``path=None`` reads the default file only if it exists; an explicit path
    must exist. ``overrides`` maps dotted keys (``"agent.socket"``) to values,
    as the CLI flags do.
    """
    raw: dict[str, Any] = {}
    source = path or DEFAULT_CONFIG_PATH
    read_file = path is not None or os.path.exists(source)
    if read_file:
        try:
            with open(source, "rb") as f:
                raw = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(f"config file {source} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {source}: {exc}") from None
        except OSError as exc:
            raise ConfigError(f"config file {source}: {exc.strerror}") from None
    env = os.environ if environ is None else environ
    for var, key in ENV_OVERRIDES.items():
        if var in env:  # set, even empty: MODEL_AGENT_METRICS_ADDRESS="" disables metrics
            _set_dotted(raw, key, env[var])
    for key, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(raw, key, value)
    try:
        config = _build(Config, raw, "")
        _validate(config)
    except ConfigError as exc:
        raise ConfigError(f"config {source}: {exc}" if read_file else f"config: {exc}") from None
    return _resolve_derived(config)


def _resolve_derived(config: Config) -> Config:
    """Fill the values whose default depends on another key, so they print resolved."""
    state_dir = config.agent.state_dir
    agent = dataclasses.replace(
        config.agent, socket=config.agent.socket or os.path.join(state_dir, "model-agent.sock")
    )
    handlers = {
        name: dataclasses.replace(h, root=h.root or os.path.join(state_dir, name))
        for name, h in config.runtime.handlers.items()
    }
    runtime = dataclasses.replace(config.runtime, handlers=handlers)
    return dataclasses.replace(config, agent=agent, runtime=runtime)


def _set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value


def _build(cls: type[Any], raw: Any, where: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where or 'top level'}: expected a table, got {_kind(raw)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            raise ConfigError(f"unknown key '{_join(where, key)}'")
    kwargs = {}
    for name, value in raw.items():
        fld = fields[name]
        coerced = _coerce(hints[name], value, _join(where, name), fld)
        if isinstance(coerced, dict) and callable(fld.default_factory):
            # Tables of named entries extend the defaults (a new runtime handler
            # keeps runc and crun) and may override one by name.
            coerced = {**fld.default_factory(), **coerced}
        kwargs[name] = coerced
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required key of a table is missing
        raise ConfigError(f"{where}: {exc}") from None


def _coerce(hint: Any, value: Any, key: str, fld: dataclasses.Field[Any]) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key)  # type: ignore[arg-type]
    if origin is dict:
        _, item_type = typing.get_args(hint)
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table, got {_kind(value)}")
        return {k: _coerce(item_type, v, f"{key}.{k}", fld) for k, v in value.items()}
    if origin is list:
        (item_type,) = typing.get_args(hint)
        if isinstance(value, str) and item_type is str:
            value = [v for v in value.split(",") if v]  # env and flags give a comma list
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {_kind(value)}")
        return [_coerce(item_type, v, f"{key}[{i}]", fld) for i, v in enumerate(value)]
    if isinstance(hint, types.UnionType):
        raise TypeError(f"unsupported config type {hint}")  # pragma: no cover
    value = _scalar(hint, value, key)
    choices = fld.metadata.get("choices")
    if choices and value not in choices:
        raise ConfigError(f"{key}: '{value}' is not one of {', '.join(choices)}")
    return value


def _scalar(hint: Any, value: Any, key: str) -> Any:
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
    elif hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - a programming error in a section definition
        raise TypeError(f"unsupported config type {hint}")
    raise ConfigError(f"{key}: expected {hint.__name__}, got {_kind(value)} {value!r}")


def _kind(value: Any) -> str:
    return {dict: "a table", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _validate(config: Config) -> None:
    """Checks that span fields or need parsing; host checks happen at start."""
    for key in ("agent.root_dir", "agent.state_dir"):
        value = _get_dotted(config, key)
        if not os.path.isabs(value):
            raise ConfigError(f"{key}: '{value}' is not an absolute path")
    if config.agent.socket and not os.path.isabs(config.agent.socket):
        raise ConfigError(f"agent.socket: '{config.agent.socket}' is not an absolute path")
    if config.agent.shutdown_timeout_seconds < 0:
        raise ConfigError("agent.shutdown_timeout_seconds: must not be negative")
    for key in ("metrics.address", "streaming.address"):
        value = _get_dotted(config, key)
        if value or key == "streaming.address":
            _check_host_port(key, value)
    if config.runtime.default_handler not in config.runtime.handlers:
        raise ConfigError(
            f"runtime.default_handler: '{config.runtime.default_handler}' is not a configured "
            f"handler ({', '.join(sorted(config.runtime.handlers)) or 'none'})"
        )
    parent = config.runtime.default_cgroup_parent
    if not parent.startswith("/") or ".." in parent.split("/"):
        raise ConfigError(
            f"runtime.default_cgroup_parent: '{parent}' must be an absolute cgroup path"
        )
    _check_pod_cidr(config.network.pod_cidr)
    _check_interface_name("network.bridge", config.network.bridge)
    if config.network.cni_timeout_seconds <= 0:
        raise ConfigError("network.cni_timeout_seconds: must be positive")
    image = config.image
    streaming = config.streaming
    for key in (
        "token_ttl_seconds",
        "stream_creation_timeout_seconds",
        "stream_idle_timeout_seconds",
    ):
        if getattr(streaming, key) <= 0:
            raise ConfigError(f"streaming.{key}: must be positive")
    if image.max_concurrent_downloads < 1:
        raise ConfigError("image.max_concurrent_downloads: must be at least 1")
    if image.download_part_mb < 1:
        raise ConfigError("image.download_part_mb: must be at least 1")
    if image.max_concurrent_unpacks < 0:
        raise ConfigError("image.max_concurrent_unpacks: must not be negative")
    if image.pull_progress_timeout_seconds <= 0:
        raise ConfigError("image.pull_progress_timeout_seconds: must be positive")
    for key in ("max_layer_unpacked_gb", "max_layer_entries", "disk_reserve_mb"):
        if getattr(image, key) < 0:
            raise ConfigError(f"image.{key}: must not be negative")
    for host, settings in image.registries.items():
        for i, mirror in enumerate(settings.mirrors):
            scheme, sep, rest = mirror.partition("://")
            if scheme not in ("http", "https") or not sep or not rest.strip("/"):
                raise ConfigError(
                    f'image.registries."{host}".mirrors[{i}]: '
                    f"'{mirror}' is not http[s]://host[:port]"
                )


def _check_pod_cidr(value: str) -> None:
    """One IPv4 and/or one IPv6 subnet, comma-separated as the kubelet sends them."""
    versions = set()
    for part in value.split(","):
        try:
            net = ipaddress.ip_network(part.strip())
        except ValueError as exc:
            raise ConfigError(f"network.pod_cidr: {exc}") from None
        if net.num_addresses < 4:
            raise ConfigError(f"network.pod_cidr: {net} is too small for pods")
        if net.version in versions:
            raise ConfigError(f"network.pod_cidr: more than one IPv{net.version} subnet")
        versions.add(net.version)


def _check_interface_name(key: str, value: str) -> None:
    """The kernel's rules (dev_valid_name): 1-15 bytes, no '/', ':' or whitespace."""
    if (
        not value
        or len(value.encode()) > 15
        or value in (".", "..")
        or any(c in "/:" or c.isspace() for c in value)
    ):
        raise ConfigError(f"{key}: '{value}' is not a valid interface name (1-15 characters)")


def _check_host_port(key: str, value: str) -> None:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{key}: '{value}' is not host:port")


def _get_dotted(config: Config, key: str) -> Any:
    node: Any = config
    for part in key.split("."):
        node = getattr(node, part)
    return node


# ---------------------------------------------------------------------------
# Printing


def render_toml(config: Config) -> str:
    """The effective config as TOML, each key preceded by its documentation."""
    lines = ["# model-agent effective configuration", ""]
    _render_table(config, "", lines)
    return "\n".join(lines).rstrip() + "\n"


def _render_table(obj: Any, prefix: str, lines: list[str]) -> None:
    scalars = []
    tables = []
    for fld in dataclasses.fields(obj):
        value = getattr(obj, fld.name)
        if dataclasses.is_dataclass(value) or isinstance(value, dict):
            tables.append((fld, value))
        else:
            scalars.append((fld, value))
    if scalars and prefix:
        lines.append(f"[{prefix}]")
    for fld, value in scalars:
        doc = fld.metadata.get("doc")
        if doc:
            lines.append(f"# {doc}")
        lines.append(f"{fld.name} = {_toml_value(value)}")
    if scalars:
        lines.append("")
    for fld, value in tables:
        name = _join(prefix, fld.name)
        if isinstance(value, dict):
            doc = fld.metadata.get("doc")
            if doc:
                lines.append(f"# {doc}")
            for key, item in value.items():
                _render_table(item, f"{name}.{_toml_key(key)}", lines)
        else:
            _render_table(value, name, lines)


def _toml_key(key: str) -> str:
    """A table key as TOML reads it back: bare if it can be, else quoted (``"docker.io"``)."""
    if key and all(c.isascii() and (c.isalnum() or c in "-_") for c in key):
        return key
    return _toml_string(key)


def _toml_string(value: str) -> str:
    out = []
    for c in value:
        if c in ('"', "\\"):
            out.append("\\" + c)
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot render {type(value).__name__}")  # pragma: no cover
