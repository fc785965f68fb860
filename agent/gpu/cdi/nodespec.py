"""The node's own CDI spec for its GPUs: built from the inventory, written atomically.

Devices, as ``nvidia-ctk cdi generate`` names them (index and UUID strategy):
``<kind>=<index>``, ``<kind>=<GPU-uuid>``, ``<kind>=all``, and for MIG devices
``<kind>=<gpu>:<mig>`` and ``<kind>=<MIG-uuid>``. A GPU's edits are its device
node ``/dev/nvidia<minor>``; a MIG device's are its parent's node plus the GPU-
and compute-instance capability nodes ``/dev/nvidia-caps/nvidia-cap<N>``. The
spec-level edits, applied once per container, hold the control nodes
(``nvidiactl``, ``nvidia-uvm``, ``nvidia-uvm-tools``, ``nvidia-modeset``), the
driver's libraries and binaries mounted read-only, and a ``createContainer``
hook running the agent's ``update-ldcache`` program (``cdi.hook``) so the
container's linker finds the libraries. Device nodes carry no major/minor: they
are read from the host when a container is created, so a reloaded driver with
a new ``nvidia-uvm`` major needs no new spec.

A node missing on the host (``dev_root`` lets tests use their own) leaves that
device out, with the reason in ``NodeSpec.problems``. The file is
``model-agent-<vendor>-<class>.json`` in the node spec dir, rewritten only when
its content changes, and removed when the node has no usable GPU.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from agent._util.fs import atomic_write
from agent.gpu.cdi.driver import DriverFiles
from agent.gpu.cdi.spec import ContainerEdits, Device, DeviceNode, Hook, Mount, Spec, spec_to_dict
from agent.gpu.inventory import Inventory

__all__ = [
    "GENERATED_BY",
    "NodeSpec",
    "NodeSpecOptions",
    "build_node_spec",
    "default_hook_command",
    "node_spec_path",
    "write_node_spec",
]

log = logging.getLogger(__name__)

#: Annotation on the agent's own specs (the capability filter recognises them by it).
GENERATED_BY = "model-agent.io/generated-by"
SPEC_VERSION = "0.6.0"  # annotations; hostPath and digit-first names need 0.5.0
_MOUNT_OPTIONS = ("ro", "nosuid", "nodev", "bind")
_HOOK_ENV = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",)
_HOOK_TIMEOUT = 30


def default_hook_command() -> tuple[str, ...]:
    """This interpreter running the hook module (``-I``: no user site, no PYTHONPATH)."""
    return (sys.executable, "-I", "-m", "agent.gpu.cdi.hook")


@dataclass(frozen=True, slots=True)
class NodeSpecOptions:
    kind: str = "nvidia.com/gpu"
    dev_root: str = "/"
    ldconfig_path: str = "/sbin/ldconfig"
    hook_command: tuple[str, ...] = ()  # () = default_hook_command()


@dataclass(frozen=True, slots=True)
class NodeSpec:
    spec: Spec | None  # None: no usable GPU, no spec
    problems: tuple[str, ...] = ()


def node_spec_path(spec_dir: str, kind: str) -> str:
    vendor, _, cls = kind.partition("/")
    return os.path.join(spec_dir, f"model-agent-{vendor}-{cls}.json")


class _Nodes:
    def __init__(self, dev_root: str) -> None:
        self.dev_root = dev_root
        self.problems: list[str] = []

    def node(self, path: str, *, required_by: str = "") -> DeviceNode | None:
        host = os.path.normpath(os.path.join(self.dev_root, path.lstrip("/")))
        if not os.path.exists(host):
            if required_by:
                self.problems.append(f"{required_by}: {host} does not exist")
            return None
        return DeviceNode(path=path, host_path=host if host != path else "")


def _gpu_devices(inventory: Inventory, nodes: _Nodes) -> list[tuple[list[str], list[DeviceNode]]]:
    """(names, device nodes) per GPU and MIG device that can be given to a container."""
    out = []
    for gpu in inventory.usable():
        label = f"GPU {gpu.index} ({gpu.uuid})"
        node = nodes.node(f"/dev/nvidia{gpu.minor}", required_by=label)
        if node is None:
            continue
        out.append(([str(gpu.index), gpu.uuid], [node]))
        for mig in gpu.mig_devices:
            mig_label = f"MIG device {gpu.index}:{mig.index} ({mig.uuid})"
            if mig.gi_cap_minor is None or mig.ci_cap_minor is None:
                nodes.problems.append(f"{mig_label}: its capability minors are unknown")
                continue
            caps = [
                nodes.node(f"/dev/nvidia-caps/nvidia-cap{minor}", required_by=mig_label)
                for minor in (mig.gi_cap_minor, mig.ci_cap_minor)
            ]
            if None in caps:
                continue
            out.append(([f"{gpu.index}:{mig.index}", mig.uuid], [node, *(c for c in caps if c)]))
    return out


def _hook(options: NodeSpecOptions, files: DriverFiles) -> Hook | None:
    libraries = files.of("library")
    if not libraries:
        return None
    command = options.hook_command or default_hook_command()
    args = [*command, "update-ldcache", "--ldconfig-path", options.ldconfig_path]
    folders: list[str] = []
    for lib in libraries:
        folder = os.path.dirname(lib.container_path)
        if folder not in folders:
            folders.append(folder)
    for folder in folders:
        args += ["--folder", folder]
    cuda = files.library("libcuda")
    if cuda is not None:  # the development name some programs dlopen (triton, numba)
        args += ["--link", f"libcuda.so.1::{os.path.dirname(cuda.container_path)}/libcuda.so"]
    return Hook("createContainer", command[0], tuple(args), _HOOK_ENV, _HOOK_TIMEOUT)


def build_node_spec(inventory: Inventory, files: DriverFiles, options: NodeSpecOptions) -> NodeSpec:
    nodes = _Nodes(options.dev_root)
    per_device = _gpu_devices(inventory, nodes)
    problems = list(nodes.problems) + list(files.problems)
    if not per_device:
        return NodeSpec(None, tuple(problems))
    devices: list[Device] = []
    all_nodes: list[DeviceNode] = []
    for names, device_nodes in per_device:
        edits = ContainerEdits(device_nodes=tuple(device_nodes))
        devices.extend(Device(name, edits) for name in names)
        for node in device_nodes:
            if node not in all_nodes:
                all_nodes.append(node)
    devices.append(Device("all", ContainerEdits(device_nodes=tuple(all_nodes))))
    control = [
        n
        for path in (
            "/dev/nvidiactl",
            "/dev/nvidia-uvm",
            "/dev/nvidia-uvm-tools",
            "/dev/nvidia-modeset",
        )
        if (n := nodes.node(path)) is not None
    ]
    if not any(n.path == "/dev/nvidiactl" for n in control):
        problems.append(f"{os.path.join(options.dev_root, 'dev/nvidiactl')} does not exist")
    mounts = tuple(Mount(f.host_path, f.container_path, _MOUNT_OPTIONS) for f in files.files)
    hook = _hook(options, files)
    spec = Spec(
        version=SPEC_VERSION,
        kind=options.kind,
        devices=tuple(devices),
        edits=ContainerEdits(
            env=("NVIDIA_VISIBLE_DEVICES=void",),  # a legacy NVIDIA hook must add nothing more
            device_nodes=tuple(control),
            mounts=mounts,
            hooks=(hook,) if hook else (),
        ),
        annotations={
            GENERATED_BY: "model-agent",
            "model-agent.io/inventory": inventory.signature(),
            "model-agent.io/driver-version": inventory.driver.driver_version,
        },
    )
    return NodeSpec(spec, tuple(problems))


def write_node_spec(spec_dir: str, kind: str, node_spec: NodeSpec) -> tuple[str, bool]:
    """Write (or remove) the spec file; returns its path and whether the file changed."""
    path = node_spec_path(spec_dir, kind)
    if node_spec.spec is None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            return path, False
        log.info("CDI: removed %s (no usable GPU)", path)
        return path, True
    data = json.dumps(spec_to_dict(node_spec.spec), indent=2).encode() + b"\n"
    try:
        with open(path, "rb") as f:
            if f.read() == data:
                return path, False
    except OSError:
        pass
    os.makedirs(spec_dir, mode=0o755, exist_ok=True)
    atomic_write(path, data, mode=0o644)
    log.info("CDI: wrote %s (%d devices)", path, len(node_spec.spec.devices))
    return path, True


def device_names(spec: Spec) -> Sequence[str]:
    return [f"{spec.kind}={d.name}" for d in spec.devices]
