"""Container verbs: ``ps create start run update inspect stop rm``.

As crictl's ``container.go``: ``create POD container-config pod-config`` pulls
first only with ``--with-pull`` or ``pull-image-on-create``, ``run`` pulls unless
``--no-pull`` or ``disable-pull-on-run``; ``rm`` refuses a running container
unless ``-f`` and removes its log files unless ``-k``. Unlike crictl, ``run``
reads both files before any call and removes the pod it made when the
container cannot be created or started, so a failed ``run`` leaves nothing.
Of the other families it imports only ``image_verbs`` (the pull and its flags).
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import os
import re
import sys

import grpc

from agent.api.cri.runtime.v1 import api_pb2 as pb
from agent.ctl.client import CriClient
from agent.ctl.image_verbs import add_auth_flags, auth_from_args, pull_image
from agent.ctl.manifests import load_container_config, load_pod_config
from agent.ctl.output import (
    FORMATS,
    Table,
    ago,
    emit,
    message_dict,
    status_document,
    truncate,
)
from agent.ctl.timefmt import ZERO_TIME, format_rfc3339nano
from agent.ctl.verb import (
    Verbs,
    add_output_flag,
    duration_seconds,
    for_each,
    matches,
    output_format,
    parse_labels,
)
from agent.errors import FailedPrecondition, InvalidArgument

__all__ = ["container_state", "parse_bytes", "register"]

POD_NAME_LABEL = "io.kubernetes.pod.name"
POD_NAMESPACE_LABEL = "io.kubernetes.pod.namespace"
_STATES = {"created": pb.CONTAINER_CREATED, "running": pb.CONTAINER_RUNNING}
_STATES |= {"exited": pb.CONTAINER_EXITED, "unknown": pb.CONTAINER_UNKNOWN}


def container_state(state: pb.ContainerState.ValueType) -> str:
    return pb.ContainerState.Name(state).removeprefix("CONTAINER_").capitalize()


async def _image_id(cri: CriClient, image: str) -> str | None:
    resp = await cri.images.ImageStatus(
        pb.ImageStatusRequest(image=pb.ImageSpec(image=image)), timeout=cri.timeout
    )
    return resp.image.id if resp.HasField("image") else None


async def _list(cri: CriClient, args: argparse.Namespace) -> list[pb.Container]:
    filt = pb.ContainerFilter(
        id=args.id or "", pod_sandbox_id=args.pod or "", label_selector=parse_labels(args.label)
    )
    if args.state:
        filt.state.CopyFrom(pb.ContainerStateValue(state=_STATES[args.state]))
    elif not (args.all or args.latest or args.last):
        filt.state.CopyFrom(pb.ContainerStateValue(state=pb.CONTAINER_RUNNING))
    resp = await cri.runtime.ListContainers(
        pb.ListContainersRequest(filter=filt), timeout=cri.timeout
    )
    items = [
        c
        for c in resp.containers
        if matches(args.name, c.metadata.name)
        and matches(args.namespace, c.labels.get(POD_NAMESPACE_LABEL, "unknown"))
    ]
    if args.image:
        wanted = await _image_id(cri, args.image)
        items = [c for c in items if wanted and await _image_id(cri, c.image.image) == wanted]
    items.sort(key=lambda c: c.created_at, reverse=True)
    if args.latest:
        items = items[:1]
    if args.last:
        items = items[: args.last]
    return items


def _image_column(image: str, no_trunc: bool) -> str:
    if not no_trunc and re.fullmatch(r"[a-z0-9]+:[0-9a-f]{32,}", image):
        algorithm = image.partition(":")[0]
        return truncate(image, algorithm + ":")
    return image


async def _ps(cri: CriClient, args: argparse.Namespace) -> int:
    fmt = output_format(args, "table", FORMATS)
    items = await _list(cri, args)
    if fmt != "table":
        emit(pb.ListContainersResponse(containers=items), fmt)
        return 0
    if args.quiet:
        for c in items:
            print(c.id)
        return 0
    table = Table(
        ["CONTAINER", "IMAGE", "CREATED", "STATE", "NAME", "ATTEMPT", "POD ID", "POD", "NAMESPACE"]
    )
    for c in items:
        table.add(
            [
                c.id if args.no_trunc else truncate(c.id),
                _image_column(c.image.image or c.image_ref, args.no_trunc),
                ago(c.created_at),
                container_state(c.state),
                c.metadata.name,
                c.metadata.attempt,
                c.pod_sandbox_id if args.no_trunc else truncate(c.pod_sandbox_id),
                c.labels.get(POD_NAME_LABEL, "unknown"),
                c.labels.get(POD_NAMESPACE_LABEL, "unknown"),
            ]
        )
    table.write()
    return 0


async def _create_container(
    cri: CriClient,
    args: argparse.Namespace,
    pod_id: str,
    config: pb.ContainerConfig,
    pod_config: pb.PodSandboxConfig,
    with_pull: bool,
) -> str:
    if with_pull:
        auth = auth_from_args(args)
        images = [config.image.image]
        images += [m.image.image for m in config.mounts if m.HasField("image") and m.image.image]
        for image in images:
            print(f"Pulling container image: {image}", file=sys.stderr)
            await pull_image(
                cri,
                image,
                auth=auth,
                sandbox=pod_config,
                annotations=dict(config.image.annotations),
                timeout=args.pull_timeout,
            )
    resp = await cri.runtime.CreateContainer(
        pb.CreateContainerRequest(pod_sandbox_id=pod_id, config=config, sandbox_config=pod_config),
        timeout=args.cancel_timeout or cri.timeout,
    )
    return resp.container_id


def _with_pull(args: argparse.Namespace, default: bool) -> bool:
    if args.no_pull and args.with_pull:
        raise InvalidArgument("conflict: no-pull and with-pull are both set")
    return (default and not args.no_pull) or args.with_pull


async def _create(cri: CriClient, args: argparse.Namespace) -> int:
    with_pull = _with_pull(args, args.settings.pull_image_on_create)
    config = load_container_config(args.container_config)
    pod_config = load_pod_config(args.pod_config)
    print(await _create_container(cri, args, args.pod, config, pod_config, with_pull))
    return 0


async def _start_one(cri: CriClient, cid: str) -> None:
    await cri.runtime.StartContainer(
        pb.StartContainerRequest(container_id=cid), timeout=cri.timeout
    )
    print(cid, flush=True)


async def _start(cri: CriClient, args: argparse.Namespace) -> int:
    return await for_each(args.ids, lambda cid: _start_one(cri, cid), "starting the container")


async def _run(cri: CriClient, args: argparse.Namespace) -> int:
    with_pull = _with_pull(args, not args.settings.disable_pull_on_run)
    config = load_container_config(args.container_config)
    pod_config = load_pod_config(args.pod_config)
    pod = await cri.runtime.RunPodSandbox(
        pb.RunPodSandboxRequest(config=pod_config, runtime_handler=args.runtime or ""),
        timeout=args.cancel_timeout or cri.timeout,
    )
    try:
        cid = await _create_container(cri, args, pod.pod_sandbox_id, config, pod_config, with_pull)
        await _start_one(cri, cid)
    except BaseException:
        with contextlib.suppress(grpc.aio.AioRpcError):
            await cri.runtime.StopPodSandbox(
                pb.StopPodSandboxRequest(pod_sandbox_id=pod.pod_sandbox_id), timeout=cri.timeout
            )
            await cri.runtime.RemovePodSandbox(
                pb.RemovePodSandboxRequest(pod_sandbox_id=pod.pod_sandbox_id),
                timeout=cri.timeout,
            )
        raise
    return 0


_BYTE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_bytes(text: str) -> int:
    """``--memory``: bytes, or with a binary suffix (``64m``, ``64Mi``, ``1G``)."""
    match = re.fullmatch(r"(\d+)\s*([kKmMgGtT]?)(i?[bB]?)", text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size in bytes (e.g. 67108864, 64Mi)")
    return int(match[1]) * _BYTE_UNITS[match[2].lower()]


async def _update(cri: CriClient, args: argparse.Namespace) -> int:
    linux = pb.LinuxContainerResources(
        cpu_period=args.cpu_period,
        cpu_quota=args.cpu_quota,
        cpu_shares=args.cpu_share,
        cpuset_cpus=args.cpuset_cpus,
        cpuset_mems=args.cpuset_mems,
        memory_limit_in_bytes=args.memory,
        oom_score_adj=args.oom_score_adj,
    )

    async def update(cid: str) -> None:
        await cri.runtime.UpdateContainerResources(
            pb.UpdateContainerResourcesRequest(container_id=cid, linux=linux),
            timeout=cri.timeout,
        )
        print(cid, flush=True)

    return await for_each(args.ids, update, "updating container resources for")


def _status_table(resp: pb.ContainerStatusResponse, verbose: bool) -> None:
    s = resp.status
    print(f"ID: {s.id}")
    if s.metadata.name:
        print(f"Name: {s.metadata.name}")
    if s.metadata.attempt:
        print(f"Attempt: {s.metadata.attempt}")
    print(f"State: {pb.ContainerState.Name(s.state)}")
    print(f"Created: {ago(s.created_at)}")
    if s.state != pb.CONTAINER_CREATED:
        print(f"Started: {ago(s.started_at)}")
    if s.state == pb.CONTAINER_EXITED:
        if s.finished_at > 0:
            print(f"Finished: {ago(s.finished_at)}")
        print(f"Exit Code: {s.exit_code}")
    for title, values in (("Labels", s.labels), ("Annotations", s.annotations)):
        if values:
            print(f"{title}:")
            for key in sorted(values):
                print(f"\t{key} -> {values[key]}")
    if verbose:
        print(f"Info: {dict(resp.info)}")


def status_dict(s: pb.ContainerStatus) -> dict[str, object]:
    """A container status as crictl's ``inspect`` shows it: times as RFC 3339."""
    doc = message_dict(s)
    doc["createdAt"] = format_rfc3339nano(s.created_at)
    started = s.state != pb.CONTAINER_CREATED
    finished = s.state == pb.CONTAINER_EXITED or (
        s.state == pb.CONTAINER_UNKNOWN and s.finished_at > 0
    )
    doc["startedAt"] = format_rfc3339nano(s.started_at) if started else ZERO_TIME
    doc["finishedAt"] = format_rfc3339nano(s.finished_at) if finished else ZERO_TIME
    return doc


