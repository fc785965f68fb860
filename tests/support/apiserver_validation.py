"""What the API-server stand-in checks before it stores a ``resource.k8s.io/v1`` object.

Two layers, as a real 1.36 API server has them:

- the schema: ``kubernetes-validate`` with the Kubernetes 1.36 OpenAPI schemas, strict
  (unknown fields are refused; a real server would drop them with a warning, or answer
  400 under ``fieldValidation=Strict``: either way a driver must not send them);
- a subset of the server's own validation of ResourceSlices
  (``pkg/apis/resource/validation``) that a DRA driver can get wrong: names, the driver
  and pool, exactly one node selection, device count and names, attribute and capacity
  names and values, taints, immutable fields on update; quantities as the decoder
  parses them.

Each check answers ``Cause`` entries, reported in a 422 ``Invalid`` Status like the real
server's. Imports nothing of agent/.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import kubernetes_validate

__all__ = [
    "KUBERNETES_VERSION",
    "Cause",
    "check_resource_claim",
    "check_resource_slice",
    "check_schema",
    "is_quantity",
]

#: The schemas every object is checked against.
KUBERNETES_VERSION = "1.36"
MAX_DEVICES = 128  # ResourceSliceMaxDevices
MAX_DEVICES_WITH_TAINTS_OR_COUNTERS = 64
MAX_ATTRIBUTES_AND_CAPACITIES = 32
MAX_TAINTS = 16
MAX_ATTRIBUTE_VALUE_LENGTH = 64
MAX_ID_LENGTH = 32  # a C identifier in an attribute or capacity name
MAX_DRIVER_NAME_LENGTH = 63
TAINT_EFFECTS = ("None", "NoSchedule", "NoExecute")

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_C_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_QUANTITY = re.compile(
    r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+|[KMGTPE]i|[numkMGTPE])?$"
)
_NUMERIC = r"(0|[1-9]\d*)"
_PRE_RELEASE = r"(0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)"
_SEMVER = re.compile(
    rf"^{_NUMERIC}\.{_NUMERIC}\.{_NUMERIC}(-{_PRE_RELEASE}(\.{_PRE_RELEASE})*)?"
    r"(\+[0-9a-zA-Z-]+(\.[0-9a-zA-Z-]+)*)?$"
)


_SUBDOMAIN_MESSAGE = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.'"
)
_LABEL_MESSAGE = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-'"
)
_QUALIFIED_MESSAGE = (
    "must be either a C identifier or a domain name followed by a slash and a C identifier"
)
_PLACEMENT_FORBIDDEN = (
    "`nodeName`, `nodeSelector` and `allNodes` can only be set if `perDeviceNodeSelection` "
    "is set to true in the ResourceSlice spec"
)
_PLACEMENT_REQUIRED = (
    "exactly one of `nodeName`, `nodeSelector`, or `allNodes` is required when "
    "`perDeviceNodeSelection` is set to true in the ResourceSlice spec"
)
_SELECTION_REQUIRED = (
    "exactly one of `nodeName`, `nodeSelector`, `allNodes`, `perDeviceNodeSelection` is required"
)
_REQUEST_MESSAGE = (
    "must be the name of a request in the claim or the name of a request and a subrequest "
    "separated by '/'"
)


@dataclass(frozen=True)
class Cause:
    """One field error, as in a Status's ``details.causes``."""

    field: str
    message: str
    reason: str = "FieldValueInvalid"


def check_schema(obj: dict[str, Any]) -> list[Cause]:
    """The object against the 1.36 schema of its kind (strict)."""
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        path = ".".join(str(p) for p in error.absolute_path) or "<root>"
        return [Cause(path, error.message)]
    except kubernetes_validate.SchemaNotFoundError as error:
        return [Cause("kind", error.message, "FieldValueNotSupported")]
    return []


