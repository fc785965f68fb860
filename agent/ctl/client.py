"""An asyncio CRI client over unix sockets: the stubs of both services.

The image service may sit on its own socket (crictl's ``--image-endpoint``);
with ``debug`` every request and response is logged to a stream, as
``crictl --debug`` does. Imports only grpc, protobuf and the generated stubs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TextIO

import grpc
from google.protobuf import text_format
from google.protobuf.message import Message

from agent.api.cri.runtime.v1 import api_pb2_grpc as pb_grpc

__all__ = ["CriClient"]

MAX_MESSAGE_BYTES = 16 * 1024 * 1024


def _show(message: object) -> str:
    if isinstance(message, Message):
        return "{" + text_format.MessageToString(message, as_one_line=True) + "}"
    return repr(message)


class _DebugUnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, log: Callable[[str], None]) -> None:
        self._log = log

    async def intercept_unary_unary(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        method = client_call_details.method
        name = method.decode() if isinstance(method, bytes) else str(method)
        self._log(f"{name} request: {_show(request)}")
        call = await continuation(client_call_details, request)
        try:
            response = await call
        except grpc.aio.AioRpcError as exc:
            self._log(f"{name} error: {exc.code().name}: {exc.details()}")
            raise
        self._log(f"{name} response: {_show(response)}")
        return response


class _DebugUnaryStream(grpc.aio.UnaryStreamClientInterceptor):
    def __init__(self, log: Callable[[str], None]) -> None:
        self._log = log

    async def intercept_unary_stream(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        method = client_call_details.method
        name = method.decode() if isinstance(method, bytes) else str(method)
        self._log(f"{name} request: {_show(request)} (streamed answer)")
        return await continuation(client_call_details, request)


def _channel(socket_path: str, debug: TextIO | None) -> grpc.aio.Channel:
    interceptors: list[Any] = []
    if debug is not None:

        def log(line: str) -> None:
            debug.write(f"DEBU {line}\n")
            debug.flush()

        interceptors = [_DebugUnaryUnary(log), _DebugUnaryStream(log)]
    return grpc.aio.insecure_channel(
        f"unix://{socket_path}",
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.default_authority", "localhost"),
        ],
        interceptors=interceptors or None,
    )


class CriClient:
    """``async with CriClient(path) as cri: await cri.runtime.Version(...)``.

    ``runtime`` and ``images`` are the generated stubs; ``timeout`` is the
    deadline callers pass to each call (``timeout=cri.timeout``).
    """

    def __init__(
        self,
        socket_path: str,
        *,
        timeout: float | None = 30.0,
        image_socket_path: str | None = None,
        debug: TextIO | None = None,
    ) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self.channel = _channel(socket_path, debug)
        self._channels = [self.channel]
        image_channel = self.channel
        if image_socket_path and image_socket_path != socket_path:
            image_channel = _channel(image_socket_path, debug)
            self._channels.append(image_channel)
        self.runtime = pb_grpc.RuntimeServiceStub(self.channel)
        self.images = pb_grpc.ImageServiceStub(image_channel)

    async def __aenter__(self) -> CriClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()
