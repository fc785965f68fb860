"""``model-agent install`` and ``uninstall``: the steps, in order, and what they print.

install, in two phases so that the *new* version's rules write the files:

1. stage: build ``<prefix>/versions/<version>-<wheel digest>`` (a virtualenv) from the
   wheelhouse with ``pip --no-index`` (offline), unless that exact build is already there,
   then run phase 2 with that virtualenv's Python;
2. finish (in the new version): refuse a database newer than this version understands,
   write or check the config, write the unit, crictl's config and the kernel settings,
   switch ``<prefix>/current`` to the new version in one rename, and restart the unit
   (systemd as PID 1) or say how to start the agent. The old agent process is the only
   thing stopped: with ``KillMode=process`` conmon and the containers keep running and the
   new agent adopts them. The unit is restarted only when what is installed (the version's
   virtualenv, the unit file, the config) differs from what it was last started with (the
   manifest's history records that after each start), or when it is not running: an
   install that changes nothing (the chart's installer pod after a node reboot) leaves the
   agent alone, as containerd's and NVIDIA's operators do.

uninstall removes what install created (its manifest) and keeps the config and state
unless ``--purge``. Imports only the standard library at import time; phase 2 imports
``agent.config`` and ``agent.db``, which exist in the virtualenv it runs in.

Size: the install's steps in the order they run, each short; split, the order
(what is refused before anything switches) would be harder to see.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import re
import shutil
import sys
import time
import tomllib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from agent.install import files
from agent.install.host import (
    InstallError,
    agent_pid,
    apply_kernel_settings,
    database_schema,
    detect_gpus,
    gpu_labels,
    missing_prerequisites,
    pod_count,
    run,
    systemd_is_init,
)
from agent.install.layout import UNIT_NAME, Layout, Manifest
from agent.install.uninstall import uninstall

if TYPE_CHECKING:
    from agent.config import Config

__all__ = ["main"]

_WHEEL = re.compile(r"^model_agent-(?P<version>[^-]+)-.*\.whl$")
_PIP_TIMEOUT = 900.0
_SYSTEMCTL_TIMEOUT = 960.0  # the unit's TimeoutStartSec (recovery) and a margin
_HISTORY_KEEP = 50  # installs remembered in the manifest
#: ``systemctl is-active`` answers for a unit that runs (or is coming up: its recovery)
_RUNNING = ("active", "reloading", "activating")


def _say(text: str) -> None:
    print(f"model-agent install: {text}", flush=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="model-agent", description="Install model-agent on this node, or remove it."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    install = sub.add_parser("install", help="install or upgrade from a wheelhouse (offline)")
    uninstall = sub.add_parser("uninstall", help="remove what install put there")
    for p in (install, uninstall):
        p.add_argument("--root", default="/", help="install into a self-contained tree here")
        p.add_argument("--prefix", help="virtualenvs and the current link (/opt/model-agent)")
        p.add_argument("--config-dir", help="the config (/etc/model-agent)")
        p.add_argument("--unit-dir", help="the systemd unit (/etc/systemd/system)")
        p.add_argument("--bin-dir", help="the model-agent command link (/usr/local/bin)")
        p.add_argument("--agent-root-dir", help="the agent's state (/var/lib/model-agent)")
        p.add_argument("--agent-state-dir", help="the agent's volatile state (/run/model-agent)")
        p.add_argument("--cni-conf-dir", help="the cluster's CNI configs (/etc/cni/net.d)")
    install.add_argument("--wheelhouse", required=True, help="directory of wheels to install")
    install.add_argument(
        "--cgroup-driver",
        choices=("auto", "systemd", "cgroupfs"),
        default="auto",
        help="auto: systemd when systemd is PID 1 (as kubeadm sets up) for a new config, an "
        "existing one kept; systemd or cgroupfs also set it in an existing config "
        "(refused while pods exist)",
    )
    install.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a config key to set, e.g. metrics.address=0.0.0.0:9464 (repeatable)",
    )
    install.add_argument("--no-start", action="store_true", help="do not (re)start the unit")
    install.add_argument(
        "--apply-kernel",
        choices=("auto", "yes", "no"),
        default="auto",
        help="load br_netfilter/overlay and set the sysctls now (auto: unless --root)",
    )
    install.add_argument("--kubeconfig", help="label this node's GPUs with kubectl using this")
    install.add_argument("--node-name", default=os.uname().nodename, help="for the labels")
    install.add_argument("--python", default=sys.executable, help="builds the virtualenv")
    install.add_argument("--staged", help=argparse.SUPPRESS)  # phase 2, run by phase 1
    install.add_argument("--staged-fresh", action="store_true", help=argparse.SUPPRESS)
    uninstall.add_argument(
        "--purge", action="store_true", help="also delete the config and all agent state"
    )
    return parser


def _layout(args: argparse.Namespace) -> Layout:
    return Layout(root=os.path.abspath(args.root)).with_overrides(
        prefix=args.prefix,
        config_dir=args.config_dir,
        unit_dir=args.unit_dir,
        bin_dir=args.bin_dir,
        agent_root_dir=args.agent_root_dir,
        agent_state_dir=args.agent_state_dir,
        cni_conf_dir=args.cni_conf_dir,
    )


def main(argv: Sequence[str]) -> int:
    args = _parser().parse_args(list(argv))
    try:
        layout = _layout(args)
        if args.command == "uninstall":
            uninstall(layout, purge=args.purge, say=_say)
        elif args.staged:
            _finish(layout, args)
        else:
            return _stage(layout, args, list(argv))
    except (InstallError, ValueError) as exc:
        print(f"model-agent {args.command}: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


# -- phase 1: the virtualenv ------------------------------------------------------------------


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version))


def _find_wheel(wheelhouse: str) -> tuple[str, str]:
    try:
        names = os.listdir(wheelhouse)
    except OSError as exc:
        raise InstallError(f"wheelhouse {wheelhouse}: {exc.strerror}") from None
    found = [(m["version"], n) for n in names if (m := _WHEEL.match(n))]
    if not found:
        raise InstallError(
            f"no model_agent wheel in {wheelhouse} (build one with scripts/build-wheelhouse)"
        )
    version, name = max(found, key=lambda f: _version_key(f[0]))
    return version, os.path.join(wheelhouse, name)


def _offline_pip_env() -> dict[str, str]:
    """pip that reads no config file and no PIP_* variable: only the wheelhouse counts."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _stage(layout: Layout, args: argparse.Namespace, argv: list[str]) -> int:
    # install.sh runs this from the wheel through PYTHONPATH; the new virtualenv's programs
    # must import their own installed copy, not that wheel.
    os.environ.pop("PYTHONPATH", None)
    wheelhouse = os.path.abspath(args.wheelhouse)
    version, wheel = _find_wheel(wheelhouse)
    with open(wheel, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:12]
    venv = os.path.join(layout.versions_dir, f"{version}-{digest}")
    python = os.path.join(venv, "bin", "python")
    fresh = not _built(venv, version)
    if not fresh:
        _say(f"model-agent {version} already built in {venv}")
    else:
        _say(f"building model-agent {version} in {venv} from {wheelhouse} (offline)")
        shutil.rmtree(venv, ignore_errors=True)  # a build interrupted earlier
        os.makedirs(layout.versions_dir, exist_ok=True)
        try:
            run([args.python, "-m", "venv", venv], timeout=300)
            argv_pip = [python, "-m", "pip", "install", "--quiet", "--no-index", "--no-cache-dir"]
            argv_pip += ["--find-links", wheelhouse, f"model-agent=={version}"]
            _run_env(argv_pip, env=_offline_pip_env())
        except BaseException:
            shutil.rmtree(venv, ignore_errors=True)
            raise
    phase2 = [python, "-m", "agent.install", *argv, "--staged", venv]
    if fresh:
        phase2.append("--staged-fresh")  # phase 2 removes it again if it refuses
    return _run_env(phase2, check=False)