async def _inspect(cri: CriClient, args: argparse.Namespace) -> int:
    fmt = output_format(args, "json", FORMATS)
    documents = []
    for cid in args.ids:
        resp = await cri.runtime.ContainerStatus(
            pb.ContainerStatusRequest(container_id=cid, verbose=not args.quiet),
            timeout=cri.timeout,
        )
        if fmt == "table":
            _status_table(resp, not args.quiet)
        else:
            documents.append(status_document(status_dict(resp.status), resp.info))
    if documents:
        emit(documents[0] if len(documents) == 1 else documents, fmt, sort_keys=True)
    return 0


async def _all_containers(
    cri: CriClient, state: pb.ContainerState.ValueType | None = None
) -> list[str]:
    filt = pb.ContainerFilter()
    if state is not None:
        filt.state.CopyFrom(pb.ContainerStateValue(state=state))
    resp = await cri.runtime.ListContainers(
        pb.ListContainersRequest(filter=filt), timeout=cri.timeout
    )
    return [c.id for c in resp.containers]


async def _stop_one(cri: CriClient, cid: str, timeout: int) -> None:
    await cri.runtime.StopContainer(
        pb.StopContainerRequest(container_id=cid, timeout=timeout),
        timeout=None if cri.timeout is None else cri.timeout + timeout,
    )
    print(cid, flush=True)


