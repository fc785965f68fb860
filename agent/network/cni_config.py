"""Find the CNI network configuration pods are attached with.

The rules follow libcni/ocicni, which every CRI runtime uses: files ending in
``.conf``, ``.conflist`` or ``.json`` in the config directory, taken in file
name order; the first one that parses, names a network, and whose plugins all
exist in the plugin directories wins. A ``.conf`` file holds one plugin and is
treated as a list of one. What was rejected and why is kept, so ``Status``
can say why the network is not ready.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

__all__ = ["CONFIG_EXTENSIONS", "NetworkConfig", "NetworkLookup", "find_network", "find_plugin"]

CONFIG_EXTENSIONS = (".conf", ".conflist", ".json")


@dataclass(frozen=True, slots=True)
class NetworkConfig:
    """One usable network: the conflist the plugins are called with."""

    path: str
    name: str
    cni_version: str
    #: the conflist as a JSON object (``name``, ``cniVersion``, ``plugins``, ...)
    conflist: dict[str, Any]

    @property
    def plugin_types(self) -> list[str]:
        return [str(p["type"]) for p in self.conflist["plugins"]]


@dataclass(frozen=True, slots=True)
class NetworkLookup:
    network: NetworkConfig | None
    #: ``path: why`` for every file that was skipped
    rejected: list[str] = field(default_factory=list)

    def explain(self, conf_dirs: list[str]) -> str:
        where = ", ".join(conf_dirs)
        if not self.rejected:
            return f"no CNI network config found in {where}"
        return f"no usable CNI network config in {where}: " + "; ".join(self.rejected)


def find_plugin(plugin_type: str, bin_dirs: list[str]) -> str | None:
    """The path of the plugin binary for ``type``, searched in order."""
    if os.sep in plugin_type or plugin_type in ("", ".", ".."):
        return None  # a type is a bare name; never let a config point elsewhere
    for directory in bin_dirs:
        candidate = os.path.join(directory, plugin_type)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def find_network(conf_dirs: list[str], bin_dirs: list[str]) -> NetworkLookup:
    """The first usable network config across ``conf_dirs`` (earlier dirs win)."""
    rejected: list[str] = []
    for conf_dir in conf_dirs:
        try:
            names = sorted(os.listdir(conf_dir))
        except FileNotFoundError:
            continue
        except OSError as exc:
            rejected.append(f"{conf_dir}: {exc.strerror}")
            continue
        for name in names:
            if not name.endswith(CONFIG_EXTENSIONS):
                continue
            path = os.path.join(conf_dir, name)
            try:
                network = _load(path, bin_dirs)
            except ValueError as exc:
                rejected.append(f"{path}: {exc}")
                continue
            return NetworkLookup(network, rejected)
    return NetworkLookup(None, rejected)


def _load(path: str, bin_dirs: list[str]) -> NetworkConfig:
    try:
        with open(path, "rb") as f:
            data = json.load(f)
    except OSError as exc:
        raise ValueError(exc.strerror or str(exc)) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    if "plugins" not in data and "type" in data:
        single = {k: v for k, v in data.items() if k not in ("name", "cniVersion")}
        data = {
            "cniVersion": data.get("cniVersion", ""),
            "name": data.get("name"),
            "plugins": [single],
        }
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError("no network name")
    version = data.get("cniVersion", "")
    if not isinstance(version, str):
        raise ValueError("cniVersion is not a string")
    plugins = data.get("plugins")
    if not isinstance(plugins, list) or not plugins:
        raise ValueError("no plugins")
    for plugin in plugins:
        if not isinstance(plugin, dict) or not isinstance(plugin.get("type"), str):
            raise ValueError("a plugin has no type")
        if find_plugin(plugin["type"], bin_dirs) is None:
            raise ValueError(f"plugin '{plugin['type']}' not found in {', '.join(bin_dirs)}")
    return NetworkConfig(path=path, name=name, cni_version=version, conflist=data)
