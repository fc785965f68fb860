"""``Localhost`` seccomp profiles: only a regular file of bounded size is read, so a
profile path naming ``/dev/zero`` or a FIFO neither fills memory nor blocks."""

from __future__ import annotations

import json
import os

import pytest

from agent.errors import InvalidArgument
from agent.pods.model import SecurityProfile
from agent.pods.seccomp_profiles import MAX_PROFILE_BYTES, SeccompProfiles

PROFILE = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": []}


def localhost(path: str) -> SecurityProfile:
    return SecurityProfile("Localhost", str(path))


def test_a_good_profile_file_is_read(tmp_path):
    path = tmp_path / "good.json"
    path.write_text(json.dumps(PROFILE))
    profile = SeccompProfiles().profile(localhost(path), ())
    assert profile is not None and profile["defaultAction"] == "SCMP_ACT_ALLOW"


def test_a_character_device_is_refused():
    with pytest.raises(InvalidArgument, match="/dev/zero: not a regular file"):
        SeccompProfiles().profile(localhost("/dev/zero"), ())


def test_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "profile.fifo"
    os.mkfifo(fifo)
    with pytest.raises(InvalidArgument, match=f"{fifo}: not a regular file"):
        SeccompProfiles().profile(localhost(fifo), ())


def test_an_oversize_file_is_refused_naming_it(tmp_path):
    path = tmp_path / "huge.json"
    with open(path, "wb") as f:
        f.truncate(MAX_PROFILE_BYTES + 1)
    with pytest.raises(InvalidArgument, match=f"{path}: {MAX_PROFILE_BYTES + 1} bytes, over"):
        SeccompProfiles().profile(localhost(path), ())


def test_a_missing_file_is_refused_naming_it(tmp_path):
    path = tmp_path / "absent.json"
    with pytest.raises(InvalidArgument, match=f"{path}: No such file"):
        SeccompProfiles().profile(localhost(path), ())
