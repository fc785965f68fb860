"""An asyncio CRI client over a unix socket: the stubs of both services."""

from __future__ import annotations

import grpc

from agent.api.cri.runtime.v1 import api_pb2_grpc as pb_grpc

__all__ = ["CriClient"]

MAX_MESSAGE_BYTES = 16 * 1024 * 1024


class CriClient:
    """``async with CriClient(path) as cri: await cri.runtime.Version(...)``.

    ``runtime`` and ``images`` are the generated stubs; ``timeout`` is the
    deadline callers pass to each call (``timeout=cri.timeout``).
    """

    def __init__(self, socket_path: str, *, timeout: float | None = 30.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self.channel = grpc.aio.insecure_channel(
            f"unix://{socket_path}",
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.default_authority", "localhost"),
            ],
        )
        self.runtime = pb_grpc.RuntimeServiceStub(self.channel)
        self.images = pb_grpc.ImageServiceStub(self.channel)

    async def __aenter__(self) -> CriClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.channel.close()
