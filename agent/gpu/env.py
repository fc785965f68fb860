"""The NVIDIA container variables, and the secure default for which of them grant GPUs.

* ``NVIDIA_VISIBLE_DEVICES``: a comma list of indices, GPU UUIDs, MIG devices
  (``<gpu>:<mig>``, ``MIG-<uuid>``, legacy ``MIG-GPU-<uuid>/<gi>/<ci>``), or
  ``all``; ``none`` means the driver without any GPU; ``void``, empty or unset
  mean nothing at all (as runc). Parsed against the inventory: a device not on
  this node, ``7`` on a 2-GPU node, or a MIG id on a GPU not in MIG mode is an
  ``InvalidArgument`` naming it.
* ``NVIDIA_DRIVER_CAPABILITIES``: ``compute``, ``compat32``, ``display``,
  ``graphics``, ``ngx``, ``utility``, ``video`` or ``all``; unknown names are
  ignored (as the toolkit does).
* ``NVIDIA_REQUIRE_*`` (``NVIDIA_REQUIRE_CUDA="cuda>=12.0 brand=tesla,driver>=535"``):
  space-separated alternatives, each a comma-separated conjunction of
  ``cuda``/``driver``/``arch``/``brand`` comparisons; every variable must hold.
  A legacy image with only ``CUDA_VERSION`` requires ``cuda>=<major.minor>``.
  ``NVIDIA_DISABLE_REQUIRE=true`` skips the checks.

``visible_devices_policy`` is the secure default as a pure function: the image's
variable grants nothing (CUDA base images set ``all``); the CRI request's is
honoured for devices the agent itself allocated to the container (a device
plugin's env fallback), or for any device (and ``none``, the driver alone) when
the node sets ``[gpu] accept_env = true``, since a pod spec can set the same
variable without asking Kubernetes for a GPU. Imports ``gpu.inventory`` and ``errors``.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from agent.errors import FailedPrecondition, InvalidArgument
from agent.gpu.inventory import Device, Inventory

__all__ = [
    "DEFAULT_CAPABILITIES",
    "DRIVER_CAPABILITIES",
    "VISIBLE_DEVICES",
    "EnvGrant",
    "VisibleDevices",
    "check_requirements",
    "parse_capabilities",
    "parse_visible_devices",
    "visible_devices_policy",
]

VISIBLE_DEVICES = "NVIDIA_VISIBLE_DEVICES"
DRIVER_CAPABILITIES = "NVIDIA_DRIVER_CAPABILITIES"
#: The toolkit's default when NVIDIA_DRIVER_CAPABILITIES is unset.
DEFAULT_CAPABILITIES = ("compute", "utility")
_ALL_CAPABILITIES = ("compat32", "compute", "display", "graphics", "ngx", "utility", "video")


@dataclass(frozen=True, slots=True)
class VisibleDevices:
    """A parsed NVIDIA_VISIBLE_DEVICES value."""

    devices: tuple[Device, ...] = ()
    requests: tuple[str, ...] = ()  # the token that named each device, same order
    driver_only: bool = False  # "none": the driver's files, no GPU
    all: bool = False

    @property
    def empty(self) -> bool:
        return not self.devices and not self.driver_only


def parse_visible_devices(value: str | None, inventory: Inventory) -> VisibleDevices:
    """``value`` against ``inventory`` (module docstring); ``InvalidArgument`` on bad ids."""
    if value is None:
        return VisibleDevices()
    text = value.strip()
    if text in ("", "void"):
        return VisibleDevices()
    if text == "none":
        return VisibleDevices(driver_only=True)
    devices: list[Device] = []
    requests: list[str] = []
    everything = False
    for token in (t.strip() for t in text.split(",")):
        if not token:
            continue
        if token == "all":
            everything = True
            for device in _all_devices(inventory):
                if device not in devices:
                    devices.append(device)
                    requests.append("all")
            continue
        if token in ("none", "void"):
            raise InvalidArgument(f"{VISIBLE_DEVICES}: '{token}' cannot be combined with devices")
        device = _find(token, inventory)
        if device not in devices:
            devices.append(device)
            requests.append(token)
    return VisibleDevices(tuple(devices), tuple(requests), all=everything)


def _all_devices(inventory: Inventory) -> list[Device]:
    """``all``: every usable GPU; a GPU in MIG mode contributes its MIG devices (as the toolkit)."""
    out: list[Device] = []
    for gpu in inventory.usable():
        if gpu.mig_mode == "enabled" and gpu.mig_devices:
            out.extend(Device(gpu, mig) for mig in gpu.mig_devices)
        else:
            out.append(Device(gpu))
    return out


def _find(token: str, inventory: Inventory) -> Device:
    device = inventory.find(token)
    if device is not None:
        if device.gpu.minor is None or device.gpu.state != "ok":
            raise InvalidArgument(
                f"{VISIBLE_DEVICES}: GPU {device.gpu.index} ({token}) is not usable: "
                f"{device.gpu.error or device.gpu.state}"
            )
        return device
    count = len(inventory.gpus)
    gpu_part, sep, mig_part = token.partition(":")
    if token.isdigit():
        raise InvalidArgument(
            f"{VISIBLE_DEVICES}: GPU {token} does not exist (this node has {count})"
        )
    if sep and gpu_part.isdigit() and mig_part.isdigit():
        gpu = inventory.by_index(int(gpu_part))
        if gpu is None:
            raise InvalidArgument(f"{VISIBLE_DEVICES}: '{token}': GPU {gpu_part} does not exist")
        if gpu.mig_mode != "enabled":
            raise InvalidArgument(
                f"{VISIBLE_DEVICES}: '{token}' names a MIG device but GPU {gpu_part} is not in "
                "MIG mode"
            )
        raise InvalidArgument(
            f"{VISIBLE_DEVICES}: '{token}': GPU {gpu_part} has no MIG device {mig_part}"
        )
    if token.startswith("MIG-GPU-"):
        parent = token[len("MIG-") :].partition("/")[0]
        gpu = inventory.by_uuid(parent)
        if gpu is not None and gpu.mig_mode != "enabled":
            raise InvalidArgument(
                f"{VISIBLE_DEVICES}: '{token}' names a MIG device but GPU {gpu.index} is not in "
                "MIG mode"
            )
    if token.startswith(("GPU-", "MIG-")):
        raise InvalidArgument(f"{VISIBLE_DEVICES}: '{token}' is not a device on this node")
    raise InvalidArgument(
        f"{VISIBLE_DEVICES}: '{token}' is not a GPU index, UUID, MIG device, all, none or void"
    )


def parse_capabilities(value: str | None) -> tuple[str, ...]:
    """The capability set; unset or empty gives the toolkit's default (compute, utility)."""
    if value is None or not value.strip():
        return DEFAULT_CAPABILITIES
    caps: set[str] = set()
    for token in (t.strip().lower() for t in value.split(",")):
        if token == "all":
            return _ALL_CAPABILITIES
        if token in _ALL_CAPABILITIES:
            caps.add(token)
    return tuple(sorted(caps))


