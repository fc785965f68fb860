"""``model-agent`` as a process: serve, signals, config errors, and ctl."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest

pytestmark = pytest.mark.integration

AGENT = [sys.executable, "-m", "agent"]


def env_for(base: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        MODEL_AGENT_ROOT_DIR=f"{base}/root",
        MODEL_AGENT_STATE_DIR=f"{base}/state",
        MODEL_AGENT_METRICS_ADDRESS="127.0.0.1:0",
        MODEL_AGENT_CONFIG=f"{base}/config.toml",
    )
    with open(f"{base}/config.toml", "a"):
        pass
    return env


@contextlib.contextmanager
def serving(base: str, *args: str) -> Iterator[subprocess.Popen[str]]:
    """A ``model-agent serve`` process, ready; killed and reaped at the end if still alive."""
    proc = subprocess.Popen(
        [*AGENT, "serve", *args],
        env=env_for(base),
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # the first line is printed once the agent is ready
        assert "serving CRI on unix://" in line
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)


def ctl(base: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*AGENT, "ctl", *args], env=env_for(base), text=True, capture_output=True, timeout=60
    )


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_prints_endpoints_and_exits_0_on_signal(short_dir, sig):
    with serving(short_dir) as proc:
        assert proc.stdout is not None
        metrics_line = proc.stdout.readline()
        assert metrics_line.startswith("metrics: http://127.0.0.1:")
        assert os.path.exists(f"{short_dir}/state/model-agent.sock")
        proc.send_signal(sig)
        assert proc.wait(timeout=30) == 0
    assert not os.path.exists(f"{short_dir}/state/model-agent.sock")


def test_ctl_talks_to_the_agent(short_dir):
    with serving(short_dir) as proc:
        version = ctl(short_dir, "version")
        assert version.returncode == 0, version.stderr
        assert "RuntimeName:  model-agent" in version.stdout
        info = ctl(short_dir, "info")  # JSON, as crictl's: the verbose info keys at the top
        assert info.returncode == 0, info.stderr
        doc = json.loads(info.stdout)
        assert doc["config"]["agent"]["state_dir"] == f"{short_dir}/state"
        types = [c["type"] for c in doc["status"]["conditions"]]
        assert types == ["RuntimeReady", "NetworkReady"]
        assert "name" not in doc["runtimeHandlers"][0]  # the default, "" (omitempty, as crictl)
        table = ctl(short_dir, "info", "-o", "table")
        assert "RuntimeReady" in table.stdout and "NetworkReady" in table.stdout
        stats = ctl(short_dir, "stats")
        assert stats.returncode == 0, stats.stderr  # no containers: just the header
        missing = ctl(short_dir, "exec", "-it", "f" * 64, "sh")
        assert missing.returncode == 1
        assert "NOT_FOUND" in missing.stderr
        proc.terminate()
        assert proc.wait(timeout=30) == 0


def test_ctl_without_an_agent_explains(short_dir):
    result = ctl(short_dir, "--timeout", "2", "version")
    assert result.returncode == 1
    assert "UNAVAILABLE" in result.stderr
    assert "is model-agent running?" in result.stderr


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[agent]\nbogus = 1\n", "unknown key 'agent.bogus'"),
        ('[runtime]\ncgroup_driver = "v3"\n', "runtime.cgroup_driver: 'v3' is not one of"),
    ],
)
def test_config_errors_fail_start_with_a_clear_message(short_dir, toml, message):
    env = env_for(short_dir)
    with open(f"{short_dir}/config.toml", "w") as f:
        f.write(toml)
    result = subprocess.run([*AGENT, "serve"], env=env, text=True, capture_output=True, timeout=60)
    assert result.returncode == 2
    assert message in result.stderr
    assert not os.path.exists(f"{short_dir}/state")  # nothing was created


def test_start_failure_exits_1_with_the_reason(short_dir):
    with serving(short_dir) as first:
        result = subprocess.run(
            [*AGENT, "serve"],
            env=env_for(short_dir),
            text=True,
            capture_output=True,
            timeout=60,
        )
        assert result.returncode == 1
        assert "in use by another model-agent" in result.stderr
        first.terminate()
        assert first.wait(timeout=30) == 0


def test_config_command_prints_effective_toml(short_dir):
    result = subprocess.run(
        [*AGENT, "config", "--socket", "/tmp/x.sock"],
        env=env_for(short_dir),
        text=True,
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 0
    assert 'socket = "/tmp/x.sock"' in result.stdout
    assert f'state_dir = "{short_dir}/state"' in result.stdout
    assert "# Cgroup driver reported to the kubelet" in result.stdout


def test_version_command():
    result = subprocess.run([*AGENT, "version"], text=True, capture_output=True, timeout=60)
    assert result.stdout.strip() == "model-agent 0.1.0"


def test_ctl_image_verbs(short_dir, registry, pusher):
    from tests.support.images import busybox_image

    image = busybox_image()
    pusher.push_image("cli/busybox", image, tag="v1")
    ref = f"{registry.host}/cli/busybox:v1"
    with serving(short_dir) as proc:
        pulled = ctl(short_dir, "pull", ref)
        assert pulled.returncode == 0, pulled.stderr
        assert f"Image is up to date for {image.config_digest}" in pulled.stdout
        listed = ctl(short_dir, "images")
        assert f"{registry.host}/cli/busybox" in listed.stdout
        assert image.config_digest[7:20] in listed.stdout
        inspected = ctl(short_dir, "inspecti", ref)
        doc = json.loads(inspected.stdout)
        assert doc["status"]["id"] == image.config_digest  # crictl: {"status": Image, "info"…}
        assert ctl(short_dir, "rmi", ref).returncode == 0
        missing = ctl(short_dir, "inspecti", ref)
        assert missing.returncode == 1
        assert "no such image" in missing.stderr
        proc.terminate()
        assert proc.wait(timeout=30) == 0


def test_ctl_inspecti_table_shows_model_labels_and_artifact_type(short_dir, registry, pusher):
    """The labels a model image carries (what it serves, its metrics port, its GPU need)
    and an artifact's type and annotations are what ``inspecti -o table`` prints."""
    from tests.integration.test_artifacts import TYPE, file_blob, push_artifact
    from tests.support.images import busybox_image

    labels = {
        "org.opencontainers.image.title": "sklearn-iris",
        "io.model-agent.model.name": "sklearn-iris",
        "io.model-agent.model.version": "1",
        "io.model-agent.model.metrics-port": "8082",
        "io.model-agent.model.gpu": "none",
    }
    pusher.push_image("cli/labelled", busybox_image(labels=labels), tag="v1")
    image = f"{registry.host}/cli/labelled:v1"
    push_artifact(pusher, "cli/weights", "v2", [file_blob(b"w" * 64, "weights.bin")])
    artifact = f"{registry.host}/cli/weights:v2"
    with serving(short_dir) as proc:
        for ref in (image, artifact):
            pulled = ctl(short_dir, "pull", ref)
            assert pulled.returncode == 0, pulled.stderr
        shown = ctl(short_dir, "inspecti", "-o", "table", image)
        assert shown.returncode == 0, shown.stderr
        lines = shown.stdout.splitlines()
        assert [line for line in lines if line.startswith("Label: ")] == [
            f"Label: {key}={value}" for key, value in sorted(labels.items())
        ]
        assert not [line for line in lines if line.startswith("Artifact: ")]
        shown = ctl(short_dir, "inspecti", "-o", "table", artifact)
        assert shown.returncode == 0, shown.stderr
        lines = shown.stdout.splitlines()
        assert f"Artifact: {TYPE}" in lines
        assert "Label: org.opencontainers.image.version=v2" in lines
        quiet = ctl(short_dir, "inspecti", "-o", "table", "-q", image)
        assert "Label: " not in quiet.stdout  # -q: the status alone
        for ref in (image, artifact):
            assert ctl(short_dir, "rmi", ref).returncode == 0
        proc.terminate()  # a clean stop takes down the agent's netns pin mount
        assert proc.wait(timeout=30) == 0
