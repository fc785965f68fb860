"""Verbs about the runtime itself: ``version`` and ``info``.

``info`` prints crictl's document: the status, ``runtimeHandlers`` and
``features`` (snake_case, as crictl marshals them with Go's ``encoding/json``)
and each verbose info key parsed. Imports no other family of verbs.
"""

from __future__ import annotations

import argparse

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


def register(verbs: Verbs) -> None:
    p = verbs.add("version", _version, "runtime name and versions")
    add_output_flag(p, ("table", "json", "yaml"))
    p = verbs.add("info", _info, "runtime conditions, handlers and details (Status)")
    add_output_flag(p, ("json", "yaml", "table"))
    p.add_argument("-q", "--quiet", action="store_true", help="without the verbose info")
