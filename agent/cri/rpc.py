"""The one gRPC interceptor: the boundary every CRI call crosses.

For each call it

* gives the call a request id and puts ``[RPC id]`` on every log line,
* answers ``UNAVAILABLE`` while the agent is still recovering its state
  (``Version`` and ``Status`` are always answered),
* answers ``INVALID_ARGUMENT`` for bytes that do not decode as the request,
* maps :class:`~agent.errors.AgentError` to its gRPC code, a missing servicer
  method to ``UNIMPLEMENTED``, and any other exception to ``INTERNAL`` with a
  short message (the traceback goes to the log, never on the wire),
* records ``model_agent_cri_operations_total`` / ``..._duration_seconds`` /
  ``..._in_flight`` and, for server streams, the messages sent; long-lived streams
  (``GetContainerEvents``) are counted but not timed (``metrics.rpc``).

This is the only module that calls ``context.abort``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError

from agent.errors import AgentError, InvalidArgument, Unavailable
from agent.log import RpcContext, current_rpc
from agent.metrics import RpcMetrics

__all__ = ["RpcInterceptor"]

log = logging.getLogger("agent.cri")

_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")

#: Answered even while the agent recovers: the kubelet validates the runtime
#: with Version and learns why it is not ready from Status.
_ALWAYS_SERVED = frozenset({"Version", "Status"})

#: Read-only RPCs the kubelet polls every second or so: logged at DEBUG.
_QUIET_PREFIXES = ("List", "Stream", "Version", "Status", "ImageFsInfo", "RuntimeConfig")
_QUIET_SUFFIXES = ("Status", "Stats", "Info", "Metrics", "Descriptors")


class _Malformed:
    """Stands in for a request whose bytes did not decode."""

    def __init__(self, error: Exception) -> None:
        self.error = error


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except DecodeError as exc:
            return _Malformed(exc)

    return deserialize


def _is_quiet(operation: str) -> bool:
    return operation.startswith(_QUIET_PREFIXES) or operation.endswith(_QUIET_SUFFIXES)


class RpcInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, metrics: RpcMetrics, ready: asyncio.Event, version: str) -> None:
        self._metrics = metrics
        self._ready = ready
        self._version = version

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[_Req, _Resp] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[_Req, _Resp] | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not method.startswith("/runtime.v1."):
            return handler  # unknown methods and reflection pass through untouched
        operation = method.rsplit("/", 1)[-1]
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(operation, handler.unary_unary),
                request_deserializer=_tolerant(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._stream(operation, handler.unary_stream),
                request_deserializer=_tolerant(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        return handler  # pragma: no cover - CRI has no client-streaming RPCs

    def _unary(self, operation: str, behavior: Callable[..., Any]) -> Callable[..., Any]:
        async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            with _Call(self, operation, request) as rpc:
                try:
                    rpc.admit()
                    result = behavior(request, context)
                    if inspect.isawaitable(result):
                        result = await result
                    return result
                except BaseException as exc:
                    await rpc.fail(exc, context)
                    raise  # pragma: no cover - fail() always raises

        return call

    def _stream(self, operation: str, behavior: Callable[..., Any]) -> Callable[..., Any]:
        async def call(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            with _Call(self, operation, request) as rpc:
                try:
                    rpc.admit()
                    result = behavior(request, context)
                    if inspect.isawaitable(result):
                        result = await result
                    metrics = self._metrics
                    if hasattr(result, "__aiter__"):
                        async for item in result:
                            metrics.message_sent(operation)
                            yield item
                    elif result is not None:
                        for item in result:
                            metrics.message_sent(operation)
                            yield item
                except BaseException as exc:
                    await rpc.fail(exc, context)
                    raise  # pragma: no cover - fail() always raises

        return call


class _Call:
    """One RPC in flight: its log context, timing, and final status code."""

    def __init__(self, interceptor: RpcInterceptor, operation: str, request: Any) -> None:
        self._interceptor = interceptor
        self.operation = operation
        self.request = request
        self.code = grpc.StatusCode.OK
        self.quiet = _is_quiet(operation)

    def __enter__(self) -> _Call:
        self.request_id = secrets.token_hex(4)
        self._token = current_rpc.set(RpcContext(self.operation, self.request_id))
        self._start = time.monotonic()
        self._interceptor._metrics.started(self.operation)
        log.log(logging.DEBUG if self.quiet else logging.INFO, "request")
        return self

    def admit(self) -> None:
        """Refuse the call before the servicer sees it, if it must be refused."""
        if isinstance(self.request, _Malformed):
            raise InvalidArgument(f"malformed {self.operation} request: {self.request.error}")
        if not self._interceptor._ready.is_set() and self.operation not in _ALWAYS_SERVED:
            raise Unavailable("model-agent is recovering its state; retry shortly")

    def __exit__(self, *exc_info: object) -> None:
        elapsed = time.monotonic() - self._start
        self._interceptor._metrics.finished(self.operation, self.code.name, elapsed)
        if self.code is grpc.StatusCode.OK:
            log.log(logging.DEBUG if self.quiet else logging.INFO, "done in %.3fs", elapsed)
        current_rpc.reset(self._token)

    async def fail(self, exc: BaseException, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        """Answer the call with the status ``exc`` maps to; always raises."""
        if isinstance(exc, asyncio.CancelledError | GeneratorExit):  # the client went away
            self.code = grpc.StatusCode.CANCELLED
            raise exc
        if isinstance(exc, grpc.aio.AbortError):
            code = context.code()
            self.code = code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN
            raise exc
        if isinstance(exc, AgentError):
            self.code = exc.grpc_code
            level = logging.DEBUG if self.quiet else logging.WARNING
            log.log(level, "failed: %s: %s", self.code.name, exc)
            await context.abort(self.code, exc.wire_message())
        if isinstance(exc, NotImplementedError):
            self.code = grpc.StatusCode.UNIMPLEMENTED
            log.info("not implemented")
            await context.abort(
                self.code,
                f"{self.operation} is not implemented by model-agent {self._interceptor._version}",
            )
        self.code = grpc.StatusCode.INTERNAL
        log.error("internal error", exc_info=exc)
        await context.abort(
            self.code,
            f"internal error in {self.operation} (request {self.request_id}); see the agent log",
        )
