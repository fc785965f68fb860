"""The ``/metrics`` HTTP endpoint (Prometheus text or OpenMetrics on request)."""

from __future__ import annotations

import logging

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

__all__ = ["MetricsServer"]

log = logging.getLogger(__name__)


class MetricsServer:
    """Serves one registry on ``host:port``; collectors run at scrape time."""

    def __init__(self, registry: CollectorRegistry, address: str) -> None:
        self._registry = registry
        host, _, port = address.rpartition(":")
        self._host = host.strip("[]")
        self._port = int(port)
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/", self._index)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            address = f"{self._host}:{self._port}"
            raise OSError(exc.errno, f"metrics address {address}: {exc.strerror}") from None
        self._runner = runner
        server = site._server  # the bound socket tells the real port when port was 0
        sockets = getattr(server, "sockets", None) or []
        port = sockets[0].getsockname()[1] if sockets else self._port
        host = f"[{self._host}]" if ":" in self._host else self._host
        self.url = f"http://{host}:{port}/metrics"
        log.info("metrics served on %s", self.url)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        body = encoder(self._registry)
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def _index(self, request: web.Request) -> web.Response:
        return web.Response(text="model-agent: metrics at /metrics\n")
