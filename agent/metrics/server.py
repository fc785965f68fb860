"""The ``/metrics`` HTTP endpoint: content negotiation, gzip, TLS, scrape auth.

A registry and a scrape source are served together: Prometheus text (0.0.4) by
default, OpenMetrics 1.0 when the scraper's ``Accept`` asks for it (Prometheus
does), gzip-compressed when ``Accept-Encoding`` allows. Before each scrape the
source's ``refresh`` gathers what its families read (``exporter.NodeMetrics``), so
nothing blocks on I/O while encoding; the encoding (``exposition.encode``) runs in
a thread. ``/`` answers a one-line index. Requests are counted by status code.
Imports ``config`` and this package only (the source is any ``ScrapeSource``).
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter

from agent.config import MetricsSection
from agent.metrics import names
from agent.metrics.access import ScrapeAuth, TlsFiles
from agent.metrics.exposition import Family, encode

__all__ = ["MetricsServer", "ScrapeSource"]

log = logging.getLogger(__name__)

#: zlib's window bits for a gzip member (header and CRC), as ``gzip.compress`` writes
_GZIP_WBITS = 16 + zlib.MAX_WBITS

#: Bodies smaller than this go uncompressed: gzip would not pay for its header.
_GZIP_MIN_BYTES = 1024


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether ``Accept-Encoding`` allows gzip (RFC 9110 12.5.3): ``gzip;q=0`` refuses
    it, ``*`` with q > 0 allows it unless gzip is named; an unreadable q is q=1."""
    named: float | None = None
    wildcard: float | None = None
    for item in accept_encoding.lower().split(","):
        coding, *params = (part.strip() for part in item.split(";"))
        q = 1.0
        for param in params:
            key, _, raw = param.partition("=")
            if key.strip() == "q":
                try:
                    q = float(raw.strip())
                except ValueError:
                    q = 1.0
        if coding in ("gzip", "x-gzip"):
            named = q if named is None else max(named, q)
        elif coding == "*":
            wildcard = q
    chosen = named if named is not None else wildcard
    return chosen is not None and chosen > 0


class ScrapeSource(Protocol):
    async def refresh(self) -> None:
        """Gather what ``families`` reads (on the event loop, before each scrape)."""
        ...

    def families(self) -> Sequence[Family]:
        """The families of this scrape (called in a thread)."""
        ...


class MetricsServer:
    """Serves a registry and a scrape source on ``settings.address``."""

    def __init__(
        self,
        registry: CollectorRegistry,
        settings: MetricsSection,
        *,
        source: ScrapeSource | None = None,
    ) -> None:
        self._registry = registry
        self._settings = settings
        self._source = source
        host, _, port = settings.address.rpartition(":")
        self._host = host.strip("[]")
        self._port = int(port)
        self._runner: web.AppRunner | None = None
        self._auth: ScrapeAuth | None = None
        self._tls: TlsFiles | None = None
        self._requests = Counter(
            names.METRICS_REQUESTS_TOTAL.removesuffix("_total"),
            "Requests to the metrics endpoint, by HTTP status code",
            ["code"],
            registry=registry,
        )
        self.url = ""

    async def start(self) -> None:
        """Bind and serve; unreadable auth or TLS files are a ``ConfigError`` naming the key."""
        self._auth = ScrapeAuth(self._settings)
        self._tls = TlsFiles(self._settings) if self._settings.tls_cert_file else None
        app = web.Application(middlewares=[self._guard])
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/", self._index)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(
            runner,
            self._host,
            self._port,
            reuse_address=True,
            ssl_context=self._tls.context if self._tls else None,
        )
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
        scheme = "https" if self._tls else "http"
        self.url = f"{scheme}://{host}:{port}/metrics"
        auth = " (scrape auth required)" if self._auth.enabled else ""
        log.info("metrics served on %s%s", self.url, auth)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @web.middleware
    async def _guard(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Auth first, then the handler; every answer is counted by its status."""
        if self._tls is not None:
            self._tls.refresh()  # applies to the next handshake
        assert self._auth is not None
        verdict = self._auth.check(request.headers.get("Authorization", ""))
        if not verdict.allowed:
            self._requests.labels("401").inc()
            return web.Response(
                status=401,
                text="401 Unauthorized: this endpoint needs scrape credentials\n",
                headers={"WWW-Authenticate": verdict.challenge},
            )
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            self._requests.labels(str(exc.status)).inc()
            raise
        except Exception:
            self._requests.labels("500").inc()
            log.exception("metrics: scrape failed")
            return web.Response(status=500, text="500: the scrape failed; see the agent log\n")
        self._requests.labels(str(response.status)).inc()
        return response

    async def _metrics(self, request: web.Request) -> web.Response:
        if self._source is not None:
            await self._source.refresh()
        accept = request.headers.get("Accept", "")
        wants_gzip = accepts_gzip(request.headers.get("Accept-Encoding", ""))
        body, content_type, compressed = await asyncio.to_thread(self._encode, accept, wants_gzip)
        headers = {"Content-Type": content_type, "Vary": "Accept, Accept-Encoding"}
        if compressed:
            headers["Content-Encoding"] = "gzip"
        return web.Response(body=body, headers=headers)

    def _encode(self, accept: str, wants_gzip: bool) -> tuple[bytes, str, bool]:
        families = self._source.families() if self._source is not None else ()
        pieces, content_type = encode(self._registry, families, accept)
        if wants_gzip and sum(len(p) for p in pieces) >= _GZIP_MIN_BYTES:
            compressor = zlib.compressobj(1, zlib.DEFLATED, _GZIP_WBITS)
            compressed = [compressor.compress(p) for p in pieces]
            compressed.append(compressor.flush())
            return b"".join(compressed), content_type, True
        return b"".join(pieces), content_type, False

    async def _index(self, request: web.Request) -> web.Response:
        return web.Response(text="model-agent: metrics at /metrics\n")
