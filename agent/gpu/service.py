"""``GpuService``: the one object the rest of the agent uses for GPUs in containers.

It owns the backend, the current ``Inventory``, the CDI registry and the node's
own CDI spec, and answers one question per container: given what the container
asked for (CDI names from the CRI and ``cdi.k8s.io/*`` annotations, the image's
and the CRI request's environment, the devices the agent's device plugin or
DRA driver allocated to it, the CRI ``Device`` entries), which edits go into its
OCI spec and which GPUs does it hold (``resolve`` → ``(ContainerEdits,
Assignment)``). ``apply`` puts the edits into the spec dict.

Order of a resolution: CDI names (the field, then annotations, each once) and
the devices ``NVIDIA_VISIBLE_DEVICES`` grants under the secure default
(``env.visible_devices_policy``) become CDI devices of the node spec; all are
resolved against one registry snapshot, checked against the host, and merged
(each spec's own edits once, then each device's). ``NVIDIA_DRIVER_CAPABILITIES``
narrows the driver files of the agent's own spec when the container sets it (or,
for a grant through the variable, to the toolkit's default ``compute,utility``);
``NVIDIA_REQUIRE_*`` is checked when the container gets a GPU. A CRI ``Device``
that is a GPU's node (a device plugin's ``DeviceSpec``) is applied by
``pods.spec``; here it adds the node spec's shared edits (control nodes, driver
files, the ldconfig hook), as ``none`` does, so CUDA runs with it. The variable
itself is rewritten to what was granted (``void`` when nothing), so a legacy
NVIDIA hook downstream cannot widen the grant.

``start``, ``refresh`` and ``resolve`` block on the filesystem and NVML: call
them in a thread. ``run`` is the periodic refresh task for the agent's TaskGroup.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import stat
import threading
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from agent.config import GpuSection
from agent.errors import InvalidArgument
from agent.gpu.assignment import Assignment, GpuGrant
from agent.gpu.backend import GpuBackend, NoGpuBackend
from agent.gpu.cdi.driver import DriverFiles, discover, restrict_mounts
from agent.gpu.cdi.edits import apply_edits, check_edits
from agent.gpu.cdi.names import merge_requests, parse_annotations
from agent.gpu.cdi.nodespec import (
    GENERATED_BY,
    NodeSpec,
    NodeSpecOptions,
    build_node_spec,
    node_spec_path,
    write_node_spec,
)
from agent.gpu.cdi.registry import CdiRegistry, CdiSnapshot, ResolvedDevice
from agent.gpu.cdi.spec import ContainerEdits, DeviceNode, Spec
from agent.gpu.env import (
    DEFAULT_CAPABILITIES,
    DRIVER_CAPABILITIES,
    VISIBLE_DEVICES,
    EnvGrant,
    check_requirements,
    parse_capabilities,
    visible_devices_policy,
)
from agent.gpu.factory import driver_layout, open_backend
from agent.gpu.inventory import Device, Inventory
from agent.gpu.procfs import NVIDIA_MAJOR

__all__ = ["GpuService", "env_from_list"]

log = logging.getLogger(__name__)


def env_from_list(items: Sequence[str]) -> dict[str, str]:
    """``["K=V", ...]`` (an image config's Env) → a dict; later entries win."""
    out: dict[str, str] = {}
    for item in items:
        key, _, value = item.partition("=")
        if key:
            out[key] = value
    return out


class GpuService:
    def __init__(self, config: GpuSection, *, backend: GpuBackend | None = None) -> None:
        self._config = config
        self._backend: GpuBackend = backend or NoGpuBackend("not started")
        self._given_backend = backend is not None
        self._node_spec_file = node_spec_path(
            os.path.normpath(config.node_spec_dir), config.cdi_kind
        )
        # The node's own spec wins a same-directory conflict (NVIDIA's toolkit may write
        # nvidia.com/gpu specs into /var/run/cdi too); the conflict is still logged.
        self._registry = CdiRegistry(config.cdi_spec_dirs, own=self._node_spec_file)
        self._inventory = Inventory(self._backend.status())
        self._node_spec = NodeSpec(None)
        self._driver_files = DriverFiles()
        self._lock = threading.Lock()
        self._logged_overrides: frozenset[str] = frozenset()

    # -- lifecycle ------------------------------------------------------

    def start(self) -> None:
        """Open the backend, read the inventory, write the node spec (blocking)."""
        if not self._given_backend:
            self._backend = open_backend(self._config)
        else:
            self._backend.open()
        self.refresh(force=True)

    def close(self) -> None:
        self._backend.close()

    async def run(self) -> None:
        """Refresh the inventory (and the node spec) every ``inventory_refresh_seconds``."""
        while True:
            await asyncio.sleep(self._config.inventory_refresh_seconds)
            try:
                await asyncio.to_thread(self.refresh)
            except Exception:
                log.exception("GPU inventory refresh failed")

    def refresh(self, *, force: bool = False) -> bool:
        """Re-read the inventory; rewrite the node spec when it changed. True if it did."""
        with self._lock:
            inventory = Inventory.read(self._backend)
            changed = force or inventory.signature() != self._inventory.signature()
            self._inventory = inventory
            if not changed:
                return False
            for gpu in inventory.gpus:
                if gpu.state != "ok" or gpu.error:
                    log.warning("GPU %d (%s): %s %s", gpu.index, gpu.uuid, gpu.state, gpu.error)
            if self._config.write_node_spec:
                self._write_node_spec(inventory)
            self._registry.invalidate()
            self._log_precedence(self._registry.snapshot())
            return True

    def _write_node_spec(self, inventory: Inventory) -> None:
        self._driver_files = discover(driver_layout(self._config), inventory.driver.driver_version)
        options = NodeSpecOptions(
            kind=self._config.cdi_kind,
            dev_root=self._config.dev_root,
            ldconfig_path=self._config.ldconfig_path,
            hook_command=tuple(self._config.hook_command),
        )
        self._node_spec = build_node_spec(inventory, self._driver_files, options)
        for problem in self._node_spec.problems:
            log.warning("CDI node spec: %s", problem)
        try:
            write_node_spec(self._config.node_spec_dir, self._config.cdi_kind, self._node_spec)
        except OSError as exc:
            log.error("CDI node spec: cannot write %s: %s", self._node_spec_file, exc)

    def _log_precedence(self, snapshot: CdiSnapshot) -> None:
        """Say once when the agent's spec overrides (or collides with) another of its kind."""
        ours = self._node_spec_file
        shadowed = sorted(
            {
                loser
                for name, (winner, losers) in snapshot.overridden.items()
                if winner == ours
                for loser in losers
            }
        )
        key = frozenset(shadowed)
        if shadowed and key != self._logged_overrides:
            log.info(
                "CDI: %s takes precedence over %s for %s devices (a later spec dir wins)",
                ours,
                ", ".join(shadowed),
                self._config.cdi_kind,
            )
        self._logged_overrides = key
        for name, paths in snapshot.conflicts.items():
            if ours in paths:
                log.warning(
                    "CDI: %s is also defined in %s; the agent's spec is used, remove the "
                    "other spec from %s",
                    name,
                    ", ".join(p for p in paths if p != ours),
                    self._config.node_spec_dir,
                )

    # -- queries --------------------------------------------------------

    @property
    def backend(self) -> GpuBackend:
        """For the metrics collectors and the health monitor (call it in a thread)."""
        return self._backend

    def inventory(self) -> Inventory:
        return self._inventory

    def cdi(self) -> CdiSnapshot:
        return self._registry.snapshot()

    def node_spec(self) -> Spec | None:
        """The node's own CDI spec as last built (None: no usable GPU, or not written)."""
        return self._node_spec.spec

    # -- containers -----------------------------------------------------

    def resolve(
        self,
        *,
        cdi_devices: Sequence[str] = (),
        annotations: Mapping[str, str] | None = None,
        image_env: Mapping[str, str] | None = None,
        cri_env: Mapping[str, str] | None = None,
        allocated: Collection[str] = (),
        devices: Sequence[str] = (),
    ) -> tuple[ContainerEdits, Assignment]:
        """The edits and the assignment for one container (see the module docstring).

        ``devices`` are the host paths of the CRI ``Device`` entries (applied by
        ``pods.spec``; recorded here). Raises ``InvalidArgument`` for a name that
        does not resolve, a bad spec, or a bad ``NVIDIA_VISIBLE_DEVICES``, and
        ``FailedPrecondition`` for an unmet ``NVIDIA_REQUIRE_*``.
        """
        annotations = annotations or {}
        image_env = dict(image_env or {})
        cri_env = dict(cri_env or {})
        inventory = self._inventory
        requested = merge_requests(cdi_devices, {})
        from_annotations = [n for n in parse_annotations(annotations) if n not in requested]
        grant = visible_devices_policy(
            image_env=image_env,
            cri_env=cri_env,
            allocated=allocated,
            accept_env=self._config.accept_env,
            inventory=inventory,
        )
        for reason in grant.denied:
            log.warning("GPU request not honoured: %s", reason)
        if grant.image_value_ignored:
            log.debug("GPU request not honoured: %s", grant.image_value_ignored)
        snapshot = self._registry.snapshot()
        env_names = self._env_names(grant, snapshot)
        names = [*requested, *from_annotations, *(n for n, _ in env_names if n not in requested)]
        resolved = snapshot.resolve(dict.fromkeys(names))
        env = {**image_env, **cri_env}
        held_by_device = self._device_grants(devices, inventory, set())
        caps = self._capabilities(env, grant, by_device=bool(held_by_device))
        # A GPU given as a CRI Device (a device plugin's DeviceSpec) needs the driver's
        # control nodes and libraries as much as one given by CDI name.
        needs_driver = grant.driver_only or bool(held_by_device)
        edits, per_device = self._merge(
            resolved, caps, snapshot if needs_driver else None, required=grant.driver_only
        )
        via = dict.fromkeys(requested, "cdi") | dict.fromkeys(from_annotations, "annotation")
        via |= {n: "env" for n, _ in env_names if n not in via}
        env_request = dict(env_names)
        grants = self._grants(per_device, via, env_request, inventory)
        held = {g.uuid for g in grants}
        grants += [g for g in held_by_device if g.uuid not in held]
        if grants or grant.driver_only:
            check_requirements(env, self._facts(grants, inventory))
        visible = ",".join(g.uuid for g in grants) or ("none" if grant.driver_only else "void")
        if grants or grant.driver_only or VISIBLE_DEVICES in env:
            edits = edits.merged(ContainerEdits(env=(f"{VISIBLE_DEVICES}={visible}",)))
        assignment = Assignment(
            grants=tuple(grants),
            cdi_devices=tuple(r.name for r in resolved),
            driver_capabilities=caps or (),
            driver_only=grant.driver_only and not grants,
            denied=grant.denied
            + ((grant.image_value_ignored,) if grant.image_value_ignored else ()),
        )
        return edits, assignment

    def apply(self, spec: dict[str, Any], edits: ContainerEdits) -> None:
        """Put resolved edits into an OCI spec dict (``pods.spec.container_spec``'s), in place."""
        apply_edits(spec, edits)

    def _env_names(self, grant: EnvGrant, snapshot: CdiSnapshot) -> list[tuple[str, str]]:
        """(CDI name of the node spec, the variable's token) for each device the variable grants."""
        kind = self._config.cdi_kind
        out = []
        for device, request in zip(grant.devices, grant.requests, strict=True):
            name = f"{kind}={device.uuid}"
            if name not in snapshot.devices:
                problems = "; ".join(self._node_spec.problems) or "see the CDI problems in Status"
                raise InvalidArgument(
                    f"{VISIBLE_DEVICES}: {request} ({device.uuid}) is not in the node's CDI spec "
                    f"{self._node_spec_file}: {problems}"
                )
            out.append((name, request))
        return out

    def _capabilities(
        self, env: Mapping[str, str], grant: EnvGrant, *, by_device: bool
    ) -> tuple[str, ...] | None:
        if DRIVER_CAPABILITIES in env:
            return parse_capabilities(env[DRIVER_CAPABILITIES])
        if grant.devices or grant.driver_only or by_device:
            return DEFAULT_CAPABILITIES
        return None  # CDI only: the specs' edits as written

    def _merge(
        self,
        resolved: list[ResolvedDevice],
        caps: tuple[str, ...] | None,
        driver_only_from: CdiSnapshot | None,
        *,
        required: bool = True,
    ) -> tuple[ContainerEdits, list[tuple[str, ContainerEdits]]]:
        """Spec edits once per spec, then device edits; every part checked against the host.

        ``driver_only_from``: add the node spec's shared edits (the driver's files); without
        a node spec that is an error when ``required`` (``none`` asked for exactly that),
        else a warning (a GPU device node keeps working as the bare node it was given)."""
        merged = ContainerEdits()
        seen_specs: set[str] = set()
        per_device: list[tuple[str, ContainerEdits]] = []
        for item in resolved:
            if item.spec.path not in seen_specs:
                seen_specs.add(item.spec.path)
                merged = merged.merged(self._spec_edits(item, caps))
            device_edits = check_edits(item.name, item.device.edits)
            per_device.append((item.name, device_edits))
            merged = merged.merged(device_edits)
        if driver_only_from is not None and self._node_spec_file not in seen_specs:
            specs = driver_only_from.specs
            ours = next((s for s in specs if s.path == self._node_spec_file), None)
            if ours is None:
                if required:
                    raise InvalidArgument(
                        f"{VISIBLE_DEVICES}=none: the node has no CDI spec ({self._node_spec_file})"
                    )
                log.warning(
                    "a GPU device node without the driver's files: the node has no CDI spec (%s)",
                    self._node_spec_file,
                )
                return merged, per_device
            edits = ours.spec.edits
            if caps is not None:
                edits = dataclasses.replace(edits, mounts=restrict_mounts(edits.mounts, caps))
            merged = merged.merged(check_edits(f"{ours.spec.kind} (driver only)", edits))
        return merged, per_device

    def _spec_edits(self, item: ResolvedDevice, caps: tuple[str, ...] | None) -> ContainerEdits:
        edits = item.spec.spec.edits
        if caps is not None and item.spec.spec.annotations.get(GENERATED_BY):
            edits = dataclasses.replace(edits, mounts=restrict_mounts(edits.mounts, caps))
        return check_edits(f"{item.spec.spec.kind} (spec {item.spec.path})", edits)

    # -- what a container holds -----------------------------------------

    def _grants(
        self,
        per_device: list[tuple[str, ContainerEdits]],
        via: Mapping[str, str],
        env_request: Mapping[str, str],
        inventory: Inventory,
    ) -> list[GpuGrant]:
        grants: list[GpuGrant] = []
        held: set[str] = set()
        for name, edits in per_device:
            for device in _devices_of(edits.device_nodes, inventory):
                if device.uuid in held:
                    continue
                held.add(device.uuid)
                how = via.get(name, "cdi")
                request = env_request.get(name, name) if how == "env" else name
                grants.append(_grant(device, how, request))
        return grants

    def _device_grants(
        self, paths: Sequence[str], inventory: Inventory, held: set[str]
    ) -> list[GpuGrant]:
        nodes = []
        for path in paths:
            try:
                st = os.stat(path)
            except OSError:
                continue  # pods.spec reports a missing device
            if stat.S_ISCHR(st.st_mode):
                nodes.append(
                    DeviceNode(path, path, "c", os.major(st.st_rdev), os.minor(st.st_rdev))
                )
        grants = []
        for node in nodes:
            for device in _devices_of((node,), inventory):
                if device.uuid not in held:
                    held.add(device.uuid)
                    grants.append(_grant(device, "device", node.path))
        return grants

    def _facts(self, grants: list[GpuGrant], inventory: Inventory) -> dict[str, Any]:
        gpus = [inventory.by_uuid(g.gpu_uuid) for g in grants]
        return {
            "cuda": inventory.driver.cuda_driver_version,
            "driver": inventory.driver.driver_version,
            "arch": [g.cuda_compute_capability for g in gpus if g],
            "brand": [g.brand for g in gpus if g],
        }

    # -- Status ---------------------------------------------------------

    def status_info(self) -> dict[str, Any]:
        """For ``Status`` verbose info: backend, driver, GPUs, CDI dirs, specs and problems."""
        inventory = self._inventory
        snapshot = self._registry.snapshot()
        status = inventory.status
        return {
            "backend": {
                "name": status.backend,
                "available": status.available,
                "reason": status.reason,
                "simulated": status.backend == "simulated",
            },
            "driver": dataclasses.asdict(inventory.driver),
            "gpus": [
                {
                    "index": g.index,
                    "uuid": g.uuid,
                    "name": g.name,
                    "minor": g.minor,
                    "pciBusId": g.pci_bus_id,
                    "numaNode": g.numa_node,
                    "memoryBytes": g.memory_total,
                    "architecture": g.architecture,
                    "computeCapability": g.cuda_compute_capability,
                    "migMode": g.mig_mode,
                    "migDevices": [
                        {"index": f"{g.index}:{m.index}", "uuid": m.uuid, "profile": m.profile}
                        for m in g.mig_devices
                    ],
                    "state": g.state,
                    **({"error": g.error} if g.error else {}),
                }
                for g in inventory.gpus
            ],
            "cdi": {
                "specDirs": list(snapshot.dirs),
                "specs": [
                    {"path": s.path, "kind": s.spec.kind, "devices": len(s.spec.devices)}
                    for s in snapshot.specs
                ],
                "problems": dict(snapshot.problems),
                "conflicts": {k: list(v) for k, v in snapshot.conflicts.items()},
            },
            "nodeSpec": {
                "path": self._node_spec_file if self._config.write_node_spec else "",
                "devices": len(self._node_spec.spec.devices) if self._node_spec.spec else 0,
                "problems": list(self._node_spec.problems),
            },
            "acceptEnv": self._config.accept_env,
        }


def _devices_of(nodes: Sequence[DeviceNode], inventory: Inventory) -> list[Device]:
    """The GPUs and MIG devices a set of device nodes gives access to.

    ``/dev/nvidia<minor>`` (major 195) is a GPU; ``nvidia-cap<N>`` matching a MIG
    device's compute-instance capability is that MIG device, and then its parent
    is not also counted as a whole GPU.
    """
    migs: list[Device] = []
    gpus: list[Device] = []
    for node in nodes:
        name = os.path.basename(node.path)
        if name.startswith("nvidia-cap") and name[len("nvidia-cap") :].isdigit():
            mig = inventory.mig_by_cap_minor(int(name[len("nvidia-cap") :]))
            if mig is not None and mig not in migs:
                migs.append(mig)
        elif node.type in ("c", "u") and node.major == NVIDIA_MAJOR and node.minor < 254:
            gpu = inventory.by_minor(node.minor)
            if gpu is not None and Device(gpu) not in gpus:
                gpus.append(Device(gpu))
    parents = {m.gpu.uuid for m in migs}
    return [g for g in gpus if g.gpu.uuid not in parents] + migs


def _grant(device: Device, via: str, request: str) -> GpuGrant:
    return GpuGrant(
        uuid=device.uuid,
        gpu_uuid=device.gpu.uuid,
        index=device.index,
        via=via,
        request=request,
        mig=device.is_mig,
        profile=device.mig.profile if device.mig else "",
    )
