"""The node install's files and host probes, each against trees and sockets the test makes."""

from __future__ import annotations

import fcntl
import importlib
import os
import shutil
import sqlite3
import subprocess
import tomllib

import pytest

from agent.install import files
from agent.install.host import (
    agent_pid,
    apply_kernel_settings,
    database_schema,
    detect_gpus,
    gpu_labels,
)
from agent.install.layout import Layout, Manifest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_repo_unit_is_what_install_writes_for_the_default_layout():
    with open(os.path.join(REPO, "deploy", "systemd", "model-agent.service")) as f:
        assert f.read() == files.unit_text(Layout())


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_unit_passes_systemd_analyze_verify(tmp_path):
    layout = Layout(root=str(tmp_path))
    executable = layout.executable
    os.makedirs(os.path.dirname(executable))
    with open(executable, "w") as f:
        f.write("#!/bin/sh\n")
    os.chmod(executable, 0o755)
    unit = tmp_path / "model-agent.service"
    unit.write_text(files.unit_text(layout))
    done = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    # verify exits 0 even on unknown keys or bad values; those are warnings on stderr
    assert (done.returncode, done.stderr, done.stdout) == (0, "", "")
    text = unit.read_text()
    for directive in (
        "Type=notify",
        "KillMode=process",
        "Delegate=yes",
        "OOMScoreAdjust=-999",
        "Restart=always",
        "Before=kubelet.service",
        "LimitNOFILE=1048576",
    ):
        assert f"\n{directive}\n" in text


