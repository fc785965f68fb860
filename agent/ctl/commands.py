"""``model-agent ctl``: the parser, the settings every verb runs with, and the dispatch.

The verbs live in their families (``runtime_verbs``, ``pod_verbs``,
``container_verbs``, ``image_verbs``, ``stats_verbs``, ``stream_verbs`` with
``logs``); here
they are wired into one parser. Global flags are crictl's where they fit
(``-r/--runtime-endpoint``, ``-i/--image-endpoint``, ``-t/--timeout``,
``-D/--debug``) plus this ctl's ``--socket``, ``--ctl-config`` and ``-o``.
Which socket: ``-r`` or ``--socket``, else ``runtime-endpoint`` of the ctl
config file, else the agent's configured socket. Exit codes: the verb's, 1 for
a failed call, 2 for bad input, 130 when interrupted. The only ctl module
``cli.py`` imports (through ``agent.ctl``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from dataclasses import dataclass

import grpc

from agent.ctl import (
    completion,
    config_file,
    container_verbs,
    image_verbs,
    pod_verbs,
    runtime_verbs,
    stats_verbs,
    stream_verbs,
)
from agent.ctl.client import CriClient
from agent.ctl.output import FORMATS
from agent.ctl.verb import Verbs, duration_seconds
from agent.errors import AgentError, InvalidArgument

__all__ = ["DEFAULT_TIMEOUT_SECONDS", "Settings", "add_parser", "resolve_settings", "run"]

DEFAULT_TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True)
class Settings:
    """What a verb runs with: flags over the ctl config file over the agent's config."""

    runtime_socket: str
    image_socket: str
    timeout: float
    debug: bool
    pull_image_on_create: bool
    disable_pull_on_run: bool


def resolve_settings(
    args: argparse.Namespace, agent_socket: str, file: config_file.CtlConfig
) -> Settings:
    if args.runtime_endpoint:
        runtime = config_file.endpoint_path(args.runtime_endpoint)
    elif args.socket:
        runtime = agent_socket  # cli.py already put --socket into the agent config
    elif file.runtime_endpoint:
        runtime = config_file.endpoint_path(file.runtime_endpoint)
    else:
        runtime = agent_socket
    image = args.image_endpoint or file.image_endpoint
    timeout = args.ctl_timeout
    if timeout is None:
        timeout = float(file.timeout) if file.timeout > 0 else DEFAULT_TIMEOUT_SECONDS
    return Settings(
        runtime_socket=runtime,
        image_socket=config_file.endpoint_path(image) if image else runtime,
        timeout=timeout,
        debug=bool(args.debug or file.debug),
        pull_image_on_create=file.pull_image_on_create,
        disable_pull_on_run=file.disable_pull_on_run,
    )


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ctl = sub.add_parser(
        "ctl",
        help="a crictl-like CRI client",
        description="A crictl-like client of the agent's CRI socket.",
    )
    ctl.add_argument("--socket", help="CRI socket (default: the configured one)")
    ctl.add_argument(
        "-r", "--runtime-endpoint", help="CRI runtime endpoint, unix:///path (overrides --socket)"
    )
    ctl.add_argument(
        "-i", "--image-endpoint", help="CRI image endpoint (default: the runtime endpoint)"
    )
    ctl.add_argument(
        "-t",
        "--timeout",
        type=duration_seconds,
        default=None,
        dest="ctl_timeout",
        help=f"per-call deadline, seconds or 2m (default {DEFAULT_TIMEOUT_SECONDS:.0f})",
    )
    ctl.add_argument(
        "-D", "--debug", action="store_true", help="log each CRI request and response to stderr"
    )
    ctl.add_argument(
        "--ctl-config",
        help=f"ctl's crictl-format config (default {config_file.DEFAULT_PATH}; "
        f"env {config_file.ENV_VAR})",
    )
    ctl.add_argument("-o", "--output", choices=FORMATS, default=None, help="output format")
    verbs = Verbs(ctl.add_subparsers(dest="verb", required=True, metavar="VERB"))
    runtime_verbs.register(verbs)
    pod_verbs.register(verbs)
    container_verbs.register(verbs)
    image_verbs.register(verbs)
    stats_verbs.register(verbs)
    stream_verbs.register(verbs)

    p = verbs.add_local("config", config_file.config_verb, "get, set and list ctl's options")
    config_file.add_config_verb_flags(p)

    def shell_completion(args: argparse.Namespace, _: str) -> int:
        sys.stdout.write(completion.script(args.shell, ctl, verbs.table))
        return 0

    p = verbs.add_local("completion", shell_completion, "print a shell completion script")
    p.add_argument("shell", nargs="?", default="bash", choices=completion.SHELLS)


def run(args: argparse.Namespace, socket_path: str) -> int:
    """Run the chosen verb; gRPC failures print ``CODE: details`` and exit 1."""
    try:
        ctl_config = config_file.config_path(args.ctl_config)
        local = getattr(args, "local_fn", None)
        if local is not None:
            result: int = local(args, ctl_config)
            return result
        settings = resolve_settings(args, socket_path, config_file.read_config(ctl_config))
        args.settings = settings
        return asyncio.run(_connected(args, settings))
    except grpc.aio.AioRpcError as exc:
        print(f"model-agent ctl: {exc.code().name}: {exc.details()}", file=sys.stderr)
        if exc.code() is grpc.StatusCode.UNAVAILABLE:
            socket = getattr(args, "settings", None)
            path = socket.runtime_socket if socket else socket_path
            if not os.path.exists(path):
                print(f"(no socket at {path}: is model-agent running?)", file=sys.stderr)
        return 1
    except InvalidArgument as exc:
        print(f"model-agent ctl: {exc}", file=sys.stderr)
        return 2
    except (AgentError, OSError) as exc:
        print(f"model-agent ctl: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


async def _connected(args: argparse.Namespace, settings: Settings) -> int:
    async with CriClient(
        settings.runtime_socket,
        timeout=settings.timeout,
        image_socket_path=settings.image_socket,
        debug=sys.stderr if settings.debug else None,
    ) as cri:
        result: int = await args.verb_fn(cri, args)
        return result
