"""scripts/setup (which scripts/serve runs first) installs once, then starts fast and quietly."""

from __future__ import annotations

import os
import pathlib
import subprocess
import time

import pytest

pytestmark = pytest.mark.integration

ROOT = pathlib.Path(__file__).resolve().parents[2]


def setup_quietly() -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    done = subprocess.run(
        [str(ROOT / "scripts" / "setup"), "--quiet"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    return done, time.monotonic() - started


def test_setup_does_nothing_and_says_nothing_when_everything_is_installed():
    first, _ = setup_quietly()  # installs only if pyproject.toml changed since the last run
    assert first.returncode == 0, first.stderr
    log = ROOT / ".venv" / "setup-pip.log"
    before = log.stat().st_mtime_ns if log.exists() else None
    again, seconds = setup_quietly()
    assert again.returncode == 0, again.stderr
    assert (again.stdout, again.stderr) == ("", "")
    assert seconds < 10, f"took {seconds:.1f}s"
    after = log.stat().st_mtime_ns if log.exists() else None
    assert after == before, "pip ran again"
    assert os.access(ROOT / ".venv" / "bin" / "model-agent", os.X_OK)
