"""Command line: ``model-agent serve | config | version | ctl | install | uninstall``.

Only argument parsing and process concerns live here (signals, exit codes);
``app.Agent`` does the work.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from agent import __version__
from agent.config import Config, load, render_toml
from agent.ctl import commands as ctl
from agent.errors import AgentError, ConfigError
from agent.log import configure

__all__ = ["main"]

log = logging.getLogger("agent")

#: flag dest -> config key; flags override the file and MODEL_AGENT_* variables.
_FLAG_KEYS = {
    "socket": "agent.socket",
    "root_dir": "agent.root_dir",
    "state_dir": "agent.state_dir",
    "log_level": "agent.log_level",
    "log_format": "agent.log_format",
    "metrics_address": "metrics.address",
}


def _config_flags(p: argparse.ArgumentParser, *, full: bool = True) -> None:
    p.add_argument(
        "--config",
        help="TOML config file (default /etc/model-agent/config.toml "
        "if it exists; env MODEL_AGENT_CONFIG)",
    )
    p.add_argument("--socket", help="CRI unix socket path (env MODEL_AGENT_SOCKET)")
    if full:
        p.add_argument("--root-dir", help="persistent state dir (env MODEL_AGENT_ROOT_DIR)")
        p.add_argument("--state-dir", help="volatile state dir (env MODEL_AGENT_STATE_DIR)")
        p.add_argument("--log-level", help="debug, info, warning, error")
        p.add_argument(
            "--log-format",
            help="text or json (env MODEL_AGENT_LOG_FORMAT)",
            choices=("text", "json"),
        )
        p.add_argument("--metrics-address", help="host:port for /metrics; '' disables it")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="model-agent",
        description="Kubernetes node agent for serving ML models (a CRI v1 runtime).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _config_flags(sub.add_parser("serve", help="run the agent in the foreground"))
    _config_flags(sub.add_parser("config", help="print the effective config as TOML"))
    sub.add_parser("version", help="print the version")
    # parsed by agent.install.main (see main()); listed here for --help
    sub.add_parser("install", help="install or upgrade on this node from a wheelhouse")
    sub.add_parser("uninstall", help="remove the node install (--purge: and its state)")
    ctl.add_parser(sub)
    ctl_parser = sub.choices["ctl"]
    ctl_parser.add_argument("--config", help=argparse.SUPPRESS)
    return parser


def _load(args: argparse.Namespace) -> Config:
    overrides: dict[str, Any] = {key: getattr(args, dest, None) for dest, key in _FLAG_KEYS.items()}
    path = args.config or os.environ.get("MODEL_AGENT_CONFIG") or None
    return load(path, overrides=overrides)


def _serve(config: Config) -> int:
    from agent.app import Agent

    configure(config.agent.log_level, config.agent.log_format)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        agent = Agent(config)
        await agent.start()
        metrics = agent.metrics_server.url if agent.metrics_server else "disabled"
        print(f"model-agent {__version__} serving CRI on unix://{agent.socket_path}", flush=True)
        print(f"metrics: {metrics}", flush=True)
        try:
            await stop.wait()
        finally:
            log.info(
                "shutting down (in-flight calls get %.0fs)", config.agent.shutdown_timeout_seconds
            )
            await agent.stop()

    try:
        asyncio.run(main())
    except AgentError as exc:
        log.error("cannot start: %s", exc)
        return 1
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return 1
    log.info("stopped; containers keep running")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("install", "uninstall"):
        from agent.install import main as install_main

        return install_main(argv)
    args = _parser().parse_args(argv)
    if args.command == "version":
        print(f"model-agent {__version__}")
        return 0
    try:
        config = _load(args)
    except ConfigError as exc:
        print(f"model-agent: {exc}", file=sys.stderr)
        return 2
    if args.command == "config":
        sys.stdout.write(render_toml(config))
        return 0
    if args.command == "ctl":
        return ctl.run(args, config.socket_path)
    return _serve(config)