def test_unit_verify_catches_a_broken_directive(tmp_path):
    """The check above can fail: systemd-analyze reports what it cannot parse."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("needs systemd-analyze")
    unit = tmp_path / "model-agent.service"
    unit.write_text(files.unit_text(Layout()).replace("KillMode=process", "KillMode=proces"))
    done = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert "kill mode" in done.stderr


def test_layout_root_moves_every_path_and_refuses_relative_ones(tmp_path):
    layout = Layout(root=str(tmp_path)).with_overrides(prefix="/srv/ma", config_dir=None)
    assert layout.current == f"{tmp_path}/srv/ma/current"
    assert layout.config_file == f"{tmp_path}/etc/model-agent/config.toml"
    assert layout.socket == f"{tmp_path}/run/model-agent/model-agent.sock"
    assert Layout().socket == "/run/model-agent/model-agent.sock"
    assert Layout().on_host and not layout.on_host
    with pytest.raises(ValueError, match="not an absolute path"):
        Layout(prefix="opt/x")


def test_crictl_kernel_and_kubelet_texts():
    layout = Layout()
    crictl = files.crictl_text(layout)
    assert crictl.startswith(files.MARKER)
    assert "runtime-endpoint: unix:///run/model-agent/model-agent.sock" in crictl
    assert "image-endpoint: unix:///run/model-agent/model-agent.sock" in crictl
    assert files.modules_load_text().splitlines()[1:] == ["overlay", "br_netfilter"]
    assert "net.ipv4.ip_forward = 1" in files.sysctl_text()
    kubelet = files.kubelet_settings(layout, "systemd")
    assert "containerRuntimeEndpoint: unix:///run/model-agent/model-agent.sock" in kubelet
    assert "imageServiceEndpoint: unix:///run/model-agent/model-agent.sock" in kubelet
    assert "cgroupDriver: systemd" in kubelet


def test_toml_text_round_trips_through_tomllib():
    tree = {
        "agent": {"root_dir": '/a "quoted"\\path', "log_format": "json"},
        "metrics": {"address": "0.0.0.0:9464"},
        "image": {"registries": {"docker.io": {"mirrors": ["https://m"], "plain_http": True}}},
        "n": 3,
    }
    assert tomllib.loads(files.toml_text(tree)) == tree


def test_kernel_settings_written_to_proc_sys(tmp_path):
    for key in files.SYSCTLS:
        path = tmp_path.joinpath(*key.split("."))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("0")
    assert apply_kernel_settings((), files.SYSCTLS, proc_sys=str(tmp_path)) == []
    assert tmp_path.joinpath("net", "ipv4", "ip_forward").read_text() == "1"
    missing = apply_kernel_settings((), {"net.nothing.here": "1"}, proc_sys=str(tmp_path))
    assert len(missing) == 1 and "net.nothing.here = 1" in missing[0]


def test_gpu_detection_and_labels_from_the_driver_proc_files(tmp_path):
    assert detect_gpus(str(tmp_path)) == [] and gpu_labels([]) == {}
    for bus in ("0000:17:00.0", "0000:65:00.0"):
        d = tmp_path / "driver" / "nvidia" / "gpus" / bus
        d.mkdir(parents=True)
        (d / "information").write_text(
            "Model: \t\t NVIDIA H200\nIRQ:   171\nGPU UUID: \t GPU-x\nBus Location: \t "
            + bus
            + "\n"
        )
    gpus = detect_gpus(str(tmp_path))
    assert [g.bus_id for g in gpus] == ["0000:17:00.0", "0000:65:00.0"]
    assert gpu_labels(gpus) == {
        "nvidia.com/gpu.present": "true",
        "nvidia.com/gpu.count": "2",
        "nvidia.com/gpu.product": "NVIDIA-H200",
    }


def test_agent_pid_reads_the_lock_the_agent_holds(tmp_path):
    assert agent_pid(str(tmp_path)) is None
    path = tmp_path / "model-agent.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.write(fd, b"4242\n")
        assert agent_pid(str(tmp_path)) is None  # a file nobody locks: no agent
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert agent_pid(str(tmp_path)) == 4242
    finally:
        os.close(fd)


def test_database_schema_reads_version_and_writer(tmp_path):
    path = str(tmp_path / "metadata.db")
    assert database_schema(path) is None
    conn = sqlite3.connect(path)
    conn.executescript(
        "CREATE TABLE agent_info (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
        "INSERT INTO agent_info VALUES ('last_start_version', '9.9.9');"
        "PRAGMA user_version = 42;"
    )
    conn.close()
    assert database_schema(path) == (42, "9.9.9")


def test_manifest_round_trip(tmp_path):
    path = str(tmp_path / "p" / "install.json")
    assert Manifest.load(path) is None
    m = Manifest(version="1")
    m.add_file("/a")
    m.add_file("/a")
    m.add_link("/b")
    m.save(path)
    loaded = Manifest.load(path)
    assert loaded is not None and (loaded.version, loaded.files, loaded.links) == (
        "1",
        ["/a"],
        ["/b"],
    )


def _config_args(*sets: str):
    import argparse

    return argparse.Namespace(set=list(sets), cgroup_driver="auto")


def test_config_written_for_a_new_node_kept_on_upgrade_and_rerendered_with_set(tmp_path):
    from agent.config import load
    from agent.install.host import InstallError
    from agent.install.main import _write_config

    layout = Layout(root=str(tmp_path))
    config = _write_config(layout, _config_args("agent.log_format=json"))
    path = tmp_path / "etc/model-agent/config.toml"
    first = path.read_text()
    assert config.network.default_network == "never"
    assert config.runtime.cgroup_driver == "cgroupfs"  # no systemd as PID 1 under a --root
    assert config.agent.log_format == "json"
    assert load(str(path), environ={}).agent.root_dir == f"{tmp_path}/var/lib/model-agent"

    path.write_text(first + "\n# a comment the operator added\n")
    _write_config(layout, _config_args())  # an upgrade without --set keeps the file as it is
    assert path.read_text().endswith("# a comment the operator added\n")

    config = _write_config(layout, _config_args("metrics.address=0.0.0.0:9464"))
    assert config.metrics.address == "0.0.0.0:9464" and config.agent.log_format == "json"
    assert (tmp_path / "etc/model-agent/config.toml.previous").read_text().endswith("added\n")

    before = path.read_text()
    with pytest.raises(InstallError, match=r"unknown key 'metrics\.bearer_token_fil'"):
        _write_config(layout, _config_args("metrics.bearer_token_fil=/x"))
    assert path.read_text() == before  # nothing half-written
    assert not (tmp_path / "etc/model-agent/config.toml.draft").exists()
    # the same --set again (the chart's installer at every pod start) leaves the file alone
    previous = (tmp_path / "etc/model-agent/config.toml.previous").read_text()
    mtime = path.stat().st_mtime_ns
    _write_config(layout, _config_args("metrics.address=0.0.0.0:9464"))
    assert path.stat().st_mtime_ns == mtime and path.read_text() == before
    assert (tmp_path / "etc/model-agent/config.toml.previous").read_text() == previous


# -- when the install restarts the unit ---------------------------------------------------


class FakeSystemd:
    """Stands in for ``run`` of ``systemctl``: records each call, answers is-active/is-enabled
    with ``state``; ``fail_restart`` makes the restart fail as a unit that does not start."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.state = "inactive"
        self.fail_restart = False

    def __call__(self, argv, *, timeout, check=True):
        from agent.install.host import InstallError

        argv = list(argv)
        assert argv[0] == "systemctl", argv  # nothing else runs on this host
        self.calls.append(argv[1:])
        if argv[1] == "is-active":
            out, code = self.state, 0 if self.state == "active" else 3
        elif argv[1] == "is-enabled":
            out, code = "enabled", 0
        elif argv[1] == "restart" and self.fail_restart:
            raise InstallError("systemctl restart model-agent.service failed (exit 1)")
        else:
            out, code = "", 0
        return subprocess.CompletedProcess(argv, code, out + "\n", "")

    def take(self) -> list[list[str]]:
        calls, self.calls = self.calls, []
        return calls


