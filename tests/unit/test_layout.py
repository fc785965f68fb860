"""The package layout DESIGN.md promises, checked: explicit exports and layering.

Like httpx's exported-members test: every module says what it exports
(``__all__``), a package's ``__init__`` is its API, and a name one package
takes from another must be in that package's ``__all__`` and imported from the
package itself (``from agent.oci import Runtime``, not
``from agent.oci.runc import …``). The import contract keeps the layers of
DESIGN.md: nothing below ``cri`` touches CRI protobuf types, and the
low-level packages never reach up.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import pathlib
import re
from dataclasses import dataclass

import pytest

AGENT = pathlib.Path(__file__).resolve().parents[2] / "agent"

#: Which top-level parts of ``agent`` each may import (besides itself). Modules
#: that every layer may use are in ``ANYWHERE``.
ANYWHERE = {"errors", "config", "log", "_util", "__init__"}
ALLOWED = {
    "__main__": {"cli"},
    "cli": {"app", "ctl", "db", "install"},
    "install": {"db"},
    "app": {"cri", "pods", "images", "streaming", "metrics", "health", "db", "gpu"},
    "cri": {"api", "pods", "images", "streaming", "metrics", "health", "gpu"},
    "ctl": {"api", "images", "streaming"},
    "pods": {"images", "oci", "network", "gpu", "db"},
    "metrics": {"pods", "gpu", "db"},
    "streaming": {"oci", "network"},
    "images": {"db"},
    "health": {"oci", "network"},
    "gpu": {"db", "api"},  # the kubelet's plugin protos (never CRI's: see below)
    "oci": set(),
    "network": set(),
    "db": set(),
    "_util": set(),
    "errors": set(),
    "config": set(),
    "log": set(),
}
#: Packages that are namespaces of leaf modules, imported module by module (importing
#: ``agent._util`` itself must stay free: the CDI hook and the node install start fast).
LEAF_NAMESPACES = {"agent._util"}
#: Only these may import the CRI protobuf modules (``agent.api.cri``).
CRI_PROTOBUF_USERS = {"cri", "ctl"}


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, dotted
    line: int
    target: str  # the module imported from
    names: tuple[str, ...]


def _modules() -> list[tuple[str, pathlib.Path]]:
    found = []
    for path in sorted(AGENT.rglob("*.py")):
        rel = path.relative_to(AGENT.parent).with_suffix("")
        if rel.parts[:2] == ("agent", "api"):
            continue
        name = ".".join(rel.parts).removesuffix(".__init__")
        found.append((name, path))
    return found


def _top(dotted: str) -> str:
    parts = dotted.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports() -> list[Import]:
    result = []
    for module, path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module == "agent" or node.module.startswith("agent."):
                    names = tuple(a.name for a in node.names)
                    result.append(Import(module, node.lineno, node.module, names))
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("agent."):
                        result.append(Import(module, node.lineno, alias.name, ()))
    return result


def _package_of(target: str) -> str:
    """``agent.oci.runc`` -> ``agent.oci`` (a package); ``agent.config`` stays."""
    parts = target.split(".")
    if len(parts) >= 2 and (AGENT / parts[1]).is_dir():
        return ".".join(parts[:2])
    return target


@pytest.mark.parametrize(("module", "path"), _modules(), ids=lambda v: str(v))
def test_every_module_declares_its_exports(module, path):
    tree = ast.parse(path.read_text())
    declared = [
        node
        for node in tree.body
        if isinstance(node, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets)
    ]
    if module.endswith("__main__"):
        return  # an entry point, nothing to export
    assert declared, f"{module} has no __all__"
    exported = importlib.import_module(module)
    for name in exported.__all__:
        present = hasattr(exported, name) or importlib.util.find_spec(f"{module}.{name}")
        assert present, f"{module}.__all__ lists {name!r}, which it lacks"


def export_problems(imports: list[Import]) -> list[str]:
    problems = []
    for imp in imports:
        if _top(imp.module) == _top(imp.target) or _top(imp.target) == "api":
            continue
        package = _package_of(imp.target)
        if package in LEAF_NAMESPACES and imp.target != package:
            # A namespace of leaf modules: name the module, import what it exports.
            exported = set(getattr(importlib.import_module(imp.target), "__all__", ()))
            problems += [
                f"{imp.module}:{imp.line}: {imp.target} does not export {name!r}"
                for name in imp.names
                if name not in exported
            ]
            continue
        if package != imp.target:
            problems.append(
                f"{imp.module}:{imp.line} imports {imp.target}; use `from {package} import …`"
            )
            continue
        exported = set(getattr(importlib.import_module(package), "__all__", ()))
        for name in imp.names:
            if name not in exported:
                problems.append(f"{imp.module}:{imp.line}: {package} does not export {name!r}")
    return problems


def layer_problems(imports: list[Import]) -> list[str]:
    problems = []
    for imp in imports:
        source, target = _top(imp.module), _top(imp.target)
        if source == target or target in ANYWHERE:
            continue
        if imp.target.startswith("agent.api.cri") and source not in CRI_PROTOBUF_USERS:
            problems.append(f"{imp.module}:{imp.line} uses CRI protobuf types below cri/")
        elif target not in ALLOWED.get(source, set()):
            problems.append(f"{imp.module}:{imp.line}: {source} may not import {target}")
    return problems


def test_imports_are_absolute():
    """The layer and export checks read absolute imports only: a relative one would
    slip past them."""
    relative = [
        f"{module}:{node.lineno}"
        for module, path in _modules()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ImportFrom) and node.level > 0
    ]
    assert relative == []


def test_names_used_across_packages_are_exported_by_the_package():
    problems = export_problems(_imports())
    assert problems == [], "\n".join(problems)


def test_the_layers_of_design_md():
    problems = layer_problems(_imports())
    assert problems == [], "\n".join(problems)


def test_the_checks_catch_violations():
    """The checks above are only worth something if bad imports fail them."""
    bad = [
        Import("agent.oci.runc", 1, "agent.pods", ("PodService",)),  # reaches up
        Import("agent.pods.spec", 2, "agent.api.cri.runtime.v1", ("api_pb2",)),  # protobuf
        Import("agent.cri.rpc", 3, "agent.pods.containers", ("ContainerManager",)),  # internal
        Import("agent.cri.rpc", 4, "agent.pods", ("ContainerManager",)),  # not exported
    ]
    assert len(layer_problems(bad[:2])) == 2
    assert len(export_problems(bad[2:])) == 2
    assert layer_problems([Import("agent.cri.rpc", 5, "agent.pods", ("PodService",))]) == []


#: Calls that start a process; only ``agent/_util/proc.py`` may make them.
_PROCESS_STARTERS = re.compile(
    r"\b(create_subprocess_exec|create_subprocess_shell|subprocess_exec|subprocess_shell|"
    r"subprocess\.|from subprocess import|import subprocess|os\.fork(pty)?|os\.system|"
    r"os\.exec[lv]p?e?|os\.spawn\w*|os\.posix_spawnp?|pty\.(spawn|fork)|multiprocessing|Popen)\b"
)


#: Modules that start processes without ``_util.proc``, and why.
_OWN_PROCESSES = {
    # The node install runs on a bare node before any dependency (or asyncio code of
    # ours) can be imported: standard library only, synchronous subprocess calls.
    "agent.install",
    # The CDI ldconfig hook is a program of its own that runc starts for each GPU
    # container (synchronous, must start in milliseconds, no event loop to hand off to).
    "agent.gpu.cdi.hook",
}


def test_only_util_proc_starts_processes():
    offenders = []
    for module, path in _modules():
        if module == "agent._util.proc" or any(
            module == own or module.startswith(own + ".") for own in _OWN_PROCESSES
        ):
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if _PROCESS_STARTERS.search(code) or re.match(r"\s*import subprocess", code):
                offenders.append(f"{module}:{number}: {line.strip()}")
    assert offenders == [], "\n".join(offenders)


def test_every_way_to_start_a_process_is_caught():
    starts = [
        "await asyncio.create_subprocess_exec(*argv)",
        "await loop.subprocess_exec(Protocol, *argv)",
        "from subprocess import run",
        "import subprocess",
        "subprocess.run(argv)",
        "os.posix_spawnp(argv[0], argv, env)",
        "os.forkpty()",
        "pty.spawn(argv)",
        "os.execvpe(argv[0], argv, env)",
        "os.spawnlp(os.P_WAIT, 'x')",
    ]
    assert [line for line in starts if not _PROCESS_STARTERS.search(line)] == []
    assert not _PROCESS_STARTERS.search("await proc.wait()  # a subprocessing note")


#: Issue 9: "No module over ~500 lines without a reason written at its top."
_LONG_MODULE = 500


def test_a_long_module_says_why_it_is_long():
    unexplained = []
    for module, path in _modules():
        text = path.read_text()
        lines = text.count("\n")
        if lines <= _LONG_MODULE:
            continue
        doc = ast.get_docstring(ast.parse(text)) or ""
        if "\nSize: " not in "\n" + doc:
            unexplained.append(f"{module} ({lines} lines)")
    assert unexplained == [], "add a 'Size: ...' paragraph to the docstring, or split"
