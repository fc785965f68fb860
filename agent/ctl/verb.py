"""What every ctl verb shares: its signature, its registration, its common flags.

A verb is ``async def verb(cri, args) -> exit code``. Families of verbs
(``pod_verbs``, ``container_verbs``, …) each have a ``register(verbs)`` that
adds their sub-commands through :class:`Verbs`. ``-o`` may be given before the
verb (``ctl -o json ps``, this ctl's older form) or after it (``ctl ps -o json``,
crictl's form); verbs read the result with :func:`output_format`. Actions on
several ids run concurrently and report every failure, like crictl's
``AggregateGoroutines``. Imports ``client``, ``timefmt`` and ``errors``; no verbs.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import grpc

from agent.ctl.client import CriClient
from agent.ctl.timefmt import parse_duration_ns
from agent.errors import AgentError, InvalidArgument

__all__ = [
    "LocalVerb",
    "Verb",
    "Verbs",
    "add_output_flag",
    "duration_seconds",
    "for_each",
    "matches",
    "output_format",
    "parse_labels",
    "rpc_error_text",
]

Verb = Callable[[CriClient, argparse.Namespace], Awaitable[int]]
#: A verb that needs no agent (``config``, ``completion``): ``(args, ctl config path)``.
LocalVerb = Callable[[argparse.Namespace, str], int]


class Verbs:
    """The ``ctl`` sub-command table; ``add`` returns the verb's parser for its flags."""

    def __init__(self, subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
        self._subparsers = subparsers
        #: name -> (help, parser), in registration order; ``completion`` reads it.
        self.table: dict[str, tuple[str, argparse.ArgumentParser]] = {}

    def add(
        self, name: str, fn: Verb, help: str, *, aliases: Sequence[str] = ()
    ) -> argparse.ArgumentParser:
        parser = self._subparsers.add_parser(name, help=help, aliases=list(aliases))
        parser.set_defaults(verb_fn=fn)
        self.table[name] = (help, parser)
        for alias in aliases:
            self.table[alias] = (help, parser)
        return parser

    def add_local(self, name: str, fn: LocalVerb, help: str) -> argparse.ArgumentParser:
        parser = self._subparsers.add_parser(name, help=help)
        parser.set_defaults(local_fn=fn)
        self.table[name] = (help, parser)
        return parser


def add_output_flag(parser: argparse.ArgumentParser, choices: Sequence[str]) -> None:
    """``-o/--output`` on a verb; unset it leaves the global ``-o`` (or the verb's default)."""
    parser.add_argument(
        "-o",
        "--output",
        choices=list(choices),
        default=argparse.SUPPRESS,
        help=f"output format: {'|'.join(choices)}",
    )


def output_format(args: argparse.Namespace, default: str, allowed: Sequence[str]) -> str:
    fmt: str = getattr(args, "output", None) or default
    if fmt not in allowed:
        raise InvalidArgument(f"this verb prints {'|'.join(allowed)}, not {fmt}")
    return fmt


def parse_labels(pairs: Iterable[str]) -> dict[str, str]:
    """``--label key=value`` (repeatable) as crictl parses it."""
    labels = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or "=" in value:
            raise InvalidArgument(f"incorrectly specified label: {pair}")
        labels[key] = value
    return labels


def matches(pattern: str | None, text: str) -> bool:
    """crictl's ``--name``/``--namespace`` filters: a regular expression found anywhere."""
    if not pattern:
        return True
    try:
        return re.search(pattern, text) is not None
    except re.error:
        return False  # as crictl: a bad pattern matches nothing


def rpc_error_text(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    return str(exc)


async def for_each(ids: Sequence[str], action: Callable[[str], Awaitable[Any]], what: str) -> int:
    """Run ``action`` on every id at once; print each failure; 1 if any failed."""
    results = await asyncio.gather(*(action(i) for i in ids), return_exceptions=True)
    failed = 0
    for identifier, result in zip(ids, results, strict=True):
        if isinstance(result, grpc.aio.AioRpcError | AgentError | OSError):
            failed += 1
            print(
                f"model-agent ctl: {what} {identifier!r}: {rpc_error_text(result)}",
                file=sys.stderr,
            )
        elif isinstance(result, BaseException):
            raise result
    return 1 if failed else 0


def duration_seconds(text: str) -> float:
    """A flag's duration: Go syntax (``90s``, ``2m``) or plain seconds (``90``)."""

    try:
        return float(text)
    except ValueError:
        pass
    try:
        return parse_duration_ns(text) / 1e9
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration (90s, 2m) or seconds"
        ) from None
