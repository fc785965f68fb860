"""Where the node install puts things, and the record of what it put there.

Every path has the conventional default (``/opt/model-agent``, ``/etc/model-agent``, ...)
and can be overridden. ``root`` (default ``/``) moves the whole install into a
self-contained tree: every path, including those written *into* the config and the unit,
lies under it, so an install under a temporary root runs as it is (tests, trying it out)
and never touches the real ``/opt``, ``/etc``, ``/usr``, ``/var`` or ``/run``.

The manifest (``<prefix>/install.json``) lists the files and links the install created, so
``uninstall`` removes exactly those. Imports only the standard library.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from agent.db import database_path, legacy_database_path

__all__ = ["UNIT_NAME", "Layout", "Manifest"]

UNIT_NAME = "model-agent.service"


@dataclass(frozen=True, slots=True)
class Layout:
    root: str = "/"
    prefix: str = "/opt/model-agent"
    config_dir: str = "/etc/model-agent"
    unit_dir: str = "/etc/systemd/system"
    bin_dir: str = "/usr/local/bin"
    agent_root_dir: str = "/var/lib/model-agent"
    agent_state_dir: str = "/run/model-agent"
    cni_conf_dir: str = "/etc/cni/net.d"
    crictl_config: str = "/etc/crictl.yaml"
    modules_load_file: str = "/etc/modules-load.d/model-agent.conf"
    sysctl_file: str = "/etc/sysctl.d/99-model-agent.conf"

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not os.path.isabs(value):
                raise ValueError(f"{name}: {value!r} is not an absolute path")

    def at(self, path: str) -> str:
        """``path`` (an absolute target path) as it lies under ``root``."""
        if self.root == "/":
            return os.path.normpath(path)
        return os.path.normpath(os.path.join(self.root, path.lstrip("/")))

    @property
    def on_host(self) -> bool:
        """The real system, not a tree under another root."""
        return os.path.normpath(self.root) == "/"

    # -- derived paths (all already under root) --------------------------------------------

    @property
    def versions_dir(self) -> str:
        return self.at(os.path.join(self.prefix, "versions"))

    @property
    def current(self) -> str:
        """The symlink to the version in use; the unit runs ``current/bin/model-agent``."""
        return self.at(os.path.join(self.prefix, "current"))

    @property
    def manifest_file(self) -> str:
        return self.at(os.path.join(self.prefix, "install.json"))

    @property
    def config_file(self) -> str:
        return self.at(os.path.join(self.config_dir, "config.toml"))

    @property
    def unit_file(self) -> str:
        return self.at(os.path.join(self.unit_dir, UNIT_NAME))

    @property
    def bin_link(self) -> str:
        return self.at(os.path.join(self.bin_dir, "model-agent"))

    @property
    def state_dir(self) -> str:
        return self.at(self.agent_state_dir)

    @property
    def root_dir(self) -> str:
        return self.at(self.agent_root_dir)

    @property
    def socket(self) -> str:
        return os.path.join(self.state_dir, "model-agent.sock")

    @property
    def database(self) -> str:
        """The agent's database: in its 0700 directory, or where an older agent kept it
        (the agent moves it on its next start)."""
        path = database_path(self.root_dir)
        legacy = legacy_database_path(self.root_dir)
        return legacy if not os.path.exists(path) and os.path.exists(legacy) else path

    @property
    def executable(self) -> str:
        return os.path.join(self.current, "bin", "model-agent")

    def with_overrides(self, **paths: str | None) -> Layout:
        return replace(self, **{k: v for k, v in paths.items() if v})


@dataclass(slots=True)
class Manifest:
    """What an install created (absolute paths as they lie on disk) and which version runs."""

    version: str = ""
    venv: str = ""
    files: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    dirs: list[str] = field(default_factory=list)
    layout: dict[str, str] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def load(cls, path: str) -> Manifest | None:
        try:
            with open(path) as f:
                data = json.load(f)
        except FileNotFoundError:
            return None
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def add_file(self, path: str) -> None:
        if path not in self.files:
            self.files.append(path)

    def add_link(self, path: str) -> None:
        if path not in self.links:
            self.links.append(path)

    def add_dir(self, path: str) -> None:
        if path not in self.dirs:
            self.dirs.append(path)

    def save(self, path: str) -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            json.dump(asdict(self), f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
