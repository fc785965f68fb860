"""Run CNI plugins with the standard environment and stdin JSON.

This module grows the ADD/DEL/CHECK/STATUS calls pods need; it starts with
VERSION, which ``Status`` uses to report the plugins the node would call.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from agent._util.proc import run
from agent.errors import AgentError

__all__ = ["PluginVersion", "plugin_version"]

_VERSION_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class PluginVersion:
    path: str
    supported: tuple[str, ...]


async def plugin_version(path: str) -> PluginVersion:
    """Ask a plugin which CNI spec versions it supports (``CNI_COMMAND=VERSION``)."""
    env = {"CNI_COMMAND": "VERSION", "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    done = await run([path], timeout=_VERSION_TIMEOUT, input=b'{"cniVersion":"1.0.0"}', env=env)
    try:
        data = json.loads(done.stdout)
        supported = tuple(str(v) for v in data.get("supportedVersions", ()))
    except (json.JSONDecodeError, AttributeError) as exc:
        raise AgentError(f"{path}: VERSION answered something that is not CNI JSON") from exc
    return PluginVersion(path, supported)
