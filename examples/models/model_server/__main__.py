"""``python3 -m model_server``: run one example model on uvicorn.

Settings come from flags or the environment (flags win); the image configs set
``MODEL_KIND`` and ``MODEL_NAME``:

| env | flag | default |
| --- | --- | --- |
| ``MODEL_KIND`` | ``--model`` | (required) ``iris`` or ``minilm`` |
| ``MODEL_NAME`` | ``--name`` | ``sklearn-iris`` / ``minilm-embedding`` |
| ``MODEL_DIR`` | | ``/models/<name>``; without the model's files: ``MODEL_FALLBACK_DIR`` |
| ``MODEL_FALLBACK_DIR`` | | ``/opt/model/<name>`` (weights baked into the image) |
| | ``--model-dir`` | exactly this directory, no fallback |
| ``HTTP_HOST`` / ``HTTP_PORT`` | ``--host`` / ``--port`` | ``0.0.0.0`` / ``8080`` |
| ``METRICS_PORT`` | ``--metrics-port`` | ``8082``; 0: none (``/metrics`` is on the HTTP port too) |
| ``MAX_BATCH_SIZE`` | ``--max-batch-size`` | 32 rows |
| ``MAX_BATCH_WAIT_MS`` | ``--max-batch-wait-ms`` | 5 |
| ``MAX_QUEUE`` | ``--max-queue`` | 1024 requests, then 503 |
| ``DEVICE`` | ``--device`` | ``auto`` (minilm: CuPy if a GPU is visible) |
| ``LOG_LEVEL`` | ``--log-level`` | ``info`` |

If the model cannot be loaded the process exits 1 (the kubelet restarts it and the
pod's events say why), rather than staying up unready forever.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Iterator, Mapping
from typing import Any

import uvicorn

from model_server.app import ModelServer
from model_server.model import Model

__all__ = ["build_model", "main", "serve"]

_DEFAULT_NAMES = {"iris": "sklearn-iris", "minilm": "minilm-embedding"}


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signals to ``serve``: two servers share one process,
    and each would otherwise take SIGTERM from the other (uvicorn 0.17 and current)."""

    def install_signal_handlers(self) -> None:  # uvicorn < 0.29
        pass

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # uvicorn >= 0.29
        yield


def build_model(kind: str, name: str | None = None, device: str = "auto") -> Model:
    if kind == "iris":
        from model_server.iris import IrisModel

        return IrisModel(name or _DEFAULT_NAMES[kind])
    if kind == "minilm":
        from model_server.minilm import MiniLMModel

        return MiniLMModel(name or _DEFAULT_NAMES[kind], device=device)
    raise SystemExit(f"unknown model kind {kind!r}; use iris or minilm")


def _parse(argv: list[str] | None, env: Mapping[str, str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="model_server", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=env.get("MODEL_KIND"), choices=sorted(_DEFAULT_NAMES))
    parser.add_argument("--name", default=env.get("MODEL_NAME"))
    parser.add_argument("--model-dir", default=None)
    parser.add_argument("--host", default=env.get("HTTP_HOST", "0.0.0.0"))
    parser.add_argument("--port", type=int, default=int(env.get("HTTP_PORT", "8080")))
    parser.add_argument("--metrics-port", type=int, default=int(env.get("METRICS_PORT", "8082")))
    parser.add_argument("--max-batch-size", type=int, default=int(env.get("MAX_BATCH_SIZE", "32")))
    parser.add_argument(
        "--max-batch-wait-ms", type=float, default=float(env.get("MAX_BATCH_WAIT_MS", "5"))
    )
    parser.add_argument("--max-queue", type=int, default=int(env.get("MAX_QUEUE", "1024")))
    parser.add_argument("--device", default=env.get("DEVICE", "auto"))
    parser.add_argument("--log-level", default=env.get("LOG_LEVEL", "info"))
    args = parser.parse_args(argv)
    if args.model is None:
        parser.error("--model (or MODEL_KIND) is required")
    return args


async def _metrics_only(server: ModelServer, scope: Any, receive: Any, send: Any) -> None:
    """The metrics port's app: ``/metrics`` only, whatever the path (plus lifespan no-ops)."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    body = server.metrics.exposition()
    headers = [(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def serve(args: argparse.Namespace) -> int:
    model = build_model(args.model, args.name, args.device)
    app = ModelServer(
        model,
        model_dir=args.model_dir,
        max_batch_size=args.max_batch_size,
        max_wait_s=args.max_batch_wait_ms / 1000.0,
        max_queue=args.max_queue,
    )
    servers = [
        _Server(uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level))
    ]
    if args.metrics_port:

        async def metrics_app(scope: Any, receive: Any, send: Any) -> None:
            await _metrics_only(app, scope, receive, send)

        servers.append(
            _Server(
                uvicorn.Config(
                    metrics_app,
                    host=args.host,
                    port=args.metrics_port,
                    log_level="warning",
                    access_log=False,
                )
            )
        )

    async def exit_if_load_fails() -> None:
        await app.loaded.wait()
        if app.load_error is not None:
            stop_all()

    def stop_all() -> None:
        for server in servers:
            server.should_exit = True

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop_all)
    watcher = loop.create_task(exit_if_load_fails())
    try:
        await asyncio.gather(*(server.serve() for server in servers))
    finally:
        watcher.cancel()
    return 1 if app.load_error is not None else 0


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv, os.environ)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    return asyncio.run(serve(args))


if __name__ == "__main__":
    sys.exit(main())
