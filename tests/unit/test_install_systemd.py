"""The installer's systemd steps (start, uninstall) and its cgroup-driver handling, with the
command runner and systemd detection replaced: which systemctl calls run, in what order,
and what is refused before anything stops or changes."""

from __future__ import annotations

import argparse
import importlib
import os
import sqlite3
import subprocess

import pytest

from agent.install.host import InstallError, pod_count
from agent.install.layout import UNIT_NAME, Layout, Manifest
from tests.unit.test_install_files import _host_layout

main = importlib.import_module("agent.install.main")  # the package exports main()
uninstall_module = importlib.import_module("agent.install.uninstall")


class Systemctl:
    """Stands in for ``run``: records each systemctl call; answers is-active with
    ``state`` and is-enabled with ``enabled``."""

    def __init__(self, state: str = "active", enabled: str = "enabled") -> None:
        self.calls: list[list[str]] = []
        self.state = state
        self.enabled = enabled
        self.fail = ""

    def __call__(self, argv, *, timeout, check=True):
        argv = list(argv)
        assert argv[0] == "systemctl", argv
        self.calls.append(argv[1:])
        if argv[1] == self.fail:
            raise InstallError(f"systemctl {argv[1]} failed (exit 1)")
        out = {"is-active": self.state, "is-enabled": self.enabled}.get(argv[1], "")
        return subprocess.CompletedProcess(argv, 0, out + "\n", "")


# -- _start: the systemd branch ----------------------------------------------------------

INSTALLED = {"venv": "/opt/model-agent/versions/0.2.0-b", "unit": "u1", "config": "c1"}
RESTART = [["daemon-reload"], ["enable", UNIT_NAME], ["restart", UNIT_NAME]]


@pytest.fixture
def systemctl(monkeypatch):
    fake = Systemctl()
    monkeypatch.setattr(main, "run", fake)
    monkeypatch.setattr(main, "systemd_is_init", lambda: True)
    return fake


def test_start_restarts_after_reload_and_enable_when_something_changed(tmp_path, systemctl, capsys):
    layout = _host_layout(tmp_path)
    before = {**INSTALLED, "config": "c0"}
    assert main._start(layout, False, before, INSTALLED) is True
    assert systemctl.calls == [["is-active", UNIT_NAME], *RESTART]
    assert f"{UNIT_NAME} restarted (ready): config changed" in capsys.readouterr().out


def test_start_without_a_record_restarts(tmp_path, systemctl, capsys):
    assert main._start(_host_layout(tmp_path), False, None, INSTALLED) is True
    assert systemctl.calls == [["is-active", UNIT_NAME], *RESTART]
    assert "no record of what it runs" in capsys.readouterr().out


@pytest.mark.parametrize("state", ["active", "activating", "reloading"])
def test_start_leaves_an_unchanged_running_unit_alone(tmp_path, systemctl, capsys, state):
    systemctl.state = state
    assert main._start(_host_layout(tmp_path), False, dict(INSTALLED), INSTALLED) is True
    assert systemctl.calls == [["is-active", UNIT_NAME], ["is-enabled", UNIT_NAME]]
    assert f"left running ({state})" in capsys.readouterr().out


def test_start_enables_an_unchanged_running_unit_that_is_disabled(tmp_path, systemctl):
    systemctl.enabled = "disabled"
    assert main._start(_host_layout(tmp_path), False, dict(INSTALLED), INSTALLED) is True
    assert systemctl.calls == [
        ["is-active", UNIT_NAME],
        ["is-enabled", UNIT_NAME],
        ["enable", UNIT_NAME],
    ]  # no daemon-reload, no restart


@pytest.mark.parametrize("state", ["inactive", "failed", ""])
def test_start_starts_an_unchanged_unit_that_does_not_run(tmp_path, systemctl, capsys, state):
    systemctl.state = state
    assert main._start(_host_layout(tmp_path), False, dict(INSTALLED), INSTALLED) is True
    assert systemctl.calls == [["is-active", UNIT_NAME], *RESTART]
    assert f"started (ready; it was {state or 'not loaded'})" in capsys.readouterr().out


def test_start_with_no_start_reloads_and_enables_only(tmp_path, systemctl):
    assert main._start(_host_layout(tmp_path), True, None, INSTALLED) is False
    assert systemctl.calls == [["daemon-reload"], ["enable", UNIT_NAME]]


