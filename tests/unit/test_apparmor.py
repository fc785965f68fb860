"""Which AppArmor profile a container gets, on hosts with and without AppArmor."""

from __future__ import annotations

import pytest

from agent.errors import FailedPrecondition, InvalidArgument
from agent.pods.apparmor import DEFAULT_PROFILE_NAME, AppArmor


def host(tmp_path, *, enabled: bool, profiles: list[str]) -> AppArmor:
    fs = tmp_path / "securityfs"
    fs.mkdir()
    (fs / "profiles").write_text("".join(f"{p} (enforce)\n" for p in profiles))
    flag = tmp_path / "enabled"
    flag.write_text("Y\n" if enabled else "N\n")
    return AppArmor(securityfs=str(fs), enabled_flag=str(flag), parser="/bin/false")


async def test_without_apparmor_a_named_profile_is_refused_and_the_default_falls_back(tmp_path):
    apparmor = host(tmp_path, enabled=False, profiles=[])
    with pytest.raises(FailedPrecondition, match="no AppArmor; refusing to run"):
        await apparmor.profile_for("localhost/k8s-deny-write")
    assert await apparmor.profile_for("runtime/default") is None
    assert await apparmor.profile_for("") is None
    assert await apparmor.profile_for("unconfined") is None


async def test_with_apparmor_profiles_are_applied_when_loaded(tmp_path):
    apparmor = host(tmp_path, enabled=True, profiles=["k8s-deny-write", DEFAULT_PROFILE_NAME])
    assert await apparmor.profile_for("localhost/k8s-deny-write") == "k8s-deny-write"
    assert await apparmor.profile_for("runtime/default") == DEFAULT_PROFILE_NAME
    assert await apparmor.profile_for("") == DEFAULT_PROFILE_NAME
    with pytest.raises(FailedPrecondition, match="is not loaded"):
        await apparmor.profile_for("localhost/missing")


async def test_a_default_profile_that_cannot_be_loaded_is_an_error(tmp_path):
    apparmor = host(tmp_path, enabled=True, profiles=[])  # the parser is /bin/false
    with pytest.raises(FailedPrecondition, match="load the default AppArmor profile"):
        await apparmor.profile_for("runtime/default")


async def test_garbage_requests_are_invalid(tmp_path):
    apparmor = host(tmp_path, enabled=True, profiles=[])
    for request in ("docker-default", "localhost/", "localhost/a\nb"):
        with pytest.raises(InvalidArgument):
            await apparmor.profile_for(request)
