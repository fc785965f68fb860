"""ctl's own client config, in crictl's ``/etc/crictl.yaml`` format, and the ``config`` verb.

The file is flat YAML with crictl's six keys (``runtime-endpoint``,
``image-endpoint``, ``timeout``, ``debug``, ``pull-image-on-create``,
``disable-pull-on-run``); unknown keys are refused, as crictl refuses them.
It lives at ``/etc/model-agent/ctl.yaml`` (``--ctl-config``, env
``MODEL_AGENT_CTL_CONFIG``) so that crictl's own file, which may point at
another runtime, stays crictl's. Writes keep the other lines and comments of the
file and replace it atomically. Imports PyYAML, ``output`` and ``errors``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import tempfile
from dataclasses import dataclass, fields, replace
from typing import Any

import yaml

from agent.ctl.output import Table
from agent.errors import InvalidArgument

__all__ = [
    "DEFAULT_PATH",
    "ENV_VAR",
    "KEYS",
    "CtlConfig",
    "add_config_verb_flags",
    "config_path",
    "config_verb",
    "endpoint_path",
    "read_config",
    "write_config",
]

DEFAULT_PATH = "/etc/model-agent/ctl.yaml"
ENV_VAR = "MODEL_AGENT_CTL_CONFIG"


@dataclass(frozen=True)
class CtlConfig:
    runtime_endpoint: str = ""
    image_endpoint: str = ""
    timeout: int = 0  # seconds; 0 keeps ctl's own default
    debug: bool = False
    pull_image_on_create: bool = False
    disable_pull_on_run: bool = False


#: The YAML keys in crictl's order, each with its dataclass field.
KEYS = {f.name.replace("_", "-"): f.name for f in fields(CtlConfig)}
_DESCRIPTIONS = {
    "runtime-endpoint": "CRI runtime endpoint, unix:///path or a path (default: the agent's)",
    "image-endpoint": "CRI image endpoint (default: the runtime endpoint)",
    "timeout": "per-call deadline in seconds (default: 30)",
    "debug": "log every CRI request and response to stderr (default: false)",
    "pull-image-on-create": "create pulls the image first (default: false)",
    "disable-pull-on-run": "run does not pull the image (default: false)",
}
_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}


def config_path(flag: str | None) -> str:
    return flag or os.environ.get(ENV_VAR) or DEFAULT_PATH


def _coerce(key: str, value: Any) -> Any:
    """A value from the file or the command line, checked like crictl's ``strconv`` parses."""
    name = KEYS[key]
    if name == "timeout":
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise InvalidArgument(f"{key}: {value!r} is not a whole number of seconds")
        try:
            return int(value)
        except ValueError:
            raise InvalidArgument(f"{key}: {value!r} is not a whole number of seconds") from None
    if name in ("debug", "pull_image_on_create", "disable_pull_on_run"):
        if isinstance(value, bool):
            return value
        text = str(value)
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise InvalidArgument(f"{key}: {value!r} is not true or false")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidArgument(f"{key}: {value!r} is not a string")
    return value


def read_config(path: str) -> CtlConfig:
    """The file's settings; a missing file is all defaults."""
    try:
        with open(path, encoding="utf-8") as f:
            document = yaml.safe_load(f)
    except FileNotFoundError:
        return CtlConfig()
    except yaml.YAMLError as exc:
        raise InvalidArgument(f"{path}: not YAML: {exc}") from None
    if document is None:
        return CtlConfig()
    if not isinstance(document, dict):
        raise InvalidArgument(f"{path}: expected key: value lines")
    values = {}
    for key, value in document.items():
        if key not in KEYS:
            raise InvalidArgument(f"{path}: config option '{key}' is not valid")
        values[KEYS[key]] = _coerce(key, value)
    return CtlConfig(**values)


def _line(key: str, value: Any) -> str:
    return yaml.safe_dump({key: value}, default_flow_style=False).rstrip("\n")


def write_config(path: str, config: CtlConfig) -> None:
    """Write every key (as crictl does), keeping the file's other lines and comments."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        lines = []
    pending = dict(KEYS)
    for i, text in enumerate(lines):
        match = re.match(r"([A-Za-z-]+)\s*:", text)
        if match and match[1] in pending:
            key = match[1]
            lines[i] = _line(key, getattr(config, pending.pop(key)))
    lines += [_line(key, getattr(config, name)) for key, name in pending.items()]
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, mode=0o755, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=".ctl-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise


def endpoint_path(endpoint: str) -> str:
    """``unix:///run/x.sock`` or ``/run/x.sock`` -> ``/run/x.sock``; other schemes are refused."""
    if endpoint.startswith("unix://"):
        return endpoint.removeprefix("unix://")
    if "://" in endpoint:
        raise InvalidArgument(f"endpoint {endpoint!r}: only unix:// sockets are supported")
    return endpoint


def _set(config: CtlConfig, key: str, value: str) -> CtlConfig:
    if key not in KEYS:
        raise InvalidArgument(f"no configuration option named {key}")
    return replace(config, **{KEYS[key]: _coerce(key, value)})


def _show(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def add_config_verb_flags(parser: argparse.ArgumentParser) -> None:
    parser.description = "Get, set and list ctl's client options.\n\noptions:\n" + "\n".join(
        f"  {key}: {text}" for key, text in _DESCRIPTIONS.items()
    )
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--get", metavar="KEY", help="print one option's value")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE[,KEY=VALUE]",
        help="set options (repeatable, or comma-separated)",
    )
    parser.add_argument("--list", action="store_true", help="print every option")
    parser.add_argument("key", nargs="?", help="set KEY to VALUE (without --set)")
    parser.add_argument("value", nargs="?", default="")


def config_verb(args: argparse.Namespace, path: str) -> int:
    """``config --get K | --set K=V[,K=V] | --list | K V`` on ``path``."""
    config = read_config(path)
    if args.get:
        if args.get not in KEYS:
            raise InvalidArgument(f"no configuration option named {args.get}")
        print(_show(getattr(config, KEYS[args.get])))
        return 0
    if args.set:
        for setting in args.set:
            for option in setting.split(","):
                key, sep, value = option.partition("=")
                if not sep or "=" in value:
                    raise InvalidArgument(f"incorrectly specified option: {setting}")
                config = _set(config, key, value)
        write_config(path, config)
        return 0
    if args.list:
        table = Table(["KEY", "VALUE"])
        for key, name in KEYS.items():
            table.add([key, _show(getattr(config, name))])
        table.write()
        return 0
    if not args.key:
        raise InvalidArgument("config needs --get KEY, --set KEY=VALUE, --list or KEY VALUE")
    print(f'setting key "{args.key}" to value "{args.value}"', file=sys.stderr)
    write_config(path, _set(config, args.key, args.value))
    return 0
