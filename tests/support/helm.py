"""Render and lint a Helm chart with Helm's own engine (helm-sdkpy), with no cluster.

helm-sdkpy (Helm v4 built as a shared library) offers ``Install``/``Upgrade``, which
need a reachable API server even to render (the shim exposes no dry-run/client-only
mode: Helm's ``DryRunClient`` is never set), and ``Lint``, which runs Helm's engine on the
chart with its ``values.yaml`` and no cluster, but answers only severities and paths (the
error texts are lost on the way to JSON). So:

* **lint** a copy of the chart whose ``values.yaml`` is the values set (Helm validates it
  against ``values.schema.json`` and renders every template; a severity-3 message fails);
* **render**: a second copy moves each manifest template under ``files/`` and adds one
  template that renders each of them with Helm's ``tpl`` (the same engine, the chart's
  named templates, values, ``.Files`` and capabilities) in a context with the release's
  name and namespace, and hands the result out through ``fail``, which Helm's engine in
  lint mode logs (``funcMap fail message=...`` on the Go library's stderr) instead of
  failing. The chart's own ``fail`` calls come out the same way and are raised here.

Each lint runs in a child process, whose stderr carries the Go logger's lines.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

__all__ = ["HelmError", "Rendered", "deep_merge", "lint", "render"]

_PROBE = "zz-render"  # not "_...": Helm renders no template whose name starts with "_"
_FAIL_LINE = re.compile(r'funcMap fail message=("(?:[^"\\]|\\.)*"|\S+)')
_LINT_SCRIPT = """
import asyncio, json, sys
import helm_sdkpy
cfg = helm_sdkpy.Configuration(namespace=sys.argv[2])
print(json.dumps(asyncio.run(helm_sdkpy.Lint(cfg).run(sys.argv[1]))))
"""

_DUMP_TEMPLATE = """{{- $release := dict "Name" %(name)s "Namespace" %(namespace)s \
"Service" "Helm" "IsInstall" true "IsUpgrade" false "Revision" 1 }}
{{- $ctx := dict "Values" .Values "Release" $release "Chart" .Chart "Capabilities" .Capabilities \
"Files" .Files "Template" .Template }}
{{- range $path, $_ := .Files.Glob "files/%(probe)s/*" }}
{{- fail (printf "RENDERED %%s %%s" $path (tpl ($.Files.Get $path) $ctx | b64enc)) }}
{{- end }}
"""


class HelmError(AssertionError):
    pass


@dataclass(frozen=True)
class Rendered:
    #: template file name -> its rendered text
    files: dict[str, str]
    #: every manifest (YAML document) of every file, in file-name order
    manifests: list[dict[str, Any]]

    def kinds(self) -> list[str]:
        return [m["kind"] for m in self.manifests]

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        found = [
            m
            for m in self.manifests
            if m["kind"] == kind and (name is None or m["metadata"]["name"] == name)
        ]
        assert len(found) == 1, f"{len(found)} {kind} {name or ''} in {self.kinds()}"
        return found[0]


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _copy_with_values(chart: str, values: Mapping[str, Any], dest: str) -> None:
    shutil.copytree(chart, dest)
    with open(os.path.join(chart, "values.yaml")) as f:
        defaults = yaml.safe_load(f) or {}
    with open(os.path.join(dest, "values.yaml"), "w") as f:
        json.dump(deep_merge(defaults, values), f, indent=2)  # JSON is YAML


def _run_lint(chart: str, namespace: str) -> tuple[dict[str, Any], str]:
    done = subprocess.run(
        [sys.executable, "-c", _LINT_SCRIPT, chart, namespace],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode != 0:
        raise HelmError(f"helm lint did not run: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


def _fail_messages(stderr: str) -> list[str]:
    """The messages of ``fail`` calls, as Go's slog wrote them (quoted when needed)."""
    return [json.loads(m) if m.startswith('"') else m for m in _FAIL_LINE.findall(stderr)]


def lint(chart: str, values: Mapping[str, Any], *, namespace: str = "model-agent") -> None:
    """Helm's lint of the chart with these values; raises on errors and the chart's ``fail``."""
    with tempfile.TemporaryDirectory() as tmp:
        copy = os.path.join(tmp, os.path.basename(chart))
        _copy_with_values(chart, values, copy)
        result, stderr = _run_lint(copy, namespace)
    errors = [m["Path"] for m in result.get("Messages") or [] if m.get("Severity", 0) >= 3]
    failed = _fail_messages(stderr)
    if errors or failed or result.get("Errors"):
        raise HelmError(f"helm lint: errors in {errors}; fail: {failed}\n{stderr[-2000:]}")


def render(
    chart: str,
    values: Mapping[str, Any],
    *,
    release: str = "model-agent",
    namespace: str = "model-agent",
) -> Rendered:
    """Every manifest template rendered by Helm's engine with these values (see module doc)."""
    with tempfile.TemporaryDirectory() as tmp:
        copy = os.path.join(tmp, os.path.basename(chart))
        _copy_with_values(chart, values, copy)
        templates = os.path.join(copy, "templates")
        probe = os.path.join(copy, "files", _PROBE)
        os.makedirs(probe)
        names = sorted(n for n in os.listdir(templates) if n.endswith((".yaml", ".yml")))
        for name in names:
            shutil.move(os.path.join(templates, name), os.path.join(probe, name))
        with open(os.path.join(templates, f"{_PROBE}.yaml"), "w") as f:
            f.write(
                _DUMP_TEMPLATE
                % {"name": json.dumps(release), "namespace": json.dumps(namespace), "probe": _PROBE}
            )
        _, stderr = _run_lint(copy, namespace)
    files: dict[str, str] = {}
    failures = []
    for message in _fail_messages(stderr):
        tag, _, rest = message.partition(" ")
        if tag == "RENDERED":
            path, _, data = rest.partition(" ")
            files[os.path.basename(path)] = base64.b64decode(data).decode()
        else:
            failures.append(message)
    if failures:
        raise HelmError(f"the chart failed: {'; '.join(failures)}")
    missing = sorted(set(names) - set(files))
    if missing:
        raise HelmError(f"templates not rendered: {missing}\n{stderr[-2000:]}")
    manifests: list[dict[str, Any]] = []
    for name in names:
        try:
            documents = list(yaml.safe_load_all(files[name]))
        except yaml.YAMLError as exc:
            raise HelmError(f"{name} is not YAML: {exc}\n{files[name]}") from None
        manifests.extend(d for d in documents if d)
    return Rendered(files, manifests)
