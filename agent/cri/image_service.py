"""``runtime.v1.ImageService``: pull, list, inspect and remove images.

RPCs not overridden here fall through to the generated base class, which the
interceptor answers with ``UNIMPLEMENTED`` and a message naming the RPC.
"""

from __future__ import annotations

from agent.api.cri.runtime.v1 import api_pb2_grpc as pb_grpc

__all__ = ["ImageService"]


class ImageService(pb_grpc.ImageServiceServicer):
    pass
