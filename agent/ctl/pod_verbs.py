"""Pod sandbox verbs: ``pods runp inspectp stopp rmp``.

Flags, columns and messages follow crictl's ``sandbox.go``: ``pods`` sorts the
newest first, ``rmp`` refuses a ready pod unless ``-f``. Like every verb
module it imports ctl's own helpers, the CRI types and ``errors``, and no other
family of verbs.
"""

from __future__ import annotations

import argparse

from agent.api.cri.runtime.v1 import api_pb2 as pb
from agent.ctl.client import CriClient
from agent.ctl.manifests import load_pod_config
from agent.ctl.output import (
    FORMATS,
    Table,
    ago,
    emit,
    message_dict,
    status_document,
    truncate,
)
from agent.ctl.timefmt import format_rfc3339nano
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

__all__ = ["pod_state", "register"]


def pod_state(state: pb.PodSandboxState.ValueType) -> str:
    return "Ready" if state == pb.SANDBOX_READY else "NotReady"


async def _list(cri: CriClient, args: argparse.Namespace) -> list[pb.PodSandbox]:
    filt = pb.PodSandboxFilter(id=args.id or "", label_selector=parse_labels(args.label))
    if args.state:
        state = pb.SANDBOX_READY if args.state == "ready" else pb.SANDBOX_NOTREADY
        filt.state.CopyFrom(pb.PodSandboxStateValue(state=state))
    resp = await cri.runtime.ListPodSandbox(
        pb.ListPodSandboxRequest(filter=filt), timeout=cri.timeout
    )
    items = [
        p
        for p in resp.items
        if matches(args.name, p.metadata.name) and matches(args.namespace, p.metadata.namespace)
    ]
    items.sort(key=lambda p: p.created_at, reverse=True)
    if args.latest:
        items = items[:1]
    if args.last:
        items = items[: args.last]
    return items


async def _pods(cri: CriClient, args: argparse.Namespace) -> int:
    fmt = output_format(args, "table", FORMATS)
    items = await _list(cri, args)
    if fmt != "table":
        emit(pb.ListPodSandboxResponse(items=items), fmt)
        return 0
    if args.quiet:
        for p in items:
            print(p.id)
        return 0
    table = Table(["POD ID", "CREATED", "STATE", "NAME", "NAMESPACE", "ATTEMPT", "RUNTIME"])
    for p in items:
        table.add(
            [
                p.id if args.no_trunc else truncate(p.id),
                ago(p.created_at),
                pod_state(p.state),
                p.metadata.name,
                p.metadata.namespace,
                p.metadata.attempt,
                p.runtime_handler or "(default)",
            ]
        )
    table.write()
    return 0


async def _runp(cri: CriClient, args: argparse.Namespace) -> int:
    config = load_pod_config(args.pod_config)
    resp = await cri.runtime.RunPodSandbox(
        pb.RunPodSandboxRequest(config=config, runtime_handler=args.runtime or ""),
        timeout=args.cancel_timeout or cri.timeout,
    )
    print(resp.pod_sandbox_id)
    return 0


def _pod_status_table(resp: pb.PodSandboxStatusResponse, verbose: bool) -> None:
    s = resp.status
    print(f"ID: {s.id}")
    if s.metadata.name:
        print(f"Name: {s.metadata.name}")
    if s.metadata.uid:
        print(f"UID: {s.metadata.uid}")
    if s.metadata.namespace:
        print(f"Namespace: {s.metadata.namespace}")
    print(f"Attempt: {s.metadata.attempt}")
    print(f"Status: {pb.PodSandboxState.Name(s.state)}")
    print(f"Created: {format_rfc3339nano(s.created_at)}")
    if s.HasField("network"):
        print(f"IP Addresses: {s.network.ip}")
        for extra in s.network.additional_ips:
            print(f"Additional IP: {extra.ip}")
    for title, values in (("Labels", s.labels), ("Annotations", s.annotations)):
        if values:
            print(f"{title}:")
            for key in sorted(values):
                print(f"\t{key} -> {values[key]}")
    if verbose:
        print(f"Info: {dict(resp.info)}")


