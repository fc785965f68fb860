"""Verbs that stream: ``exec attach port-forward events`` (``logs`` has its own module).

``exec -i/-t``, ``attach`` and ``port-forward`` dial the streaming URL the
agent answers (SPDY/3.1, through ``agent.streaming.client``); ``events`` prints
each ``GetContainerEvents`` message as it arrives, as JSON (default) or YAML,
until interrupted or the agent ends the stream. ``agent.streaming`` is imported
when a stream is opened, not at start.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable
from typing import TypeVar

from agent.api.cri.runtime.v1 import api_pb2 as pb
from agent.ctl import logs
from agent.ctl.client import CriClient
from agent.ctl.output import emit
from agent.ctl.verb import Verbs, add_output_flag, output_format
from agent.errors import InvalidArgument, Unavailable

__all__ = ["parse_port_mapping", "register"]

T = TypeVar("T")


async def _streamed(call: Awaitable[T]) -> T:
    """The streaming client's protocol failures as ctl errors (exit 1, one line)."""
    from agent.streaming import client

    try:
        return await call
    except client.StreamingError as exc:
        raise Unavailable(f"streaming: {exc}") from None


async def _exec(cri: CriClient, args: argparse.Namespace) -> int:
    if not args.cmd:
        raise InvalidArgument("exec needs a command")
    if args.interactive or args.tty:
        from agent.streaming import client

        request = pb.ExecRequest(
            container_id=args.id,
            cmd=args.cmd,
            tty=args.tty,
            stdin=args.interactive,
            stdout=True,
            stderr=not args.tty,
        )
        url = (await cri.runtime.Exec(request, timeout=cri.timeout)).url
        return await _streamed(client.remote_command(url, stdin=args.interactive, tty=args.tty))
    resp = await cri.runtime.ExecSync(
        pb.ExecSyncRequest(container_id=args.id, cmd=args.cmd, timeout=args.timeout),
        timeout=None if args.timeout == 0 else args.timeout + 10,
    )
    sys.stdout.buffer.write(resp.stdout)
    sys.stderr.buffer.write(resp.stderr)
    return int(resp.exit_code)


async def _attach(cri: CriClient, args: argparse.Namespace) -> int:
    from agent.streaming import client

    request = pb.AttachRequest(
        container_id=args.id,
        tty=args.tty,
        stdin=args.interactive,
        stdout=True,
        stderr=not args.tty,
    )
    url = (await cri.runtime.Attach(request, timeout=cri.timeout)).url
    return await _streamed(client.remote_command(url, stdin=args.interactive, tty=args.tty))


def parse_port_mapping(text: str) -> tuple[int, int]:
    """``8080`` or ``LOCAL:REMOTE`` (``:REMOTE`` picks a free local port), as kubectl takes."""
    local, sep, remote = text.rpartition(":")
    try:
        pair = (int(local or 0) if sep else int(remote), int(remote))
    except ValueError:
        raise InvalidArgument(f"'{text}' is not PORT or LOCAL:REMOTE") from None
    if not (0 <= pair[0] <= 0xFFFF and 0 < pair[1] <= 0xFFFF):
        raise InvalidArgument(f"'{text}' names a port outside 1-65535")
    return pair


async def _port_forward(cri: CriClient, args: argparse.Namespace) -> int:
    from agent.streaming import client

    mappings = [parse_port_mapping(m) for m in args.ports]
    request = pb.PortForwardRequest(pod_sandbox_id=args.pod, port=[r for _, r in mappings])
    url = (await cri.runtime.PortForward(request, timeout=cri.timeout)).url

    def ready(bound: list[tuple[int, int]]) -> None:
        for local, remote in bound:
            print(f"Forwarding from {args.address}:{local} -> {remote}", flush=True)

    await _streamed(client.forward_ports(url, mappings, address=args.address, on_ready=ready))
    print("the streaming connection ended", file=sys.stderr)
    return 1


async def _events(cri: CriClient, args: argparse.Namespace) -> int:
    fmt = output_format(args, "json", ("json", "yaml"))
    # No deadline: the stream lasts until the user interrupts it.
    async for event in cri.runtime.GetContainerEvents(pb.GetEventsRequest(), timeout=None):
        emit(event, fmt)
    return 0


def register(verbs: Verbs) -> None:
    logs.register(verbs)

    p = verbs.add("exec", _exec, "run a command in a container (-i/-t: interactive, streamed)")
    p.add_argument("-i", "--interactive", action="store_true", help="pass stdin")
    p.add_argument("-t", "--tty", action="store_true", help="allocate a terminal")
    p.add_argument(
        "--timeout",
        type=int,
        default=0,
        dest="timeout",
        help="seconds before the command is killed (0: none)",
    )
    p.add_argument("id", metavar="CONTAINER-ID")
    p.add_argument("cmd", nargs=argparse.REMAINDER)

    p = verbs.add("attach", _attach, "attach to a running container's stdio")
    p.add_argument("-i", "--interactive", action="store_true", help="pass stdin")
    p.add_argument("-t", "--tty", action="store_true", help="the container has a terminal")
    p.add_argument("id", metavar="CONTAINER-ID")

    p = verbs.add("port-forward", _port_forward, "forward local ports to a pod")
    p.add_argument("--address", default="127.0.0.1", help="local address to listen on")
    p.add_argument("pod", metavar="POD-ID")
    p.add_argument("ports", nargs="+", metavar="[LOCAL:]REMOTE")

    p = verbs.add(
        "events", _events, "stream container events (GetContainerEvents)", aliases=("event",)
    )
    add_output_flag(p, ("json", "yaml"))