def is_quantity(value: Any) -> bool:
    """Whether the API decoder accepts ``value`` as a resource.Quantity."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return True
    return isinstance(value, str) and bool(_QUANTITY.match(value))


def _dns_subdomain(value: str, max_length: int = 253) -> str | None:
    if len(value) > max_length:
        return f"must be no more than {max_length} characters"
    if not _DNS_SUBDOMAIN.match(value):
        return _SUBDOMAIN_MESSAGE
    return None


def _qualified_name(name: str, path: str) -> list[Cause]:
    """An attribute/capacity name: a C identifier, optionally ``<domain>/`` first."""
    parts = name.split("/")
    if len(parts) > 2:
        return [
            Cause(
                path,
                _QUALIFIED_MESSAGE,
            )
        ]
    causes = []
    if len(parts) == 2:
        problem = (
            _dns_subdomain(parts[0], MAX_DRIVER_NAME_LENGTH)
            if parts[0]
            else "the domain must not be empty"
        )
        if problem:
            causes.append(Cause(path, problem))
    identifier = parts[-1]
    if not _C_IDENTIFIER.match(identifier):
        causes.append(
            Cause(path, "a valid C identifier must start with alphabetic character or '_'")
        )
    elif len(identifier) > MAX_ID_LENGTH:
        causes.append(
            Cause(path, f"may not be more than {MAX_ID_LENGTH} bytes", "FieldValueTooLong")
        )
    return causes


def _attribute(value: dict[str, Any], path: str) -> list[Cause]:
    kinds = [k for k in ("bool", "int", "string", "version") if k in value]
    if len(kinds) != 1:
        return [Cause(path, "exactly one value must be specified")]
    text = value.get("string", value.get("version"))
    causes = []
    if isinstance(text, str) and len(text) > MAX_ATTRIBUTE_VALUE_LENGTH:
        causes.append(
            Cause(
                f"{path}.{kinds[0]}",
                f"may not be more than {MAX_ATTRIBUTE_VALUE_LENGTH} bytes",
                "FieldValueTooLong",
            )
        )
    if kinds[0] == "version" and not _SEMVER.match(str(text)):
        causes.append(
            Cause(f"{path}.version", "must be a string compatible with semver.org spec 2.0.0")
        )
    return causes


def _taint(taint: dict[str, Any], path: str) -> list[Cause]:
    causes = []
    key = str(taint.get("key", ""))
    prefix, _, name = key.rpartition("/")
    if (prefix and _dns_subdomain(prefix)) or len(name) > 63 or not _LABEL_NAME.match(name):
        causes.append(
            Cause(
                f"{path}.key", "name part must consist of alphanumeric characters, '-', '_' or '.'"
            )
        )
    if not _LABEL_VALUE.match(str(taint.get("value", ""))) or len(str(taint.get("value", ""))) > 63:
        causes.append(
            Cause(
                f"{path}.value",
                "a valid label must be an empty string or consist of alphanumeric characters",
            )
        )
    if taint.get("effect") not in TAINT_EFFECTS:
        causes.append(
            Cause(
                f"{path}.effect",
                f"supported values: {', '.join(TAINT_EFFECTS)}",
                "FieldValueNotSupported",
            )
        )
    return causes


def _device(device: dict[str, Any], path: str, per_device: bool) -> list[Cause]:
    causes = []
    name = str(device.get("name", ""))
    if not _DNS_LABEL.match(name) or len(name) > 63:
        causes.append(
            Cause(
                f"{path}.name",
                _LABEL_MESSAGE,
            )
        )
    attributes, capacity = device.get("attributes") or {}, device.get("capacity") or {}
    if len(attributes) + len(capacity) > MAX_ATTRIBUTES_AND_CAPACITIES:
        causes.append(
            Cause(
                path,
                "the total number of attributes and capacities must not exceed "
                f"{MAX_ATTRIBUTES_AND_CAPACITIES}",
            )
        )
    for key, value in attributes.items():
        causes += _qualified_name(key, f"{path}.attributes[{key}]")
        causes += _attribute(value, f"{path}.attributes[{key}]")
    for key, value in capacity.items():
        causes += _qualified_name(key, f"{path}.capacity[{key}]")
        if "requestPolicy" in value and not device.get("allowMultipleAllocations"):
            causes.append(
                Cause(
                    f"{path}.capacity[{key}].requestPolicy",
                    "allowMultipleAllocations must be true",
                    "FieldValueForbidden",
                )
            )
    taints = device.get("taints") or []
    if len(taints) > MAX_TAINTS:
        causes.append(
            Cause(f"{path}.taints", f"must have at most {MAX_TAINTS} items", "FieldValueTooMany")
        )
    for i, taint in enumerate(taints):
        causes += _taint(taint, f"{path}.taints[{i}]")
    placement = [k for k in ("nodeName", "nodeSelector", "allNodes") if k in device]
    if placement and not per_device:
        causes.append(
            Cause(
                path,
                _PLACEMENT_FORBIDDEN,
            )
        )
    elif per_device and len(placement) != 1:
        causes.append(
            Cause(
                path,
                _PLACEMENT_REQUIRED,
            )
        )
    return causes


def check_resource_slice(obj: dict[str, Any], old: dict[str, Any] | None = None) -> list[Cause]:
    """The server's own checks of a ResourceSlice (and of an update from ``old``)."""
    causes = []
    name = obj.get("metadata", {}).get("name", "")
    if problem := _dns_subdomain(name):
        causes.append(Cause("metadata.name", problem))
    spec = obj.get("spec", {})
    if problem := _dns_subdomain(str(spec.get("driver", "")), MAX_DRIVER_NAME_LENGTH):
        causes.append(Cause("spec.driver", problem))
    pool = spec.get("pool", {})
    pool_name = str(pool.get("name", ""))
    if not pool_name or any(_dns_subdomain(part) for part in pool_name.split("/")):
        causes.append(
            Cause(
                "spec.pool.name",
                "a pool name must be one or more DNS sub-domains separated by slashes",
            )
        )
    if int(pool.get("resourceSliceCount", 0)) <= 0:
        causes.append(Cause("spec.pool.resourceSliceCount", "must be greater than zero"))
    if int(pool.get("generation", 0)) < 0:
        causes.append(Cause("spec.pool.generation", "must be greater than or equal to zero"))
    selections = []
    if "nodeName" in spec:
        if spec["nodeName"]:
            selections.append("`nodeName`")
            if problem := _dns_subdomain(str(spec["nodeName"])):
                causes.append(Cause("spec.nodeName", problem))
        else:
            causes.append(
                Cause("spec.nodeName", "must be either unset or set to a non-empty string")
            )
    if "nodeSelector" in spec:
        selections.append("`nodeSelector`")
        if len(spec["nodeSelector"].get("nodeSelectorTerms") or []) != 1:
            causes.append(
                Cause(
                    "spec.nodeSelector.nodeSelectorTerms",
                    "must have exactly one node selector term",
                )
            )
    for flag in ("allNodes", "perDeviceNodeSelection"):
        if flag in spec:
            if spec[flag]:
                selections.append(f"`{flag}`")
            else:
                causes.append(Cause(f"spec.{flag}", "must be either unset or set to true"))
    if len(selections) != 1:
        message = _SELECTION_REQUIRED
        causes.append(
            Cause(
                "spec",
                message + (", but multiple fields are set" if selections else ""),
                "FieldValueRequired" if not selections else "FieldValueInvalid",
            )
        )
    devices = spec.get("devices") or []
    if spec.get("sharedCounters") is not None and spec.get("devices") is not None:
        causes.append(Cause("spec", "only one of `sharedCounters` or `devices` is allowed"))
    limit = MAX_DEVICES
    if any(d.get("taints") or d.get("consumesCounters") for d in devices):
        limit = MAX_DEVICES_WITH_TAINTS_OR_COUNTERS
    if len(devices) > limit:
        causes.append(
            Cause("spec.devices", f"must have at most {limit} items", "FieldValueTooMany")
        )
    seen: set[str] = set()
    for i, device in enumerate(devices):
        if device.get("name") in seen:
            causes.append(
                Cause(
                    f"spec.devices[{i}].name",
                    f"Duplicate value: {device.get('name')!r}",
                    "FieldValueDuplicate",
                )
            )
        seen.add(device.get("name", ""))
        causes += _device(device, f"spec.devices[{i}]", bool(spec.get("perDeviceNodeSelection")))
    if old is not None:
        old_spec = old.get("spec", {})
        for path, new_value, old_value in (
            ("spec.pool.name", pool_name, old_spec.get("pool", {}).get("name")),
            ("spec.driver", spec.get("driver"), old_spec.get("driver")),
            ("spec.nodeName", spec.get("nodeName"), old_spec.get("nodeName")),
        ):
            if new_value != old_value:
                causes.append(Cause(path, "field is immutable"))
    return causes


def check_resource_claim(obj: dict[str, Any]) -> list[Cause]:
    """The few server checks of a seeded claim that matter to a driver reading it."""
    causes = []
    meta = obj.get("metadata", {})
    if problem := _dns_subdomain(str(meta.get("name", ""))):
        causes.append(Cause("metadata.name", problem))
    if not _DNS_LABEL.match(str(meta.get("namespace", ""))):
        causes.append(
            Cause(
                "metadata.namespace",
                _LABEL_MESSAGE,
            )
        )
    requests = {r.get("name") for r in obj.get("spec", {}).get("devices", {}).get("requests") or []}
    allocation = (obj.get("status") or {}).get("allocation") or {}
    for i, result in enumerate((allocation.get("devices") or {}).get("results") or []):
        path = f"status.allocation.devices.results[{i}]"
        if result.get("request", "").split("/")[0] not in requests:
            causes.append(
                Cause(
                    f"{path}.request",
                    _REQUEST_MESSAGE,
                )
            )
        if problem := _dns_subdomain(str(result.get("driver", "")), MAX_DRIVER_NAME_LENGTH):
            causes.append(Cause(f"{path}.driver", problem))
    return causes