def _built(venv: str, version: str) -> bool:
    executable = os.path.join(venv, "bin", "model-agent")
    if not os.access(executable, os.X_OK):
        return False
    done = run([executable, "version"], timeout=60, check=False)
    return done.returncode == 0 and done.stdout.split() == ["model-agent", version]


def _run_env(argv: list[str], *, env: dict[str, str] | None = None, check: bool = True) -> int:
    """Run with the output shown (pip's errors, phase 2's messages); its exit status."""
    import subprocess

    try:
        code = subprocess.run(argv, env=env, timeout=_PIP_TIMEOUT, check=False).returncode
    except subprocess.TimeoutExpired:
        raise InstallError(f"{' '.join(argv[:4])} ...: no end within {_PIP_TIMEOUT:.0f}s") from None
    if check and code != 0:
        raise InstallError(f"{' '.join(argv[:4])} ... failed (exit {code})")
    return code


# -- phase 2: in the new version --------------------------------------------------------------


def _finish(layout: Layout, args: argparse.Namespace) -> None:
    from agent import __version__

    venv = os.path.abspath(args.staged)
    previous = os.path.realpath(layout.current) if os.path.islink(layout.current) else ""
    try:
        _check_database(layout, __version__)
        manifest = Manifest.load(layout.manifest_file) or Manifest()
        config = _write_config(layout, args)
    except BaseException:
        if args.staged_fresh and os.path.realpath(venv) != previous:
            shutil.rmtree(venv, ignore_errors=True)  # nothing switched: leave no new version
        raise
    for problem in missing_prerequisites(config.network.cni_bin_dirs):
        _say(f"warning: missing {problem}")
    _write(manifest, layout.unit_file, files.unit_text(layout))
    _write_crictl(manifest, layout)
    _write(manifest, layout.at(layout.modules_load_file), files.modules_load_text())
    _write(manifest, layout.at(layout.sysctl_file), files.sysctl_text())
    _switch(manifest, layout, venv)
    manifest.version = __version__
    manifest.venv = venv
    manifest.layout = {k: getattr(layout, k) for k in Layout.__dataclass_fields__}
    manifest.history.append(
        {
            "version": __version__,
            "venv": venv,
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
    )
    # The installer pod runs again after every reboot: keep the newest entries only (the
    # last "started" record among them is what _start compares with).
    del manifest.history[:-_HISTORY_KEEP]
    manifest.save(layout.manifest_file)
    _prune(layout, keep={venv, previous})
    _say(f"model-agent {__version__} installed in {venv}")
    _kernel(layout, args.apply_kernel)
    installed = _installed(layout, venv)
    if _start(layout, args.no_start, _last_started(manifest), installed):
        manifest.history[-1]["started"] = installed
        manifest.save(layout.manifest_file)
    driver = config.runtime.cgroup_driver
    print("\nkubelet settings:\n" + files.kubelet_settings(layout, driver), flush=True)
    _gpu_labels(args)


def _check_database(layout: Layout, version: str) -> None:
    """Refuse to switch to a version that cannot read the database (a downgrade)."""
    from agent.db import MIGRATIONS

    schema = database_schema(layout.database)
    if schema is None:
        return
    found, written_by = schema
    if found > len(MIGRATIONS):
        by = f" (last started by model-agent {written_by})" if written_by else ""
        raise InstallError(
            f"{layout.database} has schema version {found}{by}; model-agent {version} "
            f"understands up to version {len(MIGRATIONS)}. Installing it would be a downgrade "
            f"that cannot read this node's state: nothing was changed. Install model-agent "
            f"{written_by or 'of that version'} or newer, or remove the state first "
            "(uninstall --purge)."
        )


def _node_choices(layout: Layout, cgroup_driver: str) -> dict[str, Any]:
    """The config of a kubelet node (everything else keeps the agent's defaults)."""
    return {
        "agent": {
            "root_dir": layout.root_dir,
            "state_dir": layout.state_dir,
        },
        "runtime": {"cgroup_driver": cgroup_driver},
        "network": {
            "cni_conf_dir": layout.at(layout.cni_conf_dir),
            # NetworkReady waits for the cluster's CNI, as with containerd and CRI-O
            "default_network": "never",
        },
        "image": {"credentials_file": os.path.join(layout.at(layout.config_dir), "auth.json")},
    }


def _apply_sets(tree: dict[str, Any], sets: Sequence[str]) -> None:
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep or not key or key.startswith(".") or key.endswith("."):
            raise InstallError(f"--set {item!r}: expected KEY=VALUE, e.g. agent.log_format=json")
        *parents, leaf = key.split(".")
        node = tree
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise InstallError(f"--set {key}: {part} is not a table")
            node = child
        node[leaf] = value  # the agent's loader coerces strings, as for MODEL_AGENT_* variables


def _configured_driver(path: str) -> str:
    """``runtime.cgroup_driver`` of an existing config file ("" when it does not parse)."""
    from agent.config import RuntimeSection

    try:
        with open(path, "rb") as f:
            runtime = tomllib.load(f).get("runtime", {})
    except (OSError, tomllib.TOMLDecodeError):
        return ""
    value = runtime.get("cgroup_driver") if isinstance(runtime, dict) else None
    return str(value) if value is not None else RuntimeSection().cgroup_driver


def _write_config(layout: Layout, args: argparse.Namespace) -> Config:
    """Write the config (new node) or check it (upgrade); the config in force."""
    from agent.config import load, render_toml
    from agent.errors import ConfigError

    path = layout.config_file
    existing = os.path.exists(path)
    sets = list(args.set)
    old_driver = _configured_driver(path) if existing else ""
    if existing and args.cgroup_driver != "auto" and args.cgroup_driver != old_driver:
        # an explicit driver (the chart's installer.extraArgs) applies as a --set would
        sets.insert(0, f"runtime.cgroup_driver={args.cgroup_driver}")
    if existing and not sets:
        try:
            config = load(path, environ={})
        except ConfigError as exc:
            raise InstallError(
                f"the existing config does not load in this version: {exc}"
            ) from None
        _say(f"kept {path}")
        return config
    if existing:
        with open(path, "rb") as f:
            tree = tomllib.load(f)
    else:
        driver = args.cgroup_driver
        if driver == "auto":
            driver = "systemd" if layout.on_host and systemd_is_init() else "cgroupfs"
        tree = _node_choices(layout, driver)
    _apply_sets(tree, sets)
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    draft = f"{path}.draft"
    try:
        with open(draft, "w") as f:
            f.write(files.toml_text(tree))
        config = load(draft, environ={})
        text = "# Written by model-agent install (model-agent config); edit freely.\n"
        text += render_toml(config)
        with open(draft, "w") as f:
            f.write(text)
        load(draft, environ={})  # what is written must load back as it is
    except ConfigError as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(draft)
        raise InstallError(str(exc).replace(draft, path)) from None
    new_driver = config.runtime.cgroup_driver
    driver_changed = existing and bool(old_driver) and new_driver != old_driver
    try:
        pods = pod_count(layout.database) if driver_changed else 0
    except InstallError:
        os.unlink(draft)
        raise
    if pods:
        # the agent finds a pod's and a container's cgroups through the configured driver,
        # and the kubelet's pod cgroups were made with the old one
        os.unlink(draft)
        raise InstallError(
            f"runtime.cgroup_driver is {old_driver!r} in {path} and {pods} pod(s) exist on "
            f"this node: changing it to {new_driver!r} under them is not safe, and the "
            "kubelet must change with it. Nothing was changed. Drain the node, stop the "
            "kubelet, remove the pods (crictl rmp -fa), run install.sh with this driver on "
            f"the node, set the kubelet's cgroupDriver to {new_driver!r} and start it"
        )
    if existing:
        with open(path) as f:
            unchanged = f.read() == text
        if unchanged:  # the same --set again (the chart's installer at every pod start)
            os.unlink(draft)
            _say(f"kept {path} (unchanged)")
            return config
        shutil.copy2(path, f"{path}.previous")
    os.replace(draft, path)
    _say(f"{'updated' if existing else 'wrote'} {path}")
    if driver_changed:
        _say(
            f"runtime.cgroup_driver {old_driver} -> {new_driver}: set the kubelet's "
            f"cgroupDriver to {new_driver} too"
        )
    return config


def _write(manifest: Manifest, path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    manifest.add_file(path)


def _write_crictl(manifest: Manifest, layout: Layout) -> None:
    path = layout.at(layout.crictl_config)
    try:
        with open(path) as f:
            ours = f.readline().rstrip("\n") == files.MARKER
    except FileNotFoundError:
        ours = True
    if not ours:
        _say(f"left {path} alone (not written by us); point crictl at unix://{layout.socket}")
        return
    _write(manifest, path, files.crictl_text(layout))


def _switch(manifest: Manifest, layout: Layout, venv: str) -> None:
    """``current`` -> the new version in one rename; the command link to it."""
    tmp = f"{layout.current}.new"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    os.symlink(os.path.relpath(venv, os.path.dirname(layout.current)), tmp)
    os.replace(tmp, layout.current)
    manifest.add_link(layout.current)
    link = layout.bin_link
    if os.path.islink(link) or not os.path.exists(link):
        os.makedirs(os.path.dirname(link), exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(link)
        os.symlink(layout.executable, link)
        manifest.add_link(link)
    else:
        _say(f"left {link} alone (not a link); the command is {layout.executable}")


def _prune(layout: Layout, keep: set[str]) -> None:
    """Keep the new and the previous version (to go back by hand); drop older ones."""
    for name in os.listdir(layout.versions_dir):
        path = os.path.join(layout.versions_dir, name)
        if os.path.realpath(path) not in {os.path.realpath(k) for k in keep if k}:
            shutil.rmtree(path, ignore_errors=True)


def _kernel(layout: Layout, mode: str) -> None:
    if mode == "no" or (mode == "auto" and not layout.on_host):
        _say(f"kernel settings written, not applied now ({mode}; --root {layout.root})")
        return
    problems = apply_kernel_settings(files.KERNEL_MODULES, files.SYSCTLS)
    for problem in problems:
        _say(f"warning: {problem}")
    if not problems:
        _say(
            "kernel: "
            + ", ".join(files.KERNEL_MODULES)
            + " loaded; "
            + ", ".join(f"{k}={v}" for k, v in files.SYSCTLS.items())
        )


def _digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:16]


def _installed(layout: Layout, venv: str) -> dict[str, str]:
    """What a start of the unit runs: the version's virtualenv, the unit file, the config."""
    return {
        "venv": os.path.realpath(venv),
        "unit": _digest(layout.unit_file),
        "config": _digest(layout.config_file),
    }


def _last_started(manifest: Manifest) -> dict[str, str] | None:
    """What the unit was last (re)started with, or found running with, by an install; None
    when no install recorded that (a first install, or one stopped before its restart)."""
    for entry in reversed(manifest.history):
        started = entry.get("started")
        if isinstance(started, dict):
            return {str(k): str(v) for k, v in started.items()}
    return None


def _changes(before: dict[str, str] | None, installed: dict[str, str]) -> list[str]:
    """What differs between the last start and what is installed now (empty: nothing)."""
    if before is None:
        return ["no record of what it runs"]
    changes = []
    if before.get("venv") != installed["venv"]:
        old = os.path.basename(before.get("venv", "")) or "?"
        changes.append(f"version {old} -> {os.path.basename(installed['venv'])}")
    changes += [
        f"{what} changed" for what in ("unit", "config") if before.get(what) != installed[what]
    ]
    return changes


def _start(
    layout: Layout, no_start: bool, before: dict[str, str] | None, installed: dict[str, str]
) -> bool:
    """(Re)start the unit if what is installed differs from its last start (``before``) or
    it does not run, else leave it running; True when the unit (or, without systemd, the
    next start of the agent) runs ``installed`` (the install records that), False when a
    running agent may not."""
    changes = _changes(before, installed)
    foreground = f"{layout.executable} serve --config {layout.config_file}"
    if layout.on_host and systemd_is_init():
        if no_start:
            run(["systemctl", "daemon-reload"], timeout=60)
            run(["systemctl", "enable", UNIT_NAME], timeout=60)
            _say(f"enabled {UNIT_NAME}; start it with: systemctl start {UNIT_NAME}")
            return False
        state = run(["systemctl", "is-active", UNIT_NAME], timeout=60, check=False).stdout.strip()
        if not changes and state in _RUNNING:
            enabled = run(["systemctl", "is-enabled", UNIT_NAME], timeout=60, check=False)
            if enabled.stdout.strip() != "enabled":
                run(["systemctl", "enable", UNIT_NAME], timeout=60)
            _say(f"{UNIT_NAME} left running ({state}): version, unit and config unchanged")
            return True
        run(["systemctl", "daemon-reload"], timeout=60)
        run(["systemctl", "enable", UNIT_NAME], timeout=60)
        # restart signals the old agent only (KillMode=process): containers keep running
        run(["systemctl", "restart", UNIT_NAME], timeout=_SYSTEMCTL_TIMEOUT)
        if state in _RUNNING:
            _say(f"{UNIT_NAME} restarted (ready): {', '.join(changes)}")
        else:
            _say(f"{UNIT_NAME} started (ready; it was {state or 'not loaded'})")
        return True
    # No systemd: the install starts nothing; an agent that runs is compared with the last
    # install recorded while none ran or that changed nothing.
    pid = agent_pid(layout.state_dir)
    if pid is not None and not changes:
        _say(
            f"the agent (pid {pid}) runs this install already: version, unit and config "
            "unchanged; left running"
        )
        return True
    if pid is not None:
        _say(
            f"an agent (pid {pid}) still runs the previous version ({', '.join(changes)}): "
            f"restart it to use this one (kill -TERM {pid}, then start it again; containers "
            "keep running)"
        )
    why = "--root" if not layout.on_host else "systemd is not PID 1"
    _say(f"not started ({why}); run the agent in the foreground with:\n    {foreground}")
    return pid is None  # a running agent started before this install: not known to run it


def _gpu_labels(args: argparse.Namespace) -> None:
    labels = gpu_labels(detect_gpus())
    if not labels:
        print("GPU node labels: none (no NVIDIA GPU found)", flush=True)
        return
    pairs = [f"{k}={v}" for k, v in labels.items()]
    command = ["kubectl", "label", "node", args.node_name, *pairs, "--overwrite"]
    print("GPU node labels:\n    " + " ".join(command), flush=True)
    if args.kubeconfig:
        run(["kubectl", "--kubeconfig", args.kubeconfig, *command[1:]], timeout=60)
        _say(f"labelled node {args.node_name}")
