"""The ``model-agent ctl`` verbs: parse arguments, call CRI, print.

Each verb is one small coroutine. Output is a table by default and the CRI
messages as JSON with ``-o json`` (field names as the proto spells them).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TextIO

import grpc
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from agent.api.cri.runtime.v1 import api_pb2 as pb
from agent.ctl.client import CriClient
from agent.errors import InvalidArgument
from agent.images import reference
from agent.streaming import client

__all__ = ["add_parser", "run"]

Verb = Callable[[CriClient, argparse.Namespace], Awaitable[int]]


# ---------------------------------------------------------------------------
# Output helpers


def _to_dict(message: Message) -> dict[str, Any]:
    return MessageToDict(message, preserving_proto_field_name=True)


def _print_json(obj: Any, out: TextIO = sys.stdout) -> None:
    if isinstance(obj, Message):
        obj = _to_dict(obj)
    out.write(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _print_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    cells_by_row = [[str(cell) for cell in r] for r in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells_by_row)]) for i, h in enumerate(headers)]
    for row in [list(headers), *cells_by_row]:
        cells = [c.ljust(w) for c, w in zip(row, widths, strict=True)]
        sys.stdout.write("   ".join(cells).rstrip() + "\n")


def _ago(ns: int) -> str:
    if ns <= 0:
        return "-"
    seconds = max(0, time.time() - ns / 1e9)
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit} ago"
    return f"{int(seconds)} seconds ago"


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.3g}{unit}"
        value /= 1000
    return str(n)  # pragma: no cover


def _state(enum: Any, value: int) -> str:
    return str(enum.Name(value)).removeprefix("SANDBOX_").removeprefix("CONTAINER_")


def _labels(pairs: list[str]) -> dict[str, str]:
    result = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"label '{pair}' is not key=value")
        result[key] = value
    return result


# ---------------------------------------------------------------------------
# Verbs


async def _version(cri: CriClient, args: argparse.Namespace) -> int:
    resp = await cri.runtime.Version(pb.VersionRequest(version="0.1.0"), timeout=cri.timeout)
    if args.output == "json":
        _print_json(resp)
    else:
        print(f"Version:  {resp.version}")
        print(f"RuntimeName:  {resp.runtime_name}")
        print(f"RuntimeVersion:  {resp.runtime_version}")
        print(f"RuntimeApiVersion:  {resp.runtime_api_version}")
    return 0


async def _info(cri: CriClient, args: argparse.Namespace) -> int:
    resp = await cri.runtime.Status(pb.StatusRequest(verbose=True), timeout=cri.timeout)
    if args.output == "json":
        doc = _to_dict(resp)
        # The verbose info values are JSON documents themselves; show them as such.
        for key, value in list(doc.get("info", {}).items()):
            with contextlib.suppress(ValueError):
                doc["info"][key] = json.loads(value)
        _print_json(doc)
        return 0
    rows = [(c.type, str(c.status).lower(), c.reason, c.message) for c in resp.status.conditions]
    _print_table(["CONDITION", "STATUS", "REASON", "MESSAGE"], rows)
    handlers = ", ".join(h.name or "(default)" for h in resp.runtime_handlers)
    print(f"\nRuntime handlers: {handlers or 'none'}")
    return 0


async def _pods(cri: CriClient, args: argparse.Namespace) -> int:
    filt = pb.PodSandboxFilter(id=args.id or "", label_selector=_labels(args.label))
    if args.state:
        filt.state.CopyFrom(
            pb.PodSandboxStateValue(state=pb.PodSandboxState.Value("SANDBOX_" + args.state.upper()))
        )
    resp = await cri.runtime.ListPodSandbox(
        pb.ListPodSandboxRequest(filter=filt), timeout=cri.timeout
    )
    items = [
        p
        for p in resp.items
        if (not args.name or args.name in p.metadata.name)
        and (not args.namespace or p.metadata.namespace == args.namespace)
    ]
    if args.output == "json":
        _print_json({"items": [_to_dict(p) for p in items]})
        return 0
    _print_table(
        ["POD ID", "CREATED", "STATE", "NAME", "NAMESPACE", "ATTEMPT", "RUNTIME"],
        [
            (
                p.id[:13],
                _ago(p.created_at),
                _state(pb.PodSandboxState, p.state),
                p.metadata.name,
                p.metadata.namespace,
                p.metadata.attempt,
                p.runtime_handler or "(default)",
            )
            for p in items
        ],
    )
    return 0


async def _ps(cri: CriClient, args: argparse.Namespace) -> int:
    filt = pb.ContainerFilter(
        id=args.id or "", pod_sandbox_id=args.pod or "", label_selector=_labels(args.label)
    )
    if args.state:
        filt.state.CopyFrom(
            pb.ContainerStateValue(state=pb.ContainerState.Value("CONTAINER_" + args.state.upper()))
        )
    elif not args.all:
        filt.state.CopyFrom(pb.ContainerStateValue(state=pb.CONTAINER_RUNNING))
    resp = await cri.runtime.ListContainers(
        pb.ListContainersRequest(filter=filt), timeout=cri.timeout
    )
    items = [c for c in resp.containers if not args.name or args.name in c.metadata.name]
    if args.output == "json":
        _print_json({"containers": [_to_dict(c) for c in items]})
        return 0
    _print_table(
        ["CONTAINER", "IMAGE", "CREATED", "STATE", "NAME", "ATTEMPT", "POD ID"],
        [
            (
                c.id[:13],
                c.image.image or c.image_ref,
                _ago(c.created_at),
                _state(pb.ContainerState, c.state),
                c.metadata.name,
                c.metadata.attempt,
                c.pod_sandbox_id[:13],
            )
            for c in items
        ],
    )
    return 0


async def _images(cri: CriClient, args: argparse.Namespace) -> int:
    req = pb.ListImagesRequest()
    if args.image:
        req.filter.image.image = args.image
    resp = await cri.images.ListImages(req, timeout=cri.timeout)
    if args.output == "json":
        _print_json(resp)
        return 0
    rows = []
    for image in resp.images:
        tags = list(image.repo_tags) or ["<none>:<none>"]
        for ref in tags:
            repo, _, tag = ref.rpartition(":")
            rows.append((repo, tag, image.id.removeprefix("sha256:")[:13], _size(image.size)))
    _print_table(["IMAGE", "TAG", "IMAGE ID", "SIZE"], rows)
    return 0


def _auth(args: argparse.Namespace) -> pb.AuthConfig | None:
    if not args.creds:
        return None
    user, sep, password = args.creds.partition(":")
    if not sep:
        raise SystemExit("--creds must be USERNAME:PASSWORD")
    return pb.AuthConfig(username=user, password=password)


async def _pull(cri: CriClient, args: argparse.Namespace) -> int:
    req = pb.PullImageRequest(image=pb.ImageSpec(image=args.image))
    auth = _auth(args)
    if auth is not None:
        req.auth.CopyFrom(auth)
    # A pull has no deadline (as from the kubelet); the agent fails stalled pulls itself.
    pulling = asyncio.ensure_future(cri.images.PullImage(req, timeout=None))
    if sys.stderr.isatty() and args.output != "json":
        await _show_progress(cri, args.image, pulling)
    resp = await pulling
    if args.output == "json":
        _print_json(resp)
    else:
        print(f"Image is up to date for {resp.image_ref}")
    return 0


async def _show_progress(cri: CriClient, image: str, pulling: asyncio.Future[Any]) -> None:
    """Draw a progress bar from the agent's in-flight pulls (Status verbose ``pulls``).

    The CRI has no progress channel; the agent publishes each pull's bytes and
    layers in its verbose status, which this polls until the pull returns.
    """
    try:
        wanted = str(reference.parse(image))
    except InvalidArgument:
        return  # the pull itself will report the bad reference
    drawn = False
    while not pulling.done():
        with contextlib.suppress(grpc.aio.AioRpcError):
            status = await cri.runtime.Status(pb.StatusRequest(verbose=True), timeout=5)
            for pull in json.loads(status.info.get("pulls", "[]")):
                if pull.get("image") == wanted:
                    sys.stderr.write("\r" + progress_line(pull))
                    sys.stderr.flush()
                    drawn = True
        await asyncio.wait({pulling}, timeout=0.5)
    if drawn:
        sys.stderr.write("\n")


def progress_line(pull: dict[str, Any], width: int = 30) -> str:
    """``image [#####.....]  45%  1.2/3.1 GB  2/5 layers``."""
    total, done = int(pull.get("bytesTotal", 0)), int(pull.get("bytesDone", 0))
    fraction = min(1.0, done / total) if total else 0.0
    bar = "#" * int(fraction * width) + "." * (width - int(fraction * width))
    return (
        f"{pull.get('image', '')} [{bar}] {fraction * 100:3.0f}%  "
        f"{done / 1e9:.2f}/{total / 1e9:.2f} GB  "
        f"{pull.get('layersDone', 0)}/{pull.get('layersTotal', 0)} layers"
    )


async def _rmi(cri: CriClient, args: argparse.Namespace) -> int:
    for image in args.images:
        await cri.images.RemoveImage(
            pb.RemoveImageRequest(image=pb.ImageSpec(image=image)), timeout=cri.timeout
        )
        print(f"Deleted: {image}")
    return 0


async def _inspect(cri: CriClient, args: argparse.Namespace) -> int:
    for cid in args.ids:
        resp = await cri.runtime.ContainerStatus(
            pb.ContainerStatusRequest(container_id=cid, verbose=True), timeout=cri.timeout
        )
        _print_json(resp)
    return 0


async def _inspectp(cri: CriClient, args: argparse.Namespace) -> int:
    for pid in args.ids:
        resp = await cri.runtime.PodSandboxStatus(
            pb.PodSandboxStatusRequest(pod_sandbox_id=pid, verbose=True), timeout=cri.timeout
        )
        _print_json(resp)
    return 0


async def _inspecti(cri: CriClient, args: argparse.Namespace) -> int:
    for image in args.images:
        resp = await cri.images.ImageStatus(
            pb.ImageStatusRequest(image=pb.ImageSpec(image=image), verbose=True),
            timeout=cri.timeout,
        )
        if not resp.HasField("image"):
            print(f"no such image: {image}", file=sys.stderr)
            return 1
        _print_json(resp)
    return 0


def parse_log_line(line: bytes) -> tuple[str, bool, bytes] | None:
    """``(stream, is_full_line, content)`` of one CRI log line, or None if malformed."""
    parts = line.rstrip(b"\n").split(b" ", 3)
    if len(parts) < 3:
        return None
    stream = parts[1].decode(errors="replace")
    tag = parts[2].split(b":")[0]
    content = parts[3] if len(parts) == 4 else b""
    return stream, tag != b"P", content


async def _logs(cri: CriClient, args: argparse.Namespace) -> int:
    resp = await cri.runtime.ContainerStatus(
        pb.ContainerStatusRequest(container_id=args.id), timeout=cri.timeout
    )
    path = resp.status.log_path
    if not path:
        print(f"container {args.id} has no log path", file=sys.stderr)
        return 1
    await asyncio.to_thread(_print_log, path, args.tail, args.follow)
    return 0


def _print_log(path: str, tail: int | None, follow: bool) -> None:
    with open(path, "rb") as f:
        lines = f.readlines()
        if tail is not None:
            lines = lines[-tail:] if tail > 0 else []
        _write_log_lines(lines)
        while follow:
            more = f.readlines()
            if more:
                _write_log_lines(more)
            else:
                time.sleep(0.2)


def _write_log_lines(lines: list[bytes]) -> None:
    for line in lines:
        parsed = parse_log_line(line)
        if parsed is None:
            continue
        stream, full, content = parsed
        out = sys.stderr.buffer if stream == "stderr" else sys.stdout.buffer
        out.write(content + (b"\n" if full else b""))
        out.flush()


async def _exec(cri: CriClient, args: argparse.Namespace) -> int:
    if not args.cmd:
        raise InvalidArgument("exec needs a command")
    if args.interactive or args.tty:
        request = pb.ExecRequest(
            container_id=args.id,
            cmd=args.cmd,
            tty=args.tty,
            stdin=args.interactive,
            stdout=True,
            stderr=not args.tty,
        )
        url = (await cri.runtime.Exec(request)).url
        return await client.remote_command(url, stdin=args.interactive, tty=args.tty)
    resp = await cri.runtime.ExecSync(
        pb.ExecSyncRequest(container_id=args.id, cmd=args.cmd, timeout=args.timeout),
        timeout=None if args.timeout == 0 else args.timeout + 10,
    )
    sys.stdout.buffer.write(resp.stdout)
    sys.stderr.buffer.write(resp.stderr)
    return int(resp.exit_code)


async def _attach(cri: CriClient, args: argparse.Namespace) -> int:
    request = pb.AttachRequest(
        container_id=args.id,
        tty=args.tty,
        stdin=args.interactive,
        stdout=True,
        stderr=not args.tty,
    )
    url = (await cri.runtime.Attach(request)).url
    return await client.remote_command(url, stdin=args.interactive, tty=args.tty)


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
    mappings = [parse_port_mapping(m) for m in args.ports]
    request = pb.PortForwardRequest(pod_sandbox_id=args.pod, port=[r for _, r in mappings])
    url = (await cri.runtime.PortForward(request)).url

    def ready(bound: list[tuple[int, int]]) -> None:
        for local, remote in bound:
            print(f"Forwarding from {args.address}:{local} -> {remote}", flush=True)

    await client.forward_ports(url, mappings, address=args.address, on_ready=ready)
    print("the streaming connection ended", file=sys.stderr)
    return 1


async def _stats(cri: CriClient, args: argparse.Namespace) -> int:
    filt = pb.ContainerStatsFilter(
        id=args.id or "", pod_sandbox_id=args.pod or "", label_selector=_labels(args.label)
    )
    resp = await cri.runtime.ListContainerStats(
        pb.ListContainerStatsRequest(filter=filt), timeout=cri.timeout
    )
    if args.output == "json":
        _print_json(resp)
        return 0
    _print_table(
        ["CONTAINER", "NAME", "CPU %", "MEM", "DISK", "INODES"],
        [
            (
                s.attributes.id[:13],
                s.attributes.metadata.name,
                f"{s.cpu.usage_nano_cores.value / 1e7:.2f}",
                _size(s.memory.working_set_bytes.value),
                _size(s.writable_layer.used_bytes.value),
                s.writable_layer.inodes_used.value,
            )
            for s in resp.stats
        ],
    )
    return 0


async def _stop(cri: CriClient, args: argparse.Namespace) -> int:
    for cid in args.ids:
        await cri.runtime.StopContainer(
            pb.StopContainerRequest(container_id=cid, timeout=args.timeout),
            timeout=None if cri.timeout is None else cri.timeout + args.timeout,
        )
        print(cid)
    return 0


async def _rm(cri: CriClient, args: argparse.Namespace) -> int:
    for cid in args.ids:
        await cri.runtime.RemoveContainer(
            pb.RemoveContainerRequest(container_id=cid), timeout=cri.timeout
        )
        print(cid)
    return 0


async def _stopp(cri: CriClient, args: argparse.Namespace) -> int:
    for pid in args.ids:
        await cri.runtime.StopPodSandbox(
            pb.StopPodSandboxRequest(pod_sandbox_id=pid), timeout=cri.timeout
        )
        print(f"Stopped sandbox {pid}")
    return 0


async def _rmp(cri: CriClient, args: argparse.Namespace) -> int:
    for pid in args.ids:
        await cri.runtime.RemovePodSandbox(
            pb.RemovePodSandboxRequest(pod_sandbox_id=pid), timeout=cri.timeout
        )
        print(f"Removed sandbox {pid}")
    return 0


# ---------------------------------------------------------------------------
# Wiring


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ctl = sub.add_parser("ctl", help="a small crictl-like CRI client")
    ctl.add_argument("--socket", help="CRI socket (default: the configured one)")
    ctl.add_argument(
        "--timeout", type=float, default=30.0, dest="ctl_timeout", help="per-call deadline, seconds"
    )
    ctl.add_argument("-o", "--output", choices=("table", "json"), default="table")
    verbs = ctl.add_subparsers(dest="verb", required=True, metavar="VERB")

    def verb(name: str, fn: Verb, help: str) -> argparse.ArgumentParser:
        p = verbs.add_parser(name, help=help)
        p.set_defaults(verb_fn=fn)
        return p

    verb("version", _version, "runtime name and versions")
    verb("info", _info, "runtime conditions and details (Status)")
    p = verb("pods", _pods, "list pod sandboxes")
    p.add_argument("--id")
    p.add_argument("--name")
    p.add_argument("--namespace")
    p.add_argument("--state", choices=("ready", "notready"))
    p.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    p = verb("ps", _ps, "list containers (running ones unless -a)")
    p.add_argument("-a", "--all", action="store_true")
    p.add_argument("--id")
    p.add_argument("--pod")
    p.add_argument("--name")
    p.add_argument("--state", choices=("created", "running", "exited", "unknown"))
    p.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    p = verb("images", _images, "list images")
    p.add_argument("image", nargs="?")
    p = verb("pull", _pull, "pull an image")
    p.add_argument("image")
    p.add_argument("--creds", metavar="USERNAME:PASSWORD")
    p = verb("rmi", _rmi, "remove images")
    p.add_argument("images", nargs="+")
    p = verb("inspect", _inspect, "container status as JSON")
    p.add_argument("ids", nargs="+")
    p = verb("inspectp", _inspectp, "pod sandbox status as JSON")
    p.add_argument("ids", nargs="+")
    p = verb("inspecti", _inspecti, "image status as JSON")
    p.add_argument("images", nargs="+")
    p = verb("logs", _logs, "print a container's log")
    p.add_argument("id")
    p.add_argument("-f", "--follow", action="store_true")
    p.add_argument("--tail", type=int)
    p = verb("exec", _exec, "run a command in a container (-i/-t: interactive, streamed)")
    p.add_argument("-i", "--interactive", action="store_true", help="pass stdin")
    p.add_argument("-t", "--tty", action="store_true", help="allocate a terminal")
    p.add_argument(
        "--timeout",
        type=int,
        default=0,
        dest="timeout",
        help="seconds before the command is killed (0: none)",
    )
    p.add_argument("id")
    p.add_argument("cmd", nargs=argparse.REMAINDER)
    p = verb("attach", _attach, "attach to a running container's stdio")
    p.add_argument("-i", "--interactive", action="store_true", help="pass stdin")
    p.add_argument("-t", "--tty", action="store_true", help="the container has a terminal")
    p.add_argument("id")
    p = verb("port-forward", _port_forward, "forward local ports to a pod")
    p.add_argument("--address", default="127.0.0.1", help="local address to listen on")
    p.add_argument("pod")
    p.add_argument("ports", nargs="+", metavar="[LOCAL:]REMOTE")
    p = verb("stats", _stats, "container resource usage")
    p.add_argument("--id")
    p.add_argument("--pod")
    p.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    p = verb("stop", _stop, "stop containers")
    p.add_argument("--timeout", type=int, default=10, dest="timeout")
    p.add_argument("ids", nargs="+")
    p = verb("rm", _rm, "remove containers")
    p.add_argument("ids", nargs="+")
    p = verb("stopp", _stopp, "stop pod sandboxes")
    p.add_argument("ids", nargs="+")
    p = verb("rmp", _rmp, "remove pod sandboxes")
    p.add_argument("ids", nargs="+")


def run(args: argparse.Namespace, socket_path: str) -> int:
    """Run the chosen verb; gRPC failures print ``CODE: details`` and exit 1."""

    async def main() -> int:
        async with CriClient(socket_path, timeout=args.ctl_timeout) as cri:
            result: int = await args.verb_fn(cri, args)
            return result

    try:
        return asyncio.run(main())
    except grpc.aio.AioRpcError as exc:
        print(f"model-agent ctl: {exc.code().name}: {exc.details()}", file=sys.stderr)
        if exc.code() is grpc.StatusCode.UNAVAILABLE and not os.path.exists(socket_path):
            print(f"(no socket at {socket_path}: is model-agent running?)", file=sys.stderr)
        return 1
    except (OSError, client.StreamingError) as exc:
        print(f"model-agent ctl: {exc}", file=sys.stderr)
        return 1
    except InvalidArgument as exc:
        print(f"model-agent ctl: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
