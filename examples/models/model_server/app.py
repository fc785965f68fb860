"""The ASGI application: v2 REST routes, a background model load, metrics, errors.

Owns routing and HTTP status codes; a plain ASGI app (no framework) so the images need
only uvicorn. Routes (KServe v2 / Open Inference Protocol):

- ``GET /v2/health/live``: 200 while the process serves; ``GET /v2/health/ready``: 200
  once the model is loaded, else 400 (the spec: "a 4xx status code indicates false");
- ``GET /v2``: server metadata; ``GET /v2/models/<name>[/versions/<v>]``: model metadata;
- ``GET /v2/models/<name>[/versions/<v>]/ready``; ``POST …/infer``;
- ``GET /metrics``: Prometheus exposition.

Errors answer ``{"error": "..."}``: 400 bad request, 404 unknown model or path, 405 wrong
method, 413 body too large, 503 not ready or queue full, 500 a bug (logged, no traceback
on the wire). The model loads in a thread after startup, so liveness answers at once and
readiness turns true when the weights are in memory.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from model_server.batching import BatcherStopped, DynamicBatcher, QueueFull
from model_server.metrics import CONTENT_TYPE, ServerMetrics
from model_server.model import Model, resolve_model_dir
from model_server.protocol import ProtocolError, error_body, parse_request, response_body

__all__ = ["SERVER_NAME", "SERVER_VERSION", "ModelServer"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

SERVER_NAME = "model-agent-example-server"
SERVER_VERSION = "0.1.0"
log = logging.getLogger(__name__)
_JSON = (b"content-type", b"application/json")


class _Answer(Exception):
    """Stop handling and answer ``status`` with ``body``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.body = error_body(message)