async def _inspectp(cri: CriClient, args: argparse.Namespace) -> int:
    fmt = output_format(args, "json", FORMATS)
    documents = []
    for pid in args.ids:
        resp = await cri.runtime.PodSandboxStatus(
            pb.PodSandboxStatusRequest(pod_sandbox_id=pid, verbose=not args.quiet),
            timeout=cri.timeout,
        )
        if fmt == "table":
            _pod_status_table(resp, not args.quiet)
            continue
        status = message_dict(resp.status)
        status["createdAt"] = format_rfc3339nano(resp.status.created_at)
        documents.append(status_document(status, resp.info))
    if documents:
        emit(documents[0] if len(documents) == 1 else documents, fmt, sort_keys=True)
    return 0


async def _ids(cri: CriClient, args: argparse.Namespace) -> list[str]:
    if args.all and args.ids:
        raise InvalidArgument("cannot specify POD-ID(s) when using --all")
    if not args.all:
        if not args.ids:
            raise InvalidArgument("give at least one POD-ID, or --all")
        return list(args.ids)
    resp = await cri.runtime.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=cri.timeout)
    return [p.id for p in resp.items]


async def _stop_pod(cri: CriClient, pid: str) -> None:
    await cri.runtime.StopPodSandbox(
        pb.StopPodSandboxRequest(pod_sandbox_id=pid), timeout=cri.timeout
    )
    print(f"Stopped sandbox {pid}", flush=True)


async def _stopp(cri: CriClient, args: argparse.Namespace) -> int:
    return await for_each(args.ids, lambda pid: _stop_pod(cri, pid), "stopping the pod sandbox")


async def _rmp(cri: CriClient, args: argparse.Namespace) -> int:
    ids = await _ids(cri, args)
    if not ids:
        print("No pods to remove")
        return 0

    async def remove(pid: str) -> None:
        status = await cri.runtime.PodSandboxStatus(
            pb.PodSandboxStatusRequest(pod_sandbox_id=pid), timeout=cri.timeout
        )
        if status.status.state == pb.SANDBOX_READY:
            if not args.force:
                raise FailedPrecondition(f"pod sandbox {pid} is running, please stop it first")
            await _stop_pod(cri, pid)
        await cri.runtime.RemovePodSandbox(
            pb.RemovePodSandboxRequest(pod_sandbox_id=pid), timeout=cri.timeout
        )
        print(f"Removed sandbox {pid}", flush=True)

    return await for_each(ids, remove, "removing the pod sandbox")


def _filter_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--id", help="filter by pod id (prefix)")
    p.add_argument("--name", help="filter by pod name regular expression")
    p.add_argument("--namespace", help="filter by pod namespace regular expression")
    p.add_argument("-s", "--state", type=str.lower, choices=("ready", "notready"))
    p.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("-l", "--latest", action="store_true", help="only the newest pod")
    p.add_argument("-n", "--last", type=int, default=0, help="the newest N pods")


def register(verbs: Verbs) -> None:
    p = verbs.add("pods", _pods, "list pod sandboxes")
    _filter_flags(p)
    p.add_argument("-q", "--quiet", action="store_true", help="only pod ids")
    p.add_argument("--no-trunc", action="store_true", help="full ids")
    add_output_flag(p, FORMATS)

    p = verbs.add("runp", _runp, "run a pod sandbox from a pod-config.[json|yaml]")
    p.add_argument("-r", "--runtime", help="runtime handler (as in `info`)")
    p.add_argument(
        "-T", "--cancel-timeout", type=duration_seconds, help="deadline for RunPodSandbox"
    )
    p.add_argument("pod_config", metavar="pod-config.[json|yaml]")

    p = verbs.add("inspectp", _inspectp, "pod sandbox status (JSON unless -o)")
    p.add_argument("-q", "--quiet", action="store_true", help="without the verbose info")
    add_output_flag(p, FORMATS)
    p.add_argument("ids", nargs="+", metavar="POD-ID")

    p = verbs.add("stopp", _stopp, "stop pod sandboxes")
    p.add_argument("ids", nargs="+", metavar="POD-ID")

    p = verbs.add("rmp", _rmp, "remove pod sandboxes (-f: also ready ones, -a: all)")
    p.add_argument("-f", "--force", action="store_true", help="stop ready pods first")
    p.add_argument("-a", "--all", action="store_true", help="every pod sandbox")
    p.add_argument("ids", nargs="*", metavar="POD-ID")
