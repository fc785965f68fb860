"""Verbs about the runtime itself: ``version``, ``info`` and ``gpus``.

``info`` prints crictl's document: the status, ``runtimeHandlers`` and
``features`` (snake_case, as crictl marshals them with Go's ``encoding/json``)
and each verbose info key parsed. Imports no other family of verbs.
"""

from __future__ import annotations

import argparse
import json

from google.protobuf.json_format import MessageToDict

from agent.api.cri.runtime.v1 import api_pb2 as pb
from agent.ctl.client import CriClient
from agent.ctl.output import Table, emit, message_dict, status_document
from agent.ctl.verb import Verbs, add_output_flag, output_format

__all__ = ["register"]


async def _version(cri: CriClient, args: argparse.Namespace) -> int:
    fmt = output_format(args, "table", ("table", "json", "yaml"))
    resp = await cri.runtime.Version(pb.VersionRequest(version="v1"), timeout=cri.timeout)
    if fmt != "table":
        emit(resp, fmt)
        return 0
    print(f"Version:  {resp.version}")
    print(f"RuntimeName:  {resp.runtime_name}")
    print(f"RuntimeVersion:  {resp.runtime_version}")
    print(f"RuntimeApiVersion:  {resp.runtime_api_version}")
    return 0


async def _info(cri: CriClient, args: argparse.Namespace) -> int:
    fmt = output_format(args, "json", ("json", "yaml", "table"))
    resp = await cri.runtime.Status(pb.StatusRequest(verbose=not args.quiet), timeout=cri.timeout)
    if fmt == "table":
        rows = Table(["CONDITION", "STATUS", "REASON", "MESSAGE"])
        for c in resp.status.conditions:
            rows.add([c.type, str(c.status).lower(), c.reason, c.message])
        rows.write()
        handlers = ", ".join(h.name or "(default)" for h in resp.runtime_handlers)
        print(f"\nRuntime handlers: {handlers or 'none'}")
        return 0
    # crictl marshals the handlers and features with Go's encoding/json: snake_case, omitempty.
    document = status_document(
        message_dict(resp.status),
        resp.info,
        runtimeHandlers=[
            MessageToDict(h, preserving_proto_field_name=True) for h in resp.runtime_handlers
        ],
        features=MessageToDict(resp.features, preserving_proto_field_name=True),
    )
    emit(document, fmt, sort_keys=True)
    return 0


async def _gpus(cri: CriClient, args: argparse.Namespace) -> int:
    """The node's GPUs (and MIG devices) with the pods and containers holding them."""
    fmt = output_format(args, "table", ("table", "json", "yaml"))
    resp = await cri.runtime.Status(pb.StatusRequest(verbose=True), timeout=cri.timeout)
    report = json.loads(resp.info.get("gpu") or "{}")
    if fmt != "table":
        emit(report, fmt, sort_keys=True)
        return 0
    backend = report.get("backend", {})
    if not report.get("gpus"):
        print(f"no GPUs ({backend.get('name', 'none')}: {backend.get('reason') or 'none found'})")
        return 0
    held: dict[str, list[str]] = {}
    for h in report.get("holders", []):
        who = f"{h['pod_namespace']}/{h['pod_name']}/{h['container_name']}"
        held.setdefault(h["device_uuid"], []).append(f"{who} ({h['container_id'][:13]})")
    rows = Table(["GPU", "UUID", "NAME", "MEMORY", "STATE", "HELD BY"])
    for gpu in report["gpus"]:
        devices = [(str(gpu["index"]), gpu["uuid"], gpu["name"], gpu["memoryBytes"])]
        devices += [(m["index"], m["uuid"], m["profile"], 0) for m in gpu.get("migDevices", [])]
        for index, uuid, name, memory in devices:
            holders = ", ".join(held.get(uuid, [])) or "-"
            size = f"{memory / (1 << 30):.0f}GiB" if memory else ""
            rows.add([index, uuid, name, size, gpu.get("state", ""), holders])
    rows.write()
    if backend.get("simulated"):
        print("\n(simulated GPU backend: for tests and demos)")
    return 0


def register(verbs: Verbs) -> None:
    p = verbs.add("version", _version, "runtime name and versions")
    add_output_flag(p, ("table", "json", "yaml"))
    p = verbs.add("info", _info, "runtime conditions, handlers and details (Status)")
    add_output_flag(p, ("json", "yaml", "table"))
    p.add_argument("-q", "--quiet", action="store_true", help="without the verbose info")
    p = verbs.add("gpus", _gpus, "GPUs and the pods/containers holding them")
    add_output_flag(p, ("table", "json", "yaml"))
