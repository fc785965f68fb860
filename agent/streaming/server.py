"""The CRI streaming server: ``/exec/<token>``, ``/attach/<token>``, ``/portforward/<token>``.

The ``Exec``/``Attach``/``PortForward`` RPCs park a validated request under a
one-time token (``tokens``) and return ``http://<address>/<kind>/<token>``.
The kubelet proxies the client's upgrade to that URL unchanged; crictl and
critest dial it directly. Each connection:

1. one request head (GET or POST), read within the creation timeout;
2. the token is consumed (unknown, used, expired or for another kind: 404);
3. ``Upgrade: websocket`` → the ``channel.k8s.io`` family; otherwise SPDY/3.1
   with ``X-Stream-Protocol-Version`` negotiation (first client protocol we
   serve; none sent: 400; no match: 403 listing ours);
4. the session runs until the process ends, the client leaves or the idle
   timeout passes. Stopping the server ends every session (exec'd processes
   are killed with them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from agent.errors import AgentError
from agent.oci import ConsoleConnection, ExecSession
from agent.streaming import portforward, remotecommand
from agent.streaming.channels import WsChannels
from agent.streaming.http import BadRequest, Request, read_request, write_response
from agent.streaming.remotecommand import Streams
from agent.streaming.spdy import SpdyConnection, SpdyStream
from agent.streaming.tokens import (
    AttachRequest,
    ExecRequest,
    PortForwardRequest,
    StreamRequest,
    TokenCache,
)
from agent.streaming.websocket import WebSocket, accept_key, is_websocket_request

__all__ = [
    "PORTFORWARD_PROTOCOLS",
    "REMOTECOMMAND_PROTOCOLS",
    "StreamingBackend",
    "StreamingServer",
    "StreamingTimeouts",
]

log = logging.getLogger(__name__)

#: SPDY protocols, preferred first (the kubelet library's list; v5 is not in it).
REMOTECOMMAND_PROTOCOLS = (
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
)
PORTFORWARD_PROTOCOLS = ("portforward.k8s.io",)
#: WebSocket subprotocol -> (base64 framing, JSON status, v5 close signals).
_WS_REMOTECOMMAND = {
    "": (False, False, False),
    "channel.k8s.io": (False, False, False),
    "base64.channel.k8s.io": (True, False, False),
    "v4.channel.k8s.io": (False, True, False),
    "v4.base64.channel.k8s.io": (True, True, False),
    "v5.channel.k8s.io": (False, True, True),
}
_WS_PORTFORWARD = {
    "": (False, False, False),
    "v4.channel.k8s.io": (False, True, False),
    "v4.base64.channel.k8s.io": (True, True, False),
}
_STDIN, _STDOUT, _STDERR, _ERROR, _RESIZE = range(5)
#: Port i takes channels 2i and 2i+1, and a channel is one byte.
_MAX_WS_PORTS = 128
#: SPDY protocols without a resize stream.
_NO_RESIZE_PROTOCOLS = frozenset({"v2.channel.k8s.io", "channel.k8s.io"})


class AttachTarget(Protocol):
    @property
    def socket(self) -> str: ...

    @property
    def control_fifo(self) -> str: ...

    @property
    def tty(self) -> bool: ...

    @property
    def stdin(self) -> bool: ...


class StreamingBackend(Protocol):
    """What the server needs from the runtime (``PodService`` provides it)."""

    async def exec_session(
        self,
        container_id: str,
        cmd: list[str],
        *,
        tty: bool,
        stdin: bool,
        console_size: tuple[int, int] | None = None,
    ) -> ExecSession: ...

    def attach_target(self, container_id: str) -> AttachTarget: ...

    def network_namespace(self, sandbox_id: str) -> str: ...


@dataclass(frozen=True, slots=True)
class StreamingTimeouts:
    #: a token not used within this is forgotten
    token_ttl: float = 60.0
    #: the request head, and every stream a session needs, must arrive within this
    creation: float = 30.0
    #: a connection that carries nothing for this long is closed
    idle: float = 4 * 3600.0


class StreamingServer:
    def __init__(
        self,
        address: str,
        backend: StreamingBackend,
        timeouts: StreamingTimeouts | None = None,
    ) -> None:
        self._address = address
        self._backend = backend
        self.timeouts = timeouts or StreamingTimeouts()
        self.tokens = TokenCache(ttl=self.timeouts.token_ttl)
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self.base_url = ""

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        host, _, port = self._address.rpartition(":")
        host = host.strip("[]") or "127.0.0.1"
        self._server = await asyncio.start_server(self._accept, host, int(port or 0))
        bound = self._server.sockets[0].getsockname()
        shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
        self.base_url = f"http://{shown}:{bound[1]}"
        log.info("streaming server listening on %s", self.base_url)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)

    @property
    def active_connections(self) -> int:
        return len(self._connections)

    def url_for(self, request: StreamRequest) -> str:
        """Park a validated request; the absolute one-time URL that serves it."""
        kind = {ExecRequest: "exec", AttachRequest: "attach", PortForwardRequest: "portforward"}[
            type(request)
        ]
        return f"{self.base_url}/{kind}/{self.tokens.insert(request)}"

    # -- one connection ----------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass
        except Exception:
            log.exception("streaming connection failed")
        finally:
            self._connections.discard(task)
            with contextlib.suppress(Exception):
                writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await read_request(reader, self.timeouts.creation)
        except BadRequest as exc:
            await write_response(writer, 400, body=f"{exc}\n")
            return
        if request.method not in ("GET", "POST"):
            await write_response(writer, 405, [("Allow", "GET, POST")], "method not allowed\n")
            return
        kind, _, token = request.path.strip("/").partition("/")
        wanted = {"exec": ExecRequest, "attach": AttachRequest, "portforward": PortForwardRequest}
        parked = self.tokens.consume(token) if kind in wanted and "/" not in token else None
        if parked is None or not isinstance(parked, wanted[kind]):
            await write_response(writer, 404, body="unknown or expired streaming token\n")
            return
        if is_websocket_request(request):
            await self._serve_websocket(request, parked, reader, writer)
        else:
            await self._serve_spdy(request, parked, reader, writer)

    # -- SPDY ----------------------------------------------------------------------------

    async def _spdy_handshake(
        self, request: Request, writer: asyncio.StreamWriter, supported: tuple[str, ...]
    ) -> str | None:
        upgrade = "upgrade" in request.header("connection").lower() and (
            "spdy/3.1" in request.header("upgrade").lower()
        )
        if not upgrade:
            await write_response(
                writer, 400, body="unable to upgrade: missing upgrade headers in request\n"
            )
            return None
        offered = request.header_tokens("x-stream-protocol-version")
        if not offered:
            await write_response(
                writer, 400, body="unable to upgrade: X-Stream-Protocol-Version is required\n"
            )
            return None
        chosen = next((p for p in offered if p in supported), None)
        if chosen is None:
            await write_response(
                writer,
                403,
                [("X-Accepted-Stream-Protocol-Versions", p) for p in supported],
                f"unable to upgrade: unable to negotiate protocol: client supports {offered}, "
                f"server accepts {list(supported)}\n",
            )
            return None
        await write_response(
            writer,
            101,
            [
                ("Connection", "Upgrade"),
                ("Upgrade", "SPDY/3.1"),
                ("X-Stream-Protocol-Version", chosen),
            ],
        )
        return chosen

    async def _serve_spdy(
        self,
        request: Request,
        parked: StreamRequest,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        is_forward = isinstance(parked, PortForwardRequest)
        supported = PORTFORWARD_PROTOCOLS if is_forward else REMOTECOMMAND_PROTOCOLS
        protocol = await self._spdy_handshake(request, writer, supported)
        if protocol is None:
            return
        pairs = portforward.SpdyPairs()
        expected = remotecommand.ExpectedStreams(
            set()
            if isinstance(parked, PortForwardRequest)
            else remotecommand.stream_kinds(parked, v1_or_v2=protocol in _NO_RESIZE_PROTOCOLS)
        )
        accept: Callable[[SpdyStream], bool] = pairs.accept if is_forward else expected.accept
        connection = SpdyConnection(
            reader, writer, server=True, accept=accept, idle_timeout=self.timeouts.idle
        )
        reading = asyncio.ensure_future(connection.serve())
        try:
            if isinstance(parked, PortForwardRequest):
                netns_path = self._backend.network_namespace(parked.sandbox_id)
                await portforward.serve_spdy(
                    connection,
                    pairs,
                    lambda port: portforward.dial(netns_path, port),
                    creation_timeout=self.timeouts.creation,
                    describe=parked.sandbox_id,
                )
            else:
                streams = await self._spdy_streams(connection, expected, protocol, parked)
                if streams is not None:
                    await self._run_remotecommand(streams, parked)
        except AgentError as exc:
            log.info("streaming session for %s ended: %s", type(parked).__name__, exc)
        finally:
            await connection.close()
            reading.cancel()
            await asyncio.gather(reading, return_exceptions=True)

    async def _spdy_streams(
        self,
        connection: SpdyConnection,
        expected: remotecommand.ExpectedStreams,
        protocol: str,
        parked: ExecRequest | AttachRequest,
    ) -> Streams | None:
        """Wait (up to the creation timeout) for every stream the request needs; the
        connection refuses any other (``expected.accept``)."""
        got: dict[str, SpdyStream] = {}
        try:
            async with asyncio.timeout(self.timeouts.creation):
                while not expected.kinds <= got.keys():  # each one's SYN_REPLY is out
                    stream = await _next_stream(connection)
                    if stream is None:
                        return None
                    got[stream.header("streamtype")] = stream
        except TimeoutError:
            log.info("streaming client did not open its streams in time; closing")
            return None
        return Streams(
            error=got["error"],
            gone=connection.closed,
            stdin=got.get("stdin") if parked.stdin else None,
            stdout=got.get("stdout") if parked.stdout else None,
            stderr=got.get("stderr") if parked.stderr and not parked.tty else None,
            resize=got.get("resize"),
            json_status=protocol == "v4.channel.k8s.io",
        )

    # -- WebSocket -----------------------------------------------------------------------

    async def _serve_websocket(
        self,
        request: Request,
        parked: StreamRequest,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        is_forward = isinstance(parked, PortForwardRequest)
        table = _WS_PORTFORWARD if is_forward else _WS_REMOTECOMMAND
        key = request.header("sec-websocket-key")
        if request.method != "GET" or not key or request.header("sec-websocket-version") != "13":
            await write_response(writer, 400, body="not a WebSocket version 13 handshake\n")
            return
        offered = request.header_tokens("sec-websocket-protocol") or [""]
        chosen = next((p for p in offered if p in table), None)
        if chosen is None:
            await write_response(
                writer,
                403,
                body=f"requested protocol(s) are not supported: {offered}; "
                f"supports {[p for p in table if p]}\n",
            )
            return
        ports: list[int] = []
        if isinstance(parked, PortForwardRequest):
            ports = _query_ports(request) or list(parked.ports)
            if not ports:
                await write_response(writer, 400, body='query parameter "port" is required\n')
                return
            if len(ports) > _MAX_WS_PORTS:  # channel 2i+1 must fit its byte
                await write_response(
                    writer, 400, body=f"at most {_MAX_WS_PORTS} ports on one WebSocket\n"
                )
                return
        headers = [
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Accept", accept_key(key)),
        ]
        if chosen:
            headers.append(("Sec-WebSocket-Protocol", chosen))
        await write_response(writer, 101, headers)
        base64_framing, json_status, close_signals = table[chosen]
        ws = WebSocket(reader, writer, idle_timeout=self.timeouts.idle)
        try:
            if isinstance(parked, PortForwardRequest):
                channels = WsChannels(
                    ws, base64_framing=base64_framing, inputs=[2 * i for i in range(len(ports))]
                )
                netns_path = self._backend.network_namespace(parked.sandbox_id)
                await portforward.serve_websocket(
                    channels,
                    ports,
                    lambda port: portforward.dial(netns_path, port),
                    describe=parked.sandbox_id,
                )
            else:
                inputs = [_STDIN] if parked.stdin else []
                if parked.tty:
                    inputs.append(_RESIZE)  # without a tty nobody reads it: dropped
                channels = WsChannels(
                    ws,
                    base64_framing=base64_framing,
                    inputs=inputs,
                    close_signals=close_signals,
                )
                await self._serve_ws_remotecommand(channels, parked, json_status)
        except AgentError as exc:
            log.info("streaming session for %s ended: %s", type(parked).__name__, exc)
        finally:
            await ws.close()

    async def _serve_ws_remotecommand(
        self, channels: WsChannels, parked: ExecRequest | AttachRequest, json_status: bool
    ) -> None:
        router = asyncio.ensure_future(channels.run())
        try:
            ready = _STDOUT if parked.stdout else _STDERR if parked.stderr else _ERROR
            await channels.send(ready, b"")  # tells the client the streams are up
            streams = Streams(
                error=channels.output(_ERROR),
                gone=channels.gone,
                stdin=channels.input(_STDIN) if parked.stdin else None,
                stdout=channels.output(_STDOUT) if parked.stdout else None,
                stderr=channels.output(_STDERR) if parked.stderr and not parked.tty else None,
                resize=channels.input(_RESIZE) if parked.tty else None,
                json_status=json_status,
            )
            await self._run_remotecommand(streams, parked)
        finally:
            router.cancel()
            await asyncio.gather(router, return_exceptions=True)

    # -- sessions ------------------------------------------------------------------------

    async def _run_remotecommand(
        self, streams: Streams, parked: ExecRequest | AttachRequest
    ) -> None:
        if isinstance(parked, ExecRequest):
            exec_request = parked

            async def start(size: tuple[int, int] | None) -> ExecSession:
                return await self._backend.exec_session(
                    exec_request.container_id,
                    list(exec_request.cmd),
                    tty=exec_request.tty,
                    stdin=exec_request.stdin,
                    console_size=size,
                )

            await remotecommand.run_exec(streams, start, list(parked.cmd))
            return
        try:
            target = self._backend.attach_target(parked.container_id)
        except AgentError as exc:
            await remotecommand.write_status(streams, remotecommand.failure_status(str(exc)))
            return
        if not target.stdin and streams.stdin is not None:
            streams.stdin.discard()  # the container has no stdin to write to
            streams.stdin = None
        if not target.tty and streams.resize is not None:
            streams.resize.discard()
            streams.resize = None
        await remotecommand.run_attach(
            streams, lambda: ConsoleConnection.connect(target.socket), target.control_fifo
        )


async def _next_stream(connection: SpdyConnection) -> SpdyStream | None:
    """The next stream the client opened; None once the connection ended."""
    incoming = asyncio.ensure_future(connection.incoming.get())
    closed = asyncio.ensure_future(connection.closed.wait())
    try:
        await asyncio.wait({incoming, closed}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        closed.cancel()
        if not incoming.done():
            incoming.cancel()
    return incoming.result() if incoming.done() and not incoming.cancelled() else None


def _query_ports(request: Request) -> list[int]:
    ports = []
    for value in request.query.get("port", []):
        for item in value.split(","):
            port = portforward.valid_port(item.strip())
            if port is not None:
                ports.append(port)
    return ports
