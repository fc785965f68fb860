"""Config loading: defaults, precedence, errors that name the key, printing."""

from __future__ import annotations

import dataclasses
import tomllib

import pytest

from agent.config import Config, load, render_toml
from agent.errors import ConfigError


def write(tmp_path, text: str) -> str:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return str(path)


def test_defaults_without_a_file(tmp_path):
    config = load(write(tmp_path, ""), environ={})
    assert config.agent.root_dir == "/var/lib/model-agent"
    assert config.agent.state_dir == "/run/model-agent"
    assert config.socket_path == "/run/model-agent/model-agent.sock"
    assert config.metrics.address == "127.0.0.1:9464"
    assert config.runtime.cgroup_driver == "cgroupfs"
    assert set(config.runtime.handlers) == {"runc", "crun"}
    assert config.runtime.handlers["runc"].root == "/run/model-agent/runc"


def test_missing_explicit_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load(str(tmp_path / "nope.toml"), environ={})


def test_file_values_and_derived_defaults(tmp_path):
    path = write(
        tmp_path,
        """
[agent]
state_dir = "/srv/state"
log_level = "debug"
[runtime]
cgroup_driver = "systemd"
[runtime.handlers.kata]
path = "/usr/bin/kata-runtime"
""",
    )
    config = load(path, environ={})
    assert config.socket_path == "/srv/state/model-agent.sock"
    assert config.agent.log_level == "debug"
    assert config.runtime.cgroup_driver == "systemd"
    # A new handler extends the defaults rather than replacing them.
    assert set(config.runtime.handlers) == {"runc", "crun", "kata"}
    assert config.runtime.handlers["kata"].root == "/srv/state/kata"


def test_precedence_file_then_env_then_flags(tmp_path):
    path = write(tmp_path, '[agent]\nsocket = "/file.sock"\nroot_dir = "/file-root"\n')
    env = {"MODEL_AGENT_SOCKET": "/env.sock", "MODEL_AGENT_ROOT_DIR": "/env-root"}
    config = load(path, environ=env, overrides={"agent.socket": "/flag.sock"})
    assert config.agent.socket == "/flag.sock"
    assert config.agent.root_dir == "/env-root"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[agent]\nsockett = "/x"\n', "unknown key 'agent.sockett'"),
        ("[bogus]\nx = 1\n", "unknown key 'bogus'"),
        (
            '[runtime.handlers.runc]\npath = "runc"\nflavour = 1\n',
            "unknown key 'runtime.handlers.runc.flavour'",
        ),
        (
            '[agent]\nshutdown_timeout_seconds = "soon"\n',
            "agent.shutdown_timeout_seconds: expected float",
        ),
        (
            "[image]\nmax_concurrent_downloads = 1.5\n",
            "image.max_concurrent_downloads: expected int",
        ),
        ('[runtime]\ncgroup_driver = "cgroupv3"\n', "'cgroupv3' is not one of cgroupfs, systemd"),
        ('[agent]\nroot_dir = "relative"\n', "agent.root_dir: 'relative' is not an absolute path"),
        ('[metrics]\naddress = "9464"\n', "metrics.address: '9464' is not host:port"),
        ('[network]\npod_cidr = "10.0.0.0/33"\n', "network.pod_cidr"),
        ('[runtime]\ndefault_handler = "kata"\n', "'kata' is not a configured handler"),
        ("[runtime.handlers.kata]\n", "runtime.handlers.kata"),
        ("agent = 3\n", "agent: expected a table"),
        ("[agent\n", "config file"),
    ],
)
def test_bad_files_name_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, text), environ={})
    assert message in str(info.value)


def test_bad_env_value_is_reported(tmp_path):
    with pytest.raises(ConfigError, match=r"agent\.log_level: 'loud' is not one of"):
        load(write(tmp_path, ""), environ={"MODEL_AGENT_LOG_LEVEL": "loud"})


def test_rendered_toml_reloads_to_the_same_config(tmp_path):
    original = load(
        write(tmp_path, '[network]\ncni_bin_dirs = ["/a", "/b"]\n[agent]\nlog_level = "debug"\n'),
        environ={},
    )
    text = render_toml(original)
    assert "# Persistent state" in text  # every key carries its documentation
    tomllib.loads(text)
    again = load(write(tmp_path, text), environ={})
    assert again == original


def test_config_is_frozen():
    config = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.agent = None  # type: ignore[misc,assignment]
