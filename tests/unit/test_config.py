"""Config loading: defaults, precedence, errors that name the key, printing."""

from __future__ import annotations

import dataclasses
import tomllib
from typing import Any

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


#: Values for keys whose generic "something else" would not validate (dotted key -> value).
_CONSTRAINED: dict[str, object] = {
    "agent.socket": '/run/ma "quoted" \\ dir/cri.sock',
    "metrics.address": "127.0.0.2:9999",
    "streaming.address": "127.0.0.2:10010",
    "runtime.default_handler": "kata",
    "runtime.default_cgroup_parent": "/other-parent",
    "network.pod_cidr": "10.99.0.0/16,fd00:99::/64",
    "network.bridge": "ma-every0",
    "image.pinned_images": ["registry.example/app:v1", "docker.io/library/pause:3.10"],
    "gpu.cdi_kind": "example.com/accel",
    "gpu.backend": "simulated",
    "gpu.simulated_file": "/etc/model-agent/gpus.toml",
    "gpu.cdi_spec_dirs": ["/etc/cdi-every", "/run/cdi-every"],
    "gpu.node_spec_dir": "/run/cdi-every",
    "gpu.hook_command": ["/usr/bin/hook", "--flag=a b"],
    "gpu.kubelet_api": "split",  # the one value dra_gpus may be set with
    "gpu.kubelet.dra_gpus": ["0", "GPU-every-key"],
    "gpu.dra.driver_name": "gpu.every.example.com",
    "gpu.dra.node_name": "node-every",
    "gpu.device_plugin.resource_name": "example.com/accel",
    "gpu.sharing.replicas": 4,
    "gpu.health.ignored_xids": [13, 43],
    "gpu.health.reset_xids": [48, 79],
}


def _something_else(key: str, fld: dataclasses.Field[Any], default: object) -> object:
    """A value for ``key`` that differs from its default and still validates."""
    if key in _CONSTRAINED:
        return _CONSTRAINED[key]
    if key.startswith("image.registries.") and key.endswith(".mirrors"):
        return ["https://mirror.example", "http://10.0.0.9:5000"]
    choices = fld.metadata.get("choices")
    if choices:
        return next(c for c in choices if c != default)
    if isinstance(default, bool):
        return not default
    if isinstance(default, int):
        return default + 7
    if isinstance(default, float):
        return default + 1.5
    if isinstance(default, str):
        base = default if default.startswith("/") else "/"
        return f'{base.rstrip("/")}/every "key" \\ set\ttab'
    if isinstance(default, list):
        return ["/first", "/second\\dir"]
    if default is None:  # a required key
        return f"/required/{key.replace('.', '/')}"
    raise AssertionError(f"{key}: no rule for {type(default).__name__}")  # pragma: no cover


def _every_key_set(cls: type, prefix: str) -> Any:
    values: dict[str, object] = {}
    for fld in dataclasses.fields(cls):
        key = f"{prefix}{fld.name}"
        hint = str(fld.type)  # annotations are strings here (from __future__)
        if fld.default is not dataclasses.MISSING:
            default = fld.default
        elif fld.default_factory is not dataclasses.MISSING:
            default = fld.default_factory()
        else:
            default = None
        if isinstance(default, dict) or hint.startswith("dict["):
            values[fld.name] = _tables(key, hint)
        elif dataclasses.is_dataclass(default):
            values[fld.name] = _every_key_set(type(default), f"{key}.")
        else:
            values[fld.name] = _something_else(key, fld, default)
            assert values[fld.name] != default, key  # every key really is set
    return cls(**values)


def _tables(key: str, hint: str) -> dict[str, object]:
    from agent import config as module

    item_type = getattr(module, hint.removeprefix("dict[str, ").removesuffix("]"))
    names = {
        "runtime.handlers": ["runc", "crun", "kata"],  # (the built-in two, overridden)
        "image.registries": ["docker.io", "10.0.0.5:5000", "registry.internal.example"],
    }[key]
    return {name: _every_key_set(item_type, f"{key}.{name}.") for name in names}


def test_a_config_with_every_key_set_prints_and_loads_back_the_same(tmp_path):
    original = _every_key_set(Config, "")
    text = render_toml(original)
    assert '[image.registries."docker.io"]' in text  # a dotted host is one quoted key
    again = load(write(tmp_path, text), environ={})
    assert again == original
