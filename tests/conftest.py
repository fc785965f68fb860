"""Fixtures shared by every test tier: short temp dirs and agent configs.

Unix socket paths are limited to 107 bytes, so agent dirs live under a short
``/tmp/ma-XXXX`` instead of pytest's long ``tmp_path``.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

from agent.config import Config, load
from tests import leaks


@pytest.fixture
def short_dir() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="ma-", dir="/tmp")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def make_config(base: str, **overrides: Any) -> Config:
    """A config rooted in ``base`` with metrics on a free port; dotted-key overrides."""
    values = {
        "agent.root_dir": f"{base}/root",
        "agent.state_dir": f"{base}/state",
        "metrics.address": "127.0.0.1:0",
        "network.cni_conf_dir": f"{base}/cni",
    }
    values.update(overrides)
    path = f"{base}/config.toml"  # explicit and empty: the host's /etc file never leaks in
    with open(path, "a"):
        pass
    return load(path, environ={}, overrides=values)


@pytest.fixture
def config(short_dir: str) -> Config:
    return make_config(short_dir)


@pytest.fixture(scope="session", autouse=True)
def no_leaks_on_the_host() -> Iterator[None]:
    """Fail the run if the tests left mounts, namespaces, processes, rules or cgroups."""
    before = leaks.snapshot()
    yield
    leaked = leaks.snapshot().leaked_since(before)
    if leaked:
        lines = [f"  {kind}: {', '.join(items)}" for kind, items in leaked.items()]
        pytest.fail("the test run leaked host resources:\n" + "\n".join(lines), pytrace=False)
