"""The CRI gRPC edge: the only package that touches CRI protobuf types.

Servicers validate and convert requests, call the domain packages with plain
values, and convert the answers back; ``rpc`` maps errors to status codes.
"""

from agent.cri.image_service import ImageService
from agent.cri.rpc import RpcInterceptor
from agent.cri.runtime_service import CRI_API_VERSION, RUNTIME_NAME, RuntimeService
from agent.cri.server import CriServer

__all__ = [
    "CRI_API_VERSION",
    "RUNTIME_NAME",
    "CriServer",
    "ImageService",
    "RpcInterceptor",
    "RuntimeService",
]