def _host_layout(tmp_path) -> Layout:
    """``root`` "/" (the host, as systemd sees it) with every path inside tmp_path."""
    t = str(tmp_path)
    return Layout(
        prefix=f"{t}/opt/model-agent",
        config_dir=f"{t}/etc/model-agent",
        unit_dir=f"{t}/etc/systemd/system",
        bin_dir=f"{t}/usr/local/bin",
        agent_root_dir=f"{t}/var/lib/model-agent",
        agent_state_dir=f"{t}/run/model-agent",
        cni_conf_dir=f"{t}/etc/cni/net.d",
        crictl_config=f"{t}/etc/crictl.yaml",
        modules_load_file=f"{t}/etc/modules-load.d/model-agent.conf",
        sysctl_file=f"{t}/etc/sysctl.d/99-model-agent.conf",
    )


def _finish_args(venv: str, *sets: str, no_start: bool = False):
    import argparse

    return argparse.Namespace(
        staged=venv,
        staged_fresh=False,
        set=list(sets),
        cgroup_driver="auto",
        apply_kernel="no",
        no_start=no_start,
        kubeconfig=None,
        node_name="node-1",
    )


RESTART = [["daemon-reload"], ["enable", "model-agent.service"], ["restart", "model-agent.service"]]
LOOK = [["is-active", "model-agent.service"]]
LEFT = [*LOOK, ["is-enabled", "model-agent.service"]]