async def _ids(
    cri: CriClient, args: argparse.Namespace, state: pb.ContainerState.ValueType | None = None
) -> list[str]:
    if args.all and args.ids:
        raise InvalidArgument("cannot specify CONTAINER-ID(s) when using --all")
    if args.all:
        return await _all_containers(cri, state)
    if not args.ids:
        raise InvalidArgument("give at least one CONTAINER-ID, or --all")
    return list(args.ids)


async def _stop(cri: CriClient, args: argparse.Namespace) -> int:
    ids = await _ids(cri, args, pb.CONTAINER_RUNNING)
    if not ids:
        print("No running containers found.")
        return 0
    return await for_each(
        ids, lambda cid: _stop_one(cri, cid, args.timeout), "stopping the container"
    )


def _remove_logs(log_path: str) -> None:
    for path in [*glob.glob(glob.escape(log_path) + ".*"), log_path]:
        try:
            os.remove(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            print(f"model-agent ctl: removing log file {path}: {exc.strerror}", file=sys.stderr)


async def _rm(cri: CriClient, args: argparse.Namespace) -> int:
    ids = await _ids(cri, args)
    if not ids:
        print("No containers to remove", file=sys.stderr)
        return 0

    async def remove(cid: str) -> None:
        resp = await cri.runtime.ContainerStatus(
            pb.ContainerStatusRequest(container_id=cid), timeout=cri.timeout
        )
        if resp.status.state == pb.CONTAINER_RUNNING:
            if not args.force:
                raise FailedPrecondition(f"container {cid} is running, please stop it first")
            await _stop_one(cri, cid, 0)
        await cri.runtime.RemoveContainer(
            pb.RemoveContainerRequest(container_id=cid), timeout=cri.timeout
        )
        print(cid, flush=True)
        if not args.keep_logs and resp.status.log_path:
            _remove_logs(resp.status.log_path)

    return await for_each(ids, remove, "removing the container")


def _pull_flags(p: argparse.ArgumentParser, no_pull: str, with_pull: str) -> None:
    p.add_argument("--no-pull", action="store_true", help=no_pull)
    p.add_argument("--with-pull", action="store_true", help=with_pull)
    p.add_argument(
        "-T", "--cancel-timeout", type=duration_seconds, help="deadline for each create call"
    )
    add_auth_flags(p)


def register(verbs: Verbs) -> None:
    p = verbs.add("ps", _ps, "list containers (running ones unless -a)")
    p.add_argument("-a", "--all", action="store_true", help="containers in every state")
    p.add_argument("--id", help="filter by container id (prefix)")
    p.add_argument("-p", "--pod", help="filter by pod id")
    p.add_argument("--name", help="filter by container name regular expression")
    p.add_argument("--namespace", help="filter by pod namespace regular expression")
    p.add_argument("--image", help="filter by image")
    p.add_argument("-s", "--state", type=str.lower, choices=tuple(_STATES))
    p.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("-l", "--latest", action="store_true", help="only the newest container")
    p.add_argument("-n", "--last", type=int, default=0, help="the newest N containers")
    p.add_argument("-q", "--quiet", action="store_true", help="only container ids")
    p.add_argument("--no-trunc", action="store_true", help="full ids")
    add_output_flag(p, FORMATS)

    p = verbs.add("create", _create, "create a container in a pod from config files")
    _pull_flags(
        p,
        "do not pull the image (overrides pull-image-on-create=true)",
        "pull the image first (overrides pull-image-on-create=false)",
    )
    p.add_argument("pod", metavar="POD-ID")
    p.add_argument("container_config", metavar="container-config.[json|yaml]")
    p.add_argument("pod_config", metavar="pod-config.[json|yaml]")

    p = verbs.add("start", _start, "start created containers")
    p.add_argument("ids", nargs="+", metavar="CONTAINER-ID")

    p = verbs.add("run", _run, "run a pod and a container in it from config files")
    _pull_flags(
        p,
        "do not pull the image (overrides disable-pull-on-run=false)",
        "pull the image (overrides disable-pull-on-run=true)",
    )
    p.add_argument("-r", "--runtime", help="runtime handler (as in `info`)")
    p.add_argument("container_config", metavar="container-config.[json|yaml]")
    p.add_argument("pod_config", metavar="pod-config.[json|yaml]")

    p = verbs.add("update", _update, "update running containers' resources")
    p.add_argument("--cpu-period", type=int, default=0, help="CFS period (us); 0: default")
    p.add_argument("--cpu-quota", type=int, default=0, help="CFS quota (us) per period")
    p.add_argument("--cpu-share", type=int, default=0, help="CPU shares (relative weight)")
    p.add_argument("--cpuset-cpus", default="", help="CPUs to use (0-3,5)")
    p.add_argument("--cpuset-mems", default="", help="memory nodes to use")
    p.add_argument("--memory", type=parse_bytes, default=0, help="memory limit (bytes, 64Mi)")
    p.add_argument("--oom-score-adj", type=int, default=0, help="OOM killer score adjustment")
    p.add_argument("ids", nargs="+", metavar="CONTAINER-ID")

    p = verbs.add("inspect", _inspect, "container status (JSON unless -o)")
    p.add_argument("-q", "--quiet", action="store_true", help="without the verbose info")
    add_output_flag(p, FORMATS)
    p.add_argument("ids", nargs="+", metavar="CONTAINER-ID")

    p = verbs.add("stop", _stop, "stop containers (-a: every running one)")
    p.add_argument("-t", "--timeout", type=int, default=0, help="seconds before SIGKILL")
    p.add_argument("-a", "--all", action="store_true", help="every running container")
    p.add_argument("ids", nargs="*", metavar="CONTAINER-ID")

    p = verbs.add("rm", _rm, "remove containers (-f: also running ones, -a: all)")
    p.add_argument("-f", "--force", action="store_true", help="stop running containers first")
    p.add_argument("-a", "--all", action="store_true", help="every container")
    p.add_argument("-k", "--keep-logs", action="store_true", help="keep the log files")
    p.add_argument("ids", nargs="*", metavar="CONTAINER-ID")
