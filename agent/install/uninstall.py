"""``model-agent uninstall``: remove what the node install created, keep state unless purged.

A purge is refused while pods' mounts remain under the agent's directories, checked before
the unit is stopped (``KillMode=process``: containers keep running) so a refusal stops nothing.
Imports only the standard library.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Sequence

from agent.install.host import InstallError, agent_pid, run, systemd_is_init
from agent.install.layout import UNIT_NAME, Layout, Manifest

__all__ = ["uninstall"]


def _mounts_under(paths: Sequence[str]) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    return [p for p in points if any(p == d or p.startswith(d.rstrip("/") + "/") for d in paths)]


def uninstall(layout: Layout, *, purge: bool, say: Callable[[str], None]) -> None:
    """Remove what the manifest lists; with ``purge`` the config and state too."""
    manifest = Manifest.load(layout.manifest_file)
    if manifest is None and not purge:
        raise InstallError(f"nothing installed at {layout.manifest_file}")
    # Refused before the unit stops: a refused purge leaves the agent running, as the
    # message asks (pods are removed through it).
    if purge:
        _refuse_while_pods_exist(layout)
    unit = layout.on_host and systemd_is_init() and os.path.exists(layout.unit_file)
    if unit:
        # stops the agent only (KillMode=process): containers keep running
        run(["systemctl", "disable", "--now", UNIT_NAME], timeout=120)
    pid = agent_pid(layout.state_dir)
    if pid is not None:
        raise InstallError(f"model-agent (pid {pid}) is running: stop it first")
    if purge:  # again: the agent may have made a pod until it stopped
        try:
            _refuse_while_pods_exist(layout)
        except InstallError:
            if unit:  # as the message asks: the agent runs, to remove the pods through
                run(["systemctl", "enable", "--now", UNIT_NAME], timeout=120)
            raise
    for path in [*(manifest.links if manifest else []), *(manifest.files if manifest else [])]:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    shutil.rmtree(layout.versions_dir, ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(layout.manifest_file)
    if layout.on_host and systemd_is_init():
        run(["systemctl", "daemon-reload"], timeout=60)
    kept = []
    if purge:
        for directory in (layout.root_dir, layout.state_dir, layout.at(layout.config_dir)):
            shutil.rmtree(directory, ignore_errors=True)
    else:
        kept = [p for p in (layout.config_file, layout.root_dir) if os.path.exists(p)]
    _remove_empty_parents(layout)
    say("removed" + (f"; kept {', '.join(kept)} (--purge deletes them)" if kept else ""))


def _refuse_while_pods_exist(layout: Layout) -> None:
    """A purge deletes the agent's dirs: never with pods' mounts (their volumes) inside."""
    mounts = _mounts_under([layout.state_dir, layout.root_dir])
    if mounts:
        raise InstallError(
            f"pods still exist ({len(mounts)} mounts, e.g. {mounts[0]}): remove them "
            "first (model-agent ctl stopp/rmp, with the agent running), then --purge"
        )


def _remove_empty_parents(layout: Layout) -> None:
    """Drop the directories the install made that are now empty (never the root's own)."""
    candidates = [
        layout.at(layout.prefix),
        layout.at(layout.config_dir),
        os.path.dirname(layout.unit_file),
        os.path.dirname(layout.bin_link),
        os.path.dirname(layout.at(layout.modules_load_file)),
        os.path.dirname(layout.at(layout.sysctl_file)),
    ]
    if layout.on_host:
        candidates = candidates[:2]  # system directories stay, empty or not
    else:
        candidates += [os.path.dirname(layout.root_dir), os.path.dirname(layout.state_dir)]
    for path in candidates:
        while path != layout.root and path.startswith(layout.root):
            try:
                os.rmdir(path)
            except OSError:
                break
            path = os.path.dirname(path)