def test_install_restarts_the_unit_only_when_version_unit_or_config_changed(
    tmp_path, monkeypatch, capsys
):
    main = importlib.import_module("agent.install.main")  # the package exports main()
    from agent.install.host import InstallError

    systemd = FakeSystemd()
    monkeypatch.setattr(main, "run", systemd)
    monkeypatch.setattr(main, "systemd_is_init", lambda: True)
    layout = _host_layout(tmp_path)
    assert layout.on_host
    v1 = tmp_path / "opt/model-agent/versions/0.1.0-aaaa"
    v2 = tmp_path / "opt/model-agent/versions/0.2.0-bbbb"
    v1.mkdir(parents=True)
    v2.mkdir()
    chart_set = "metrics.address=0.0.0.0:9464"

    def install(venv=v1, *sets: str, no_start: bool = False) -> str:
        capsys.readouterr()
        main._finish(layout, _finish_args(str(venv), chart_set, *sets, no_start=no_start))
        return capsys.readouterr().out

    def last_started() -> dict[str, str] | None:
        manifest = Manifest.load(layout.manifest_file)
        assert manifest is not None
        return manifest.history[-1].get("started")

    # a new node: started, and what it runs is recorded
    out = install()
    assert systemd.take() == [*LOOK, *RESTART]
    assert "model-agent.service started (ready; it was inactive)" in out
    started = last_started()
    assert started is not None and started["venv"] == str(v1)
    systemd.state = "active"

    # the installer pod again (a node reboot): nothing changed, nothing restarted
    config_text = (tmp_path / "etc/model-agent/config.toml").read_text()
    out = install()
    assert systemd.take() == LEFT
    assert "left running (active): version, unit and config unchanged" in out
    assert "restarted" not in out and f"kept {layout.config_file} (unchanged)" in out
    assert (tmp_path / "etc/model-agent/config.toml").read_text() == config_text
    assert last_started() == started

    # unchanged but not running (failed, stopped by hand): started
    systemd.state = "failed"
    out = install()
    assert systemd.take() == [*LOOK, *RESTART]
    assert "started (ready; it was failed)" in out
    systemd.state = "active"

    # each of version, unit and config changing restarts it, and says what changed
    out = install(v1, "agent.log_format=json")
    assert systemd.take() == [*LOOK, *RESTART]
    assert "model-agent.service restarted (ready): config changed" in out
    unit_text = files.unit_text
    monkeypatch.setattr(main.files, "unit_text", lambda lay: unit_text(lay) + "# new\n")
    out = install(v1, "agent.log_format=json")
    assert systemd.take() == [*LOOK, *RESTART]
    assert "restarted (ready): unit changed" in out
    out = install(v2, "agent.log_format=json")
    assert systemd.take() == [*LOOK, *RESTART]
    assert "restarted (ready): version 0.1.0-aaaa -> 0.2.0-bbbb" in out
    assert install(v2, "agent.log_format=json") and systemd.take() == LEFT

    # --no-start: reload and enable only; nothing recorded, so the next install restarts
    out = install(v1, "agent.log_format=json", no_start=True)
    assert systemd.take() == [["daemon-reload"], ["enable", "model-agent.service"]]
    assert last_started() is None
    install(v1, "agent.log_format=json")
    assert systemd.take() == [*LOOK, *RESTART]

    # a restart that failed records nothing: the next install (nothing changed) retries it
    systemd.fail_restart = True
    with pytest.raises(InstallError, match="restart"):
        install(v2, "agent.log_format=json")
    assert systemd.take() == [*LOOK, *RESTART]
    assert last_started() is None
    systemd.fail_restart = False
    out = install(v2, "agent.log_format=json")
    assert systemd.take() == [*LOOK, *RESTART]
    assert "restarted (ready): version 0.1.0-aaaa -> 0.2.0-bbbb" in out
    assert install(v2, "agent.log_format=json") and systemd.take() == LEFT


def test_install_without_a_record_restarts_once(tmp_path, monkeypatch, capsys):
    """A node installed by a version that recorded no start (history without "started"):
    the first install of this version restarts the unit once, then leaves it alone."""
    main = importlib.import_module("agent.install.main")  # the package exports main()

    systemd = FakeSystemd()
    systemd.state = "active"
    monkeypatch.setattr(main, "run", systemd)
    monkeypatch.setattr(main, "systemd_is_init", lambda: True)
    layout = _host_layout(tmp_path)
    venv = tmp_path / "opt/model-agent/versions/0.1.0-aaaa"
    venv.mkdir(parents=True)
    Manifest(version="0.1.0", venv=str(venv), history=[{"version": "0.1.0"}]).save(
        layout.manifest_file
    )
    main._finish(layout, _finish_args(str(venv)))
    assert systemd.take() == [*LOOK, *RESTART]
    assert "restarted (ready): no record of what it runs" in capsys.readouterr().out
    main._finish(layout, _finish_args(str(venv)))
    assert systemd.take() == LEFT