class ModelServer:
    """Serves one ``model``; ``model_dir`` None resolves MODEL_DIR / MODEL_FALLBACK_DIR."""

    def __init__(
        self,
        model: Model,
        *,
        model_dir: str | None = None,
        max_batch_size: int = 32,
        max_wait_s: float = 0.005,
        max_queue: int = 1024,
        max_body_bytes: int = 16 << 20,
        metrics: ServerMetrics | None = None,
    ) -> None:
        self.model = model
        self.model_dir = model_dir
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics or ServerMetrics()
        self.loaded = asyncio.Event()
        self.load_error: BaseException | None = None
        self._load_task: asyncio.Task[None] | None = None
        name = model.name
        self.batcher: DynamicBatcher[Any, dict[str, Any]] = DynamicBatcher(
            model.run_batch,
            max_batch_size=max_batch_size,
            max_wait_s=max_wait_s,
            max_queue=max_queue,
            on_queue_length=self.metrics.queue_length.labels(name).set,
            on_batch=self.metrics.batch_size.labels(name).observe,
        )
        self.metrics.ready.labels(name).set(0)
        self.metrics.queue_length.labels(name).set(0)
        self.metrics.in_flight.labels(name).set(0)

    @property
    def ready(self) -> bool:
        return self.loaded.is_set() and self.load_error is None

    # -- lifecycle ----------------------------------------------------------------------

    async def startup(self) -> None:
        self.batcher.start()
        self._load_task = asyncio.get_running_loop().create_task(self._load())

    async def shutdown(self) -> None:
        if self._load_task is not None and not self._load_task.done():
            self._load_task.cancel()
        await self.batcher.stop()

    async def _load(self) -> None:
        started = time.monotonic()
        try:
            directory = self.model_dir or resolve_model_dir(
                self.model.name, getattr(self.model, "required_files", ())
            )
            await asyncio.to_thread(self.model.load, directory)
        except Exception as exc:
            self.load_error = exc
            log.error("loading model %s failed: %s", self.model.name, exc)
        else:
            self.metrics.ready.labels(self.model.name).set(1)
            self.metrics.info.labels(
                self.model.name, self.model.version or "", self.model.device
            ).set(1)
            log.info(
                "model %s version %s loaded from %s on %s in %.2fs",
                self.model.name,
                self.model.version,
                directory,
                self.model.device,
                time.monotonic() - started,
            )
        finally:
            self.loaded.set()

    # -- ASGI ---------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await self._http(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.startup()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        method, path = scope["method"], scope["path"].rstrip("/") or "/"
        try:
            if path == "/metrics":
                self._allow(method, "GET")
                await _send(send, 200, self.metrics.exposition(), CONTENT_TYPE.encode())
                return
            parts = path.split("/")[1:]
            if parts[:1] != ["v2"]:
                raise _Answer(404, f"no route {path}")
            if parts[1:] in (["health", "live"], ["health", "ready"]):
                self._allow(method, "GET")
                await self._health(send, parts[2])
            elif len(parts) == 1:
                self._allow(method, "GET")
                body = {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": []}
                await _send_json(send, 200, body)
            elif parts[1] == "models" and len(parts) >= 3:
                await self._model_route(method, parts[2:], scope, receive, send)
            else:
                raise _Answer(404, f"no route {path}")
        except _Answer as answer:
            await _send(send, answer.status, answer.body)
        except Exception:
            log.exception("%s %s failed", method, path)
            await _send(send, 500, error_body("internal error"))

    @staticmethod
    def _allow(method: str, allowed: str) -> None:
        if method != allowed:
            raise _Answer(405, f"method {method} not allowed here; use {allowed}")

    async def _health(self, send: Send, which: str) -> None:
        if which == "live":
            await _send_json(send, 200, {"live": True})
        else:
            await _send_json(send, 200 if self.ready else 400, {"ready": self.ready})

    async def _model_route(
        self, method: str, parts: list[str], scope: Scope, receive: Receive, send: Send
    ) -> None:
        """``parts``: <name> [versions <v>] [ready|infer]."""
        name, rest = parts[0], parts[1:]
        version = None
        if rest[:1] == ["versions"]:
            if len(rest) < 2:
                raise _Answer(404, "no route: a version is missing")
            version, rest = rest[1], rest[2:]
        if name != self.model.name:
            raise _Answer(404, f"model {name} not found")
        if version is not None and self.ready and version != self.model.version:
            raise _Answer(404, f"model {name} version {version} not found")
        if not rest:
            self._allow(method, "GET")
            await _send_json(send, 200, self._metadata())
        elif rest == ["ready"]:
            self._allow(method, "GET")
            await _send_json(send, 200 if self.ready else 400, {"name": name, "ready": self.ready})
        elif rest == ["infer"]:
            self._allow(method, "POST")
            await self._infer(scope, receive, send)
        else:
            raise _Answer(404, f"no route /v2/models/{'/'.join(parts)}")

    def _metadata(self) -> dict[str, Any]:
        model = self.model
        return {
            "name": model.name,
            "versions": [model.version] if model.version else [],
            "platform": model.platform,
            **model.metadata(),
        }

    async def _infer(self, scope: Scope, receive: Receive, send: Send) -> None:
        name = self.model.name
        metrics = self.metrics
        started = time.perf_counter()
        metrics.in_flight.labels(name).inc()
        status = 500
        try:
            status, body = await self._infer_answer(scope, receive)
            await _send(send, status, body)
        finally:
            metrics.in_flight.labels(name).dec()
            metrics.requests.labels(name, str(status)).inc()
            metrics.duration.labels(name, str(status)).observe(time.perf_counter() - started)

    async def _infer_answer(self, scope: Scope, receive: Receive) -> tuple[int, bytes]:
        try:
            body = await _read_body(scope, receive, self.max_body_bytes)
            if not self.ready:
                raise _Answer(503, f"model {self.model.name} is not ready")
            request = parse_request(body)
            unknown = [n for n in request.outputs if n not in self.model.output_names]
            if unknown:
                raise ProtocolError(f"unknown output {unknown[0]!r}")
            item, rows = self.model.prepare(request)
            outputs = await self.batcher.submit(item, rows)
        except ProtocolError as exc:
            return exc.status, error_body(exc.message)
        except _Answer as answer:
            return answer.status, answer.body
        except QueueFull as exc:
            return 503, error_body(f"overloaded: {exc}")
        except BatcherStopped as exc:
            return 503, error_body(str(exc))
        except Exception:
            log.exception("inference on %s failed", self.model.name)
            return 500, error_body("internal error")
        return 200, response_body(
            self.model.name, self.model.version, request.id, outputs, request.outputs
        )


async def _read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    for key, value in scope.get("headers", []):
        if key == b"content-length" and value.isdigit() and int(value) > limit:
            raise _Answer(413, f"request body over {limit} bytes")
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Answer(400, "client disconnected")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _Answer(413, f"request body over {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _send(send: Send, status: int, body: bytes, content_type: bytes = _JSON[1]) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _send_json(send: Send, status: int, value: Any) -> None:
    await _send(send, status, json.dumps(value).encode())
