"""The one error vocabulary of model-agent.

Every package raises these (never grpc errors, never bare ``RuntimeError`` for
expected failures); the single gRPC interceptor in ``agent.cri.rpc`` maps them
to status codes. This module imports nothing from the rest of the agent.

    AgentError (UNKNOWN)
    ├── NotFound            NOT_FOUND            unknown pod, container, image
    ├── AlreadyExists       ALREADY_EXISTS       a name reserved by another id
    ├── InvalidArgument     INVALID_ARGUMENT     a request that can never succeed
    ├── FailedPrecondition  FAILED_PRECONDITION  valid, but not in this state
    ├── Unavailable         UNAVAILABLE          still recovering, or shutting down
    ├── DeadlineExceeded    DEADLINE_EXCEEDED    a runtime, CNI or pull timeout
    ├── Unimplemented       UNIMPLEMENTED        an RPC or feature not supported
    ├── Unauthenticated     UNAUTHENTICATED      registry 401 after the token flow
    ├── PermissionDenied    PERMISSION_DENIED    registry 403
    ├── ResourceExhausted   RESOURCE_EXHAUSTED   disk full, too many objects
    ├── RegistryUnavailable UNKNOWN, "RegistryUnavailable: ..." (kubelet matches the prefix)
    └── ConfigError         (not an RPC error) a config file or flag the agent refuses
"""

from __future__ import annotations

import grpc

__all__ = [
    "AgentError",
    "AlreadyExists",
    "ConfigError",
    "DeadlineExceeded",
    "FailedPrecondition",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "RegistryUnavailable",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
]


class AgentError(Exception):
    """Base of every expected failure; carries the gRPC code it is answered with."""

    grpc_code: grpc.StatusCode = grpc.StatusCode.UNKNOWN
    #: Prepended to the message on the wire; the kubelet matches some prefixes.
    wire_prefix: str = ""

    def wire_message(self) -> str:
        return f"{self.wire_prefix}{self}"


class NotFound(AgentError):
    grpc_code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(AgentError):
    grpc_code = grpc.StatusCode.ALREADY_EXISTS


class InvalidArgument(AgentError):
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


class FailedPrecondition(AgentError):
    grpc_code = grpc.StatusCode.FAILED_PRECONDITION


class Unavailable(AgentError):
    grpc_code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(AgentError):
    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unimplemented(AgentError):
    grpc_code = grpc.StatusCode.UNIMPLEMENTED


class Unauthenticated(AgentError):
    grpc_code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(AgentError):
    grpc_code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(AgentError):
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class RegistryUnavailable(AgentError):
    """The registry could not be reached or kept failing.

    The kubelet strips ``UNKNOWN`` codes and recognises this failure by the
    message prefix (cri-client ``remote_image.go``, kubelet ``evalCRIPullErr``).
    """

    grpc_code = grpc.StatusCode.UNKNOWN
    wire_prefix = "RegistryUnavailable: "


class ConfigError(AgentError):
    """A configuration file, environment variable or flag the agent refuses."""

    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
