"""Which AppArmor profile a container gets, on hosts with and without AppArmor."""

from __future__ import annotations

import json
import os

import pytest

from agent.api.cri.runtime.v1 import api_pb2 as pb
from agent.cri.convert.sandboxes import sandbox_config_from_pb
from agent.errors import FailedPrecondition, InvalidArgument
from agent.pods import model
from agent.pods.apparmor import DEFAULT_PROFILE_NAME, AppArmor
from agent.pods.podfiles import PodDirs
from tests.conftest import make_config
from tests.fakes.pods import IMAGE, FakePods, build


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


# -- the pod's own profile (LinuxSandboxSecurityContext.apparmor): its infra process --------


def pod_config(apparmor: str, *, privileged: bool = False) -> model.SandboxConfig:
    security = model.PodSecurity(
        namespaces=model.NamespaceOptions(network="NODE"), privileged=privileged, apparmor=apparmor
    )
    metadata = model.PodMetadata(f"pod-{len(apparmor)}-{privileged}", "uid-1", "ns")
    return model.SandboxConfig(metadata=metadata, security=security)


def infra_profile(pods: FakePods, sandbox_id: str) -> str | None:
    dirs = PodDirs(pods.config.agent.root_dir, pods.config.agent.state_dir)
    with open(os.path.join(dirs.bundle(sandbox_id), "config.json")) as f:
        profile: str | None = json.load(f)["process"].get("apparmorProfile")
    return profile


async def test_a_pods_profile_confines_its_infra_process_or_refuses_the_pod(tmp_path, short_dir):
    apparmor = host(tmp_path, enabled=True, profiles=["k8s-pod", DEFAULT_PROFILE_NAME])
    pods = build(make_config(short_dir), apparmor=apparmor)
    try:
        named = await pods.sandboxes.run(pod_config("localhost/k8s-pod"))
        assert infra_profile(pods, named) == "k8s-pod"
        default = await pods.sandboxes.run(pod_config(""))
        assert infra_profile(pods, default) == DEFAULT_PROFILE_NAME
        privileged = await pods.sandboxes.run(pod_config("runtime/default", privileged=True))
        assert infra_profile(pods, privileged) is None
        with pytest.raises(FailedPrecondition, match="is not loaded"):
            await pods.sandboxes.run(pod_config("localhost/missing"))
        assert len(pods.store.sandboxes()) == 3  # the refused pod left nothing
    finally:
        await pods.containers.close()
        pods.close()


def test_the_pod_level_request_is_converted_like_a_containers():
    def converted(profile: pb.SecurityProfile | None) -> str:
        config = pb.PodSandboxConfig(
            metadata=pb.PodSandboxMetadata(name="p", uid="u", namespace="n")
        )
        if profile is not None:
            config.linux.security_context.apparmor.CopyFrom(profile)
        return sandbox_config_from_pb(config, "").security.apparmor

    localhost = pb.SecurityProfile(profile_type=pb.SecurityProfile.Localhost, localhost_ref="x")
    assert converted(localhost) == "localhost/x"
    assert converted(pb.SecurityProfile(profile_type=pb.SecurityProfile.RuntimeDefault)) == (
        "runtime/default"
    )
    assert converted(pb.SecurityProfile(profile_type=pb.SecurityProfile.Unconfined)) == (
        "unconfined"
    )
    assert converted(None) == ""


# -- a container's profile: its process in config.json ---------------------------------------


def container_profile(pods: FakePods, cid: str) -> str | None:
    with open(os.path.join(pods.containers.bundle(cid), "config.json")) as f:
        profile: str | None = json.load(f)["process"].get("apparmorProfile")
    return profile


async def test_a_containers_profile_confines_its_process_or_refuses_the_container(
    tmp_path, short_dir
):
    apparmor = host(tmp_path, enabled=True, profiles=["k8s-app", DEFAULT_PROFILE_NAME])
    pods = build(make_config(short_dir), apparmor=apparmor)

    async def create(name: str, profile: str, *, privileged: bool = False) -> str:
        security = model.ContainerSecurity(apparmor=profile, privileged=privileged)
        config = model.ContainerConfig(
            name=name, attempt=0, image=IMAGE, command=("sleep",), security=security
        )
        return await pods.containers.create(sid, config)

    try:
        sid = await pods.run_pod()
        assert container_profile(pods, await create("named", "localhost/k8s-app")) == "k8s-app"
        assert container_profile(pods, await create("default", "")) == DEFAULT_PROFILE_NAME
        assert container_profile(pods, await create("runtime", "runtime/default")) == (
            DEFAULT_PROFILE_NAME
        )
        assert container_profile(pods, await create("unconfined", "unconfined")) is None
        privileged = await create("privileged", "runtime/default", privileged=True)
        assert container_profile(pods, privileged) is None
        # a privileged container still gets a profile it names itself
        named_privileged = await create("named-privileged", "localhost/k8s-app", privileged=True)
        assert container_profile(pods, named_privileged) == "k8s-app"
        with pytest.raises(FailedPrecondition, match="is not loaded"):
            await create("missing", "localhost/missing")
        assert len(pods.store.containers_of(sid)) == 6  # the refused container left nothing
    finally:
        await pods.containers.close()
        pods.close()