def test_start_whose_restart_fails_raises_after_reload_and_enable(tmp_path, systemctl):
    systemctl.fail = "restart"
    with pytest.raises(InstallError, match="restart"):
        main._start(_host_layout(tmp_path), False, None, INSTALLED)
    assert systemctl.calls == [["is-active", UNIT_NAME], *RESTART]


# -- uninstall: refusals before the unit stops ---------------------------------------------


@pytest.fixture
def installed(tmp_path, monkeypatch):
    """A host install (unit file and manifest) with systemctl recorded and no mounts."""
    layout = _host_layout(tmp_path)
    os.makedirs(os.path.dirname(layout.unit_file))
    with open(layout.unit_file, "w") as f:
        f.write("[Unit]\n")
    Manifest(files=[layout.unit_file]).save(layout.manifest_file)
    os.makedirs(layout.root_dir)
    fake = Systemctl()
    monkeypatch.setattr(uninstall_module, "run", fake)
    monkeypatch.setattr(uninstall_module, "systemd_is_init", lambda: True)
    monkeypatch.setattr(uninstall_module, "_mounts_under", lambda paths: [])
    return layout, fake


def test_refused_purge_leaves_the_unit_running(installed, monkeypatch):
    layout, systemctl = installed
    pod_mount = f"{layout.state_dir}/pods/abc/shm"
    monkeypatch.setattr(uninstall_module, "_mounts_under", lambda paths: [pod_mount])
    with pytest.raises(InstallError, match="with the agent running"):
        uninstall_module.uninstall(layout, purge=True, say=print)
    assert systemctl.calls == []  # not stopped, not disabled
    assert os.path.exists(layout.unit_file) and os.path.exists(layout.manifest_file)
    assert os.path.isdir(layout.root_dir)


def test_a_pod_made_while_the_unit_stopped_still_refuses_the_purge(installed, monkeypatch):
    layout, systemctl = installed
    mounts_seen = iter([[], [f"{layout.state_dir}/containers/abc/rootfs"]])
    monkeypatch.setattr(uninstall_module, "_mounts_under", lambda paths: next(mounts_seen))
    with pytest.raises(InstallError, match="pods still exist"):
        uninstall_module.uninstall(layout, purge=True, say=print)
    # stopped, then started again (the pods are removed through it), nothing deleted
    assert systemctl.calls == [["disable", "--now", UNIT_NAME], ["enable", "--now", UNIT_NAME]]
    assert os.path.isdir(layout.root_dir) and os.path.exists(layout.manifest_file)


def test_purge_stops_the_unit_then_removes_and_reloads(installed):
    layout, systemctl = installed
    said: list[str] = []
    uninstall_module.uninstall(layout, purge=True, say=said.append)
    assert systemctl.calls == [["disable", "--now", UNIT_NAME], ["daemon-reload"]]
    assert not os.path.exists(layout.unit_file) and not os.path.exists(layout.root_dir)
    assert said == ["removed"]


def test_uninstall_without_purge_stops_the_unit_even_with_pods(installed, monkeypatch):
    layout, systemctl = installed
    monkeypatch.setattr(uninstall_module, "_mounts_under", lambda paths: ["/x"])
    uninstall_module.uninstall(layout, purge=False, say=lambda text: None)
    assert systemctl.calls == [["disable", "--now", UNIT_NAME], ["daemon-reload"]]
    assert os.path.isdir(layout.root_dir)  # state kept


def test_uninstall_refuses_an_agent_still_running_after_the_unit_stopped(installed, monkeypatch):
    layout, systemctl = installed
    monkeypatch.setattr(uninstall_module, "agent_pid", lambda state_dir: 4242)
    with pytest.raises(InstallError, match="pid 4242"):
        uninstall_module.uninstall(layout, purge=True, say=lambda text: None)
    assert systemctl.calls == [["disable", "--now", UNIT_NAME]]
    assert os.path.exists(layout.manifest_file)


# -- --cgroup-driver on an existing config -------------------------------------------------


def _args(driver: str = "auto", *sets: str) -> argparse.Namespace:
    return argparse.Namespace(set=list(sets), cgroup_driver=driver)