# ---------------------------------------------------------------------------
# Requirements

_CONSTRAINT = re.compile(r"^(?P<prop>[a-z]+)(?P<op>!=|<=|>=|=|<|>)(?P<value>.+)$")
_PROPERTIES = ("cuda", "driver", "arch", "brand")


def _version_key(text: str) -> tuple[int, ...] | None:
    parts = text.strip().split(".")
    if not parts or not all(p.isdigit() for p in parts):
        return None
    nums = [int(p) for p in parts]
    while len(nums) > 1 and nums[-1] == 0:  # 12.0 == 12
        nums.pop()
    return tuple(nums)


def _holds(constraint: str, facts: Mapping[str, str]) -> bool:
    match = _CONSTRAINT.match(constraint)
    if match is None:
        raise InvalidArgument(f"NVIDIA_REQUIRE: invalid constraint '{constraint}'")
    prop, op, value = match.group("prop"), match.group("op"), match.group("value")
    if prop not in _PROPERTIES:
        return True  # the toolkit skips properties it does not know
    actual = facts.get(prop, "")
    if prop == "brand":
        left: tuple[int, ...] | str = actual.lower()
        right: tuple[int, ...] | str = value.lower()
    else:
        want = _version_key(value)
        if want is None:
            raise InvalidArgument(f"NVIDIA_REQUIRE: '{constraint}': '{value}' is not a version")
        have = _version_key(actual)
        if have is None:
            return False  # a fact the node cannot state cannot be satisfied
        left, right = have, want
    return {
        "=": left == right,
        "!=": left != right,
        "<": left < right,  # type: ignore[operator]
        "<=": left <= right,  # type: ignore[operator]
        ">": left > right,  # type: ignore[operator]
        ">=": left >= right,  # type: ignore[operator]
    }[op]


