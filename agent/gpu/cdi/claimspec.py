"""Per-claim CDI specs of the DRA driver: one file per prepared ResourceClaim.

A prepared claim's devices are CDI devices of kind ``k8s.gpu.model-agent.io/claim``
named ``<claim UID>-<ResourceSlice device name>``, the names the kubelet hands to the
runtime. Their edits are the node spec's (``cdi.nodespec``): each device gets the edits
of the node spec's device for its GPU or MIG UUID, and the spec-level edits (control
nodes, driver files, the ldconfig hook) are the node spec's spec-level edits — one
description of a GPU, whichever path asked for it. The file is
``k8s.gpu.model-agent.io-claim_<uid>.json`` in the node spec dir, written atomically.
Imports only ``cdi`` modules and ``_util``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

from agent._util.fs import atomic_write
from agent.gpu.cdi.nodespec import GENERATED_BY
from agent.gpu.cdi.spec import KNOWN_VERSIONS, Device, Spec, minimum_version, spec_to_dict

__all__ = [
    "CLAIM_KIND",
    "claim_device_name",
    "claim_spec",
    "claim_spec_path",
    "remove_claim_spec",
    "write_claim_spec",
]

CLAIM_KIND = "k8s.gpu.model-agent.io/claim"
CLAIM_ANNOTATION = "model-agent.io/claim-uid"


def claim_device_name(claim_uid: str, device: str) -> str:
    """The qualified CDI name of one device of a claim."""
    return f"{CLAIM_KIND}={claim_uid}-{device}"


def claim_spec_path(spec_dir: str, claim_uid: str) -> str:
    vendor, _, cls = CLAIM_KIND.partition("/")
    return os.path.join(spec_dir, f"{vendor}-{cls}_{claim_uid}.json")


def claim_spec(claim_uid: str, devices: Sequence[tuple[str, str]], node_spec: Spec) -> Spec:
    """The spec for ``devices`` — (device name in the ResourceSlice, GPU or MIG UUID) —
    built from the node spec; a UUID the node spec lacks raises ``LookupError``."""
    by_name = {d.name: d for d in node_spec.devices}
    out = []
    for name, uuid in devices:
        source = by_name.get(uuid)
        if source is None:
            raise LookupError(f"{uuid} is not in the node's CDI spec ({node_spec.kind})")
        out.append(Device(f"{claim_uid}-{name}", source.edits))
    spec = Spec(
        version=node_spec.version,
        kind=CLAIM_KIND,
        devices=tuple(out),
        edits=node_spec.edits,
        annotations={GENERATED_BY: "model-agent", CLAIM_ANNOTATION: claim_uid},
    )
    needed = minimum_version(spec)
    if KNOWN_VERSIONS.index(needed) > KNOWN_VERSIONS.index(spec.version):
        spec = Spec(needed, spec.kind, spec.devices, spec.edits, spec.annotations)
    return spec


def write_claim_spec(spec_dir: str, claim_uid: str, spec: Spec) -> str:
    path = claim_spec_path(spec_dir, claim_uid)
    os.makedirs(spec_dir, mode=0o755, exist_ok=True)
    atomic_write(path, json.dumps(spec_to_dict(spec), indent=2).encode() + b"\n", mode=0o644)
    return path


def remove_claim_spec(spec_dir: str, claim_uid: str) -> bool:
    """Remove the claim's spec; False when there was none."""
    try:
        os.unlink(claim_spec_path(spec_dir, claim_uid))
    except FileNotFoundError:
        return False
    return True