def _add_pod(layout: Layout) -> None:
    os.makedirs(os.path.dirname(layout.database), exist_ok=True)
    conn = sqlite3.connect(layout.database)
    conn.execute("CREATE TABLE IF NOT EXISTS sandboxes (id TEXT, name TEXT, record TEXT)")
    conn.execute("INSERT INTO sandboxes VALUES ('p1', 'default_web_1', '{}')")
    conn.commit()
    conn.close()


def test_pod_count_reads_the_sandboxes_table(tmp_path):
    path = str(tmp_path / "metadata.db")
    assert pod_count(path) == 0  # no database
    sqlite3.connect(path).close()
    assert pod_count(path) == 0  # no sandboxes table (an old schema)
    layout = Layout(root=str(tmp_path / "node"))
    _add_pod(layout)
    assert pod_count(layout.database) == 1


def test_explicit_cgroup_driver_updates_an_existing_config(tmp_path, capsys):
    layout = Layout(root=str(tmp_path))
    path = tmp_path / "etc/model-agent/config.toml"
    assert main._write_config(layout, _args()).runtime.cgroup_driver == "cgroupfs"
    first = path.read_text()
    capsys.readouterr()

    config = main._write_config(layout, _args("systemd"))
    out = capsys.readouterr().out
    assert config.runtime.cgroup_driver == "systemd"
    assert 'cgroup_driver = "systemd"' in path.read_text()
    assert (tmp_path / "etc/model-agent/config.toml.previous").read_text() == first
    assert "runtime.cgroup_driver cgroupfs -> systemd" in out and "kubelet" in out

    # the chart's installer again with the same flag, or without one: the file stays
    mtime = path.stat().st_mtime_ns
    assert main._write_config(layout, _args("systemd")).runtime.cgroup_driver == "systemd"
    assert main._write_config(layout, _args()).runtime.cgroup_driver == "systemd"
    assert path.stat().st_mtime_ns == mtime
    assert "->" not in capsys.readouterr().out


def test_cgroup_driver_change_is_refused_while_pods_exist(tmp_path):
    layout = Layout(root=str(tmp_path))
    path = tmp_path / "etc/model-agent/config.toml"
    main._write_config(layout, _args())
    _add_pod(layout)
    before = path.read_text()
    with pytest.raises(InstallError, match=r"1 pod\(s\) exist.*Nothing was changed"):
        main._write_config(layout, _args("systemd"))
    with pytest.raises(InstallError, match="pod"):  # the same through --set
        main._write_config(layout, _args("auto", "runtime.cgroup_driver=systemd"))
    assert path.read_text() == before
    assert not (tmp_path / "etc/model-agent/config.toml.draft").exists()
    # the driver it already has, or another key, is fine with pods
    assert main._write_config(layout, _args("cgroupfs")).runtime.cgroup_driver == "cgroupfs"
    config = main._write_config(layout, _args("cgroupfs", "agent.log_format=json"))
    assert config.agent.log_format == "json"


def test_an_unreadable_database_refuses_a_driver_change_and_leaves_no_draft(tmp_path):
    layout = Layout(root=str(tmp_path))
    main._write_config(layout, _args())
    os.makedirs(os.path.dirname(layout.database), exist_ok=True)
    with open(layout.database, "w") as f:
        f.write("not a database")
    with pytest.raises(InstallError, match="cannot"):
        main._write_config(layout, _args("systemd"))
    assert not (tmp_path / "etc/model-agent/config.toml.draft").exists()


def test_install_prints_the_kubelet_driver_it_switched_to(tmp_path, capsys):
    """The kubelet settings the install prints follow the updated config."""
    layout = Layout(root=str(tmp_path))
    main._write_config(layout, _args("cgroupfs"))
    venv = tmp_path / "opt/model-agent/versions/0.1.0-aaaa"
    venv.mkdir(parents=True)
    args = argparse.Namespace(
        staged=str(venv),
        staged_fresh=False,
        set=[],
        cgroup_driver="systemd",
        apply_kernel="no",
        no_start=True,
        kubeconfig=None,
        node_name="node-1",
    )
    main._finish(layout, args)
    out = capsys.readouterr().out
    assert "cgroupDriver: systemd" in out and "cgroupDriver: cgroupfs" not in out
