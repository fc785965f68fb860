"""The kubelet plugin protos are wire-identical to upstream Kubernetes.

The tables below were written from the upstream definitions in
``kubernetes/kubernetes`` ``staging/src/k8s.io/kubelet/pkg/apis/``
(``dra/v1``, ``dra/v1beta1``, ``pluginregistration/v1``, ``dra-health/v1alpha1`` as of
Kubernetes 1.36, ``dra-health/v1beta1`` as of 1.37, ``deviceplugin/v1beta1``): protobuf
package, service and method names (hence the HTTP/2 paths gRPC puts on the wire),
streaming, and every message's field names, numbers, labels and types. A field renamed,
renumbered or retyped in ``proto/`` fails here, as does a message added or dropped.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from agent.api.kubelet.deviceplugin.v1beta1 import (
    api_pb2 as deviceplugin,
    api_pb2_grpc as deviceplugin_grpc,
)
from agent.api.kubelet.dra.v1 import api_pb2 as dra_v1, api_pb2_grpc as dra_v1_grpc
from agent.api.kubelet.dra.v1beta1 import api_pb2 as dra_v1beta1, api_pb2_grpc as dra_v1beta1_grpc
from agent.api.kubelet.dra_health.v1alpha1 import (
    api_pb2 as health_v1alpha1,
    api_pb2_grpc as health_v1alpha1_grpc,
)
from agent.api.kubelet.dra_health.v1beta1 import (
    api_pb2 as health_v1beta1,
    api_pb2_grpc as health_v1beta1_grpc,
)
from agent.api.kubelet.pluginregistration.v1 import (
    api_pb2 as registration,
    api_pb2_grpc as registration_grpc,
)

# Field notation: "<type>" or "repeated <type>" or "map<key, value>"; message and enum
# types by their short name within the package.
DRA_MESSAGES = {
    "NodePrepareResourcesRequest": {"claims": (1, "repeated Claim")},
    "NodePrepareResourcesResponse": {"claims": (1, "map<string, NodePrepareResourceResponse>")},
    "NodePrepareResourceResponse": {"devices": (1, "repeated Device"), "error": (2, "string")},
    "Device": {
        "request_names": (1, "repeated string"),
        "pool_name": (2, "string"),
        "device_name": (3, "string"),
        "cdi_device_ids": (4, "repeated string"),
    },
    "NodeUnprepareResourcesRequest": {"claims": (1, "repeated Claim")},
    "NodeUnprepareResourcesResponse": {"claims": (1, "map<string, NodeUnprepareResourceResponse>")},
    "NodeUnprepareResourceResponse": {"error": (1, "string")},
    "Claim": {"namespace": (1, "string"), "uid": (2, "string"), "name": (3, "string")},
}
DRA_SERVICES = {
    "DRAPlugin": {
        "NodePrepareResources": (
            "unary",
            "NodePrepareResourcesRequest",
            "NodePrepareResourcesResponse",
        ),
        "NodeUnprepareResources": (
            "unary",
            "NodeUnprepareResourcesRequest",
            "NodeUnprepareResourcesResponse",
        ),
    }
}

HEALTH_MESSAGES = {
    "NodeWatchResourcesRequest": {},
    "DeviceIdentifier": {"pool_name": (1, "string"), "device_name": (2, "string")},
    "DeviceHealth": {
        "device": (1, "DeviceIdentifier"),
        "health": (2, "HealthStatus"),
        "last_updated_time": (3, "int64"),
        "health_check_timeout_seconds": (4, "int64"),
        "message": (5, "string"),
    },
    "NodeWatchResourcesResponse": {"devices": (1, "repeated DeviceHealth")},
}
HEALTH_SERVICES = {
    "DRAResourceHealth": {
        "NodeWatchResources": (
            "server-stream",
            "NodeWatchResourcesRequest",
            "NodeWatchResourcesResponse",
        )
    }
}
HEALTH_ENUMS = {"HealthStatus": {"UNKNOWN": 0, "HEALTHY": 1, "UNHEALTHY": 2}}

REGISTRATION_MESSAGES = {
    "PluginInfo": {
        "type": (1, "string"),
        "name": (2, "string"),
        "endpoint": (3, "string"),
        "supported_versions": (4, "repeated string"),
    },
    "RegistrationStatus": {"plugin_registered": (1, "bool"), "error": (2, "string")},
    "RegistrationStatusResponse": {},
    "InfoRequest": {},
}
REGISTRATION_SERVICES = {
    "Registration": {
        "GetInfo": ("unary", "InfoRequest", "PluginInfo"),
        "NotifyRegistrationStatus": ("unary", "RegistrationStatus", "RegistrationStatusResponse"),
    }
}

DEVICEPLUGIN_MESSAGES = {
    "DevicePluginOptions": {
        "pre_start_required": (1, "bool"),
        "get_preferred_allocation_available": (2, "bool"),
    },
    "RegisterRequest": {
        "version": (1, "string"),
        "endpoint": (2, "string"),
        "resource_name": (3, "string"),
        "options": (4, "DevicePluginOptions"),
    },
    "Empty": {},
    "ListAndWatchResponse": {"devices": (1, "repeated Device")},
    "TopologyInfo": {"nodes": (1, "repeated NUMANode")},
    "NUMANode": {"ID": (1, "int64")},
    "Device": {"ID": (1, "string"), "health": (2, "string"), "topology": (3, "TopologyInfo")},
    "PreStartContainerRequest": {"devices_ids": (1, "repeated string")},
    "PreStartContainerResponse": {},
    "PreferredAllocationRequest": {
        "container_requests": (1, "repeated ContainerPreferredAllocationRequest")
    },
    "ContainerPreferredAllocationRequest": {
        "available_deviceIDs": (1, "repeated string"),
        "must_include_deviceIDs": (2, "repeated string"),
        "allocation_size": (3, "int32"),
    },
    "PreferredAllocationResponse": {
        "container_responses": (1, "repeated ContainerPreferredAllocationResponse")
    },
    "ContainerPreferredAllocationResponse": {"deviceIDs": (1, "repeated string")},
    "AllocateRequest": {"container_requests": (1, "repeated ContainerAllocateRequest")},
    "ContainerAllocateRequest": {"devices_ids": (1, "repeated string")},
    "CDIDevice": {"name": (1, "string")},
    "AllocateResponse": {"container_responses": (1, "repeated ContainerAllocateResponse")},
    "ContainerAllocateResponse": {
        "envs": (1, "map<string, string>"),
        "mounts": (2, "repeated Mount"),
        "devices": (3, "repeated DeviceSpec"),
        "annotations": (4, "map<string, string>"),
        "cdi_devices": (5, "repeated CDIDevice"),
    },
    "Mount": {
        "container_path": (1, "string"),
        "host_path": (2, "string"),
        "read_only": (3, "bool"),
    },
    "DeviceSpec": {
        "container_path": (1, "string"),
        "host_path": (2, "string"),
        "permissions": (3, "string"),
    },
}
DEVICEPLUGIN_SERVICES = {
    "Registration": {"Register": ("unary", "RegisterRequest", "Empty")},
    "DevicePlugin": {
        "GetDevicePluginOptions": ("unary", "Empty", "DevicePluginOptions"),
        "ListAndWatch": ("server-stream", "Empty", "ListAndWatchResponse"),
        "GetPreferredAllocation": (
            "unary",
            "PreferredAllocationRequest",
            "PreferredAllocationResponse",
        ),
        "Allocate": ("unary", "AllocateRequest", "AllocateResponse"),
        "PreStartContainer": ("unary", "PreStartContainerRequest", "PreStartContainerResponse"),
    },
}

# (module, grpc module, upstream package, messages, services, enums)
UPSTREAM: list[tuple[ModuleType, ModuleType, str, dict[str, Any], dict[str, Any], dict[str, Any]]]
UPSTREAM = [
    (dra_v1, dra_v1_grpc, "k8s.io.kubelet.pkg.apis.dra.v1", DRA_MESSAGES, DRA_SERVICES, {}),
    (
        dra_v1beta1,
        dra_v1beta1_grpc,
        "k8s.io.kubelet.pkg.apis.dra.v1beta1",
        DRA_MESSAGES,
        DRA_SERVICES,
        {},
    ),
    (
        registration,
        registration_grpc,
        "pluginregistration",
        REGISTRATION_MESSAGES,
        REGISTRATION_SERVICES,
        {},
    ),
    (
        health_v1alpha1,
        health_v1alpha1_grpc,
        "v1alpha1",
        HEALTH_MESSAGES,
        HEALTH_SERVICES,
        HEALTH_ENUMS,
    ),
    (
        health_v1beta1,
        health_v1beta1_grpc,
        "v1beta1",
        HEALTH_MESSAGES,
        HEALTH_SERVICES,
        HEALTH_ENUMS,
    ),
    (
        deviceplugin,
        deviceplugin_grpc,
        "v1beta1",
        DEVICEPLUGIN_MESSAGES,
        DEVICEPLUGIN_SERVICES,
        {},
    ),
]
IDS = ["dra/v1", "dra/v1beta1", "pluginregistration/v1", "health/v1alpha1", "health/v1beta1", "dp"]

_SCALARS = {
    FieldDescriptor.TYPE_STRING: "string",
    FieldDescriptor.TYPE_BOOL: "bool",
    FieldDescriptor.TYPE_INT64: "int64",
    FieldDescriptor.TYPE_INT32: "int32",
}


def _type_name(field: FieldDescriptor, package: str) -> str:
    if field.message_type is not None:
        full = field.message_type.full_name
    elif field.enum_type is not None:
        full = field.enum_type.full_name
    else:
        return _SCALARS[field.type]
    assert full.startswith(package + "."), f"{field.full_name} refers outside {package}"
    return full[len(package) + 1 :]


def _notation(field: FieldDescriptor, package: str) -> str:
    message = field.message_type
    if message is not None and message.GetOptions().map_entry:
        key, value = message.fields_by_name["key"], message.fields_by_name["value"]
        return f"map<{_type_name(key, package)}, {_type_name(value, package)}>"
    if field.is_repeated:
        return "repeated " + _type_name(field, package)
    # Upstream has no proto3 `optional`: a scalar with presence would be a different field.
    optional = field.has_presence and message is None
    return ("optional " if optional else "") + _type_name(field, package)


def _fields(message: Descriptor, package: str) -> dict[str, tuple[int, str]]:
    return {f.name: (f.number, _notation(f, package)) for f in message.fields}


@pytest.mark.parametrize(
    ("module", "grpc_module", "package", "messages", "services", "enums"), UPSTREAM, ids=IDS
)
def test_messages_fields_and_enums_match_upstream(
    module, grpc_module, package, messages, services, enums
):
    file = module.DESCRIPTOR
    assert file.package == package
    proto = descriptor_pb2.FileDescriptorProto()
    file.CopyToProto(proto)
    assert proto.syntax == "proto3"  # implicit presence, packed repeated scalars
    assert set(file.message_types_by_name) == set(messages)
    for name, fields in messages.items():
        message = file.message_types_by_name[name]
        assert message.full_name == f"{package}.{name}"
        assert _fields(message, package) == fields, name
    assert set(file.enum_types_by_name) == set(enums)
    for name, values in enums.items():
        enum = file.enum_types_by_name[name]
        assert {v.name: v.number for v in enum.values} == values


class _RecordingChannel:
    """Stands in for a grpc channel: records the path and kind each stub method gets."""

    def __init__(self) -> None:
        self.paths: dict[str, str] = {}

    def _record(self, kind: str, path: str, **_: Any) -> None:
        self.paths[path] = kind

    def unary_unary(self, path: str, **kwargs: Any) -> None:
        self._record("unary", path, **kwargs)

    def unary_stream(self, path: str, **kwargs: Any) -> None:
        self._record("server-stream", path, **kwargs)

    def stream_unary(self, path: str, **kwargs: Any) -> None:
        self._record("client-stream", path, **kwargs)

    def stream_stream(self, path: str, **kwargs: Any) -> None:
        self._record("bidi-stream", path, **kwargs)


@pytest.mark.parametrize(
    ("module", "grpc_module", "package", "messages", "services", "enums"), UPSTREAM, ids=IDS
)
def test_services_and_method_paths_match_upstream(
    module, grpc_module, package, messages, services, enums
):
    file = module.DESCRIPTOR
    assert set(file.services_by_name) == set(services)
    for service_name, methods in services.items():
        service = file.services_by_name[service_name]
        assert service.full_name == f"{package}.{service_name}"
        channel = _RecordingChannel()
        getattr(grpc_module, f"{service_name}Stub")(channel)
        expected_paths = {
            f"/{package}.{service_name}/{method}": kind for method, (kind, _, _) in methods.items()
        }
        assert channel.paths == expected_paths
        for method_name, (kind, request, response) in methods.items():
            method = service.methods_by_name[method_name]
            assert method.input_type.full_name == f"{package}.{request}"
            assert method.output_type.full_name == f"{package}.{response}"
            assert method.client_streaming is False
            assert method.server_streaming is (kind == "server-stream")
        assert set(service.methods_by_name) == set(methods)


def test_dra_prepare_response_encodes_like_upstream():
    """Bytes written by hand from the upstream field numbers (map entry = key 1, value 2)."""
    response = dra_v1.NodePrepareResourcesResponse()
    claim = response.claims["u"]
    claim.devices.add(pool_name="p", device_name="d", cdi_device_ids=["v/c=x"])
    device = b"\x12\x01p" + b"\x1a\x01d" + b"\x22\x05v/c=x"
    value = b"\x0a" + bytes([len(device)]) + device
    entry = b"\x0a\x01u" + b"\x12" + bytes([len(value)]) + value
    assert response.SerializeToString() == b"\x0a" + bytes([len(entry)]) + entry
    # v1beta1 carries the same bytes: the kubelet converts between the two field by field.
    again = dra_v1beta1.NodePrepareResourcesResponse.FromString(response.SerializeToString())
    assert again.claims["u"].devices[0].cdi_device_ids == ["v/c=x"]


def test_registration_status_encodes_like_upstream():
    status = registration.RegistrationStatus(plugin_registered=True, error="e")
    assert status.SerializeToString() == b"\x08\x01\x12\x01e"


def test_health_message_encodes_like_upstream():
    health = health_v1beta1.DeviceHealth(
        device=health_v1beta1.DeviceIdentifier(pool_name="p", device_name="d"),
        health=health_v1beta1.UNHEALTHY,
        last_updated_time=1,
        health_check_timeout_seconds=2,
        message="m",
    )
    device = b"\x0a\x01p\x12\x01d"
    expected = b"\x0a" + bytes([len(device)]) + device + b"\x10\x02\x18\x01\x20\x02\x2a\x01m"
    assert health.SerializeToString() == expected
    assert health_v1alpha1.DeviceHealth.FromString(expected).message == "m"