def check_requirements(env: Mapping[str, str], facts: Mapping[str, str | Collection[str]]) -> None:
    """Raise ``FailedPrecondition`` naming the first ``NVIDIA_REQUIRE_*`` this node does not meet.

    ``facts``: ``cuda`` (the driver's CUDA version), ``driver`` (its version),
    ``arch`` (compute capabilities of the granted GPUs) and ``brand`` (theirs);
    a requirement on arch or brand holds when every granted GPU meets it.
    """
    if env.get("NVIDIA_DISABLE_REQUIRE", "").strip().lower() in ("1", "t", "true"):
        return
    requirements = [
        (key, value)
        for key, value in sorted(env.items())
        if key.startswith("NVIDIA_REQUIRE_") and key != "NVIDIA_REQUIRE_JETPACK"
    ]
    cuda_version = env.get("CUDA_VERSION", "")
    if cuda_version and "NVIDIA_REQUIRE_CUDA" not in env:
        major_minor = ".".join(cuda_version.split(".")[:2])
        requirements.append(("CUDA_VERSION", f"cuda>={major_minor}"))
    per_gpu = _fact_sets(facts)

    def alternative_holds(alternative: str) -> bool:
        conditions = [c for c in alternative.split(",") if c]
        return all(_holds(c, gpu) for c in conditions for gpu in per_gpu)

    for key, value in requirements:
        alternatives = value.split()
        if alternatives and not any(alternative_holds(a) for a in alternatives):
            shown = ", ".join(f"{k}={v}" for k, v in sorted(per_gpu[0].items()) if v)
            raise FailedPrecondition(
                f"unsatisfied condition: {key}={value!r} ({shown}); update the driver or use "
                "an image for an older CUDA"
            )


def _fact_sets(facts: Mapping[str, str | Collection[str]]) -> list[dict[str, str]]:
    """One fact dict per granted GPU (arch and brand differ per GPU; cuda and driver do not)."""
    arches = facts.get("arch", ())
    brands = facts.get("brand", ())
    arch_list = [arches] if isinstance(arches, str) else list(arches) or [""]
    brand_list = [brands] if isinstance(brands, str) else list(brands) or [""]
    base = {"cuda": str(facts.get("cuda", "")), "driver": str(facts.get("driver", ""))}
    return [
        {
            **base,
            "arch": arch_list[min(i, len(arch_list) - 1)],
            "brand": brand_list[min(i, len(brand_list) - 1)],
        }
        for i in range(max(len(arch_list), len(brand_list)))
    ]


# ---------------------------------------------------------------------------
# The secure default


@dataclass(frozen=True, slots=True)
class EnvGrant:
    """What NVIDIA_VISIBLE_DEVICES grants one container, and what it asked for but may not have."""

    devices: tuple[Device, ...] = ()
    requests: tuple[str, ...] = ()  # the token that named each granted device
    driver_only: bool = False
    #: why parts of the CRI request's variable were not honoured (logged as warnings)
    denied: tuple[str, ...] = ()
    source: str = ""  # "cri" when the CRI request's variable granted, else ""
    #: set when the image config's variable was ignored (routine for CUDA images)
    image_value_ignored: str = ""


def visible_devices_policy(
    *,
    image_env: Mapping[str, str],
    cri_env: Mapping[str, str],
    allocated: Collection[str],
    accept_env: bool,
    inventory: Inventory,
) -> EnvGrant:
    """Which devices NVIDIA_VISIBLE_DEVICES grants (see the module docstring).

    ``allocated`` holds the device ids (GPU or MIG UUIDs) the agent's own device
    plugin or DRA driver allocated to this container. Bad ids in the CRI
    request's variable are an ``InvalidArgument``; the image's is never parsed.
    """
    image_value = image_env.get(VISIBLE_DEVICES)
    ignored = ""
    if image_value is not None and image_value.strip() not in ("", "void"):
        ignored = (
            f"{VISIBLE_DEVICES}={image_value} from the image config grants no GPU "
            "(ask for GPUs through Kubernetes)"
        )
    if VISIBLE_DEVICES not in cri_env:
        return EnvGrant(image_value_ignored=ignored)
    visible = parse_visible_devices(cri_env[VISIBLE_DEVICES], inventory)
    if visible.empty:
        return EnvGrant(image_value_ignored=ignored)
    if accept_env:
        return EnvGrant(visible.devices, visible.requests, visible.driver_only, (), "cri", ignored)
    allowed = set(allocated)
    denied: list[str] = []
    devices: list[Device] = []
    requests: list[str] = []
    for device, request in zip(visible.devices, visible.requests, strict=True):
        if device.uuid in allowed:  # a MIG device is allocated by its own UUID
            devices.append(device)
            requests.append(request)
        else:
            denied.append(
                f"{VISIBLE_DEVICES}: {request} ({device.uuid}) was not allocated to this "
                "container (set [gpu] accept_env = true to trust the variable)"
            )
    if visible.driver_only:
        # "none" asks for the driver's device interface (nvidiactl, nvidia-uvm, its
        # libraries) without a GPU: no Kubernetes request stands behind it either.
        denied.append(
            f"{VISIBLE_DEVICES}=none gives the driver's files only where the node trusts "
            "the variable ([gpu] accept_env = true)"
        )
    if not devices:
        return EnvGrant(denied=tuple(denied), image_value_ignored=ignored)
    return EnvGrant(tuple(devices), tuple(requests), False, tuple(denied), "cri", ignored)
