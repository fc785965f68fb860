"""NVIDIA_VISIBLE_DEVICES, _DRIVER_CAPABILITIES, _REQUIRE_*, the secure default, the inventory."""

from __future__ import annotations

from typing import Any

import pytest

from agent.errors import FailedPrecondition, InvalidArgument
from agent.gpu.backend import BackendStatus, DriverInfo, GpuInfo, MigInfo
from agent.gpu.env import (
    EnvGrant,
    check_requirements,
    parse_capabilities,
    parse_visible_devices,
    visible_devices_policy,
)
from agent.gpu.inventory import Device, Inventory

G0, G1, G2 = "GPU-aaaa", "GPU-bbbb", "GPU-cccc"
M0, M1 = "MIG-1111", "MIG-2222"


def inventory(*, mig: bool = True, lost: bool = False) -> Inventory:
    migs = (
        (
            MigInfo(0, M0, 3, 0, "3g.40gb", gi_cap_minor=30, ci_cap_minor=31),
            MigInfo(2, M1, 5, 0, "1g.10gb", gi_cap_minor=50, ci_cap_minor=51),
        )
        if mig
        else ()
    )
    gpus: tuple[GpuInfo, ...] = (
        GpuInfo(0, G0, minor=0, cuda_compute_capability="9.0", brand="Nvidia"),
        GpuInfo(
            1,
            G1,
            minor=1,
            mig_mode="enabled" if mig else "disabled",
            mig_devices=migs,
            cuda_compute_capability="9.0",
            brand="Nvidia",
        ),
    )
    if lost:
        gpus += (GpuInfo(2, G2, minor=2, state="lost", error="fell off the bus"),)
    return Inventory(
        BackendStatus("simulated", True, gpu_count=len(gpus)), DriverInfo("550.54.15", "12.4"), gpus
    )


# -- the inventory lookups ---------------------------------------------------


def test_every_spelling_of_a_device_is_found():
    inv = inventory()

    def find(ident: str) -> Device:
        device = inv.find(ident)
        assert device is not None, ident
        return device

    assert find("0").uuid == G0
    assert find(G1).uuid == G1 and not find(G1).is_mig
    assert find("1:2").uuid == M1 and find("1:2").index == "1:2"
    assert find(M0).index == "1:0"
    assert find(f"MIG-{G1}/5/0").uuid == M1  # the legacy MIG form
    assert inv.find(f"MIG-{G1}/9/0") is None
    assert inv.find("7") is None and inv.find("GPU-zzzz") is None and inv.find("1:1") is None
    mig, gpu = inv.mig_by_cap_minor(51), inv.by_minor(1)
    assert mig is not None and mig.uuid == M1 and gpu is not None and gpu.uuid == G1
    assert [d.index for d in inv.devices()] == ["0", "1", "1:0", "1:2"]


def test_the_signature_follows_what_the_node_spec_depends_on():
    a, b = inventory(), inventory()
    assert a.signature() == b.signature()
    assert inventory(mig=False).signature() != a.signature()
    assert inventory(lost=True).signature() != a.signature()


# -- NVIDIA_VISIBLE_DEVICES --------------------------------------------------


@pytest.mark.parametrize(
    ("value", "uuids"),
    [
        ("0", [G0]),
        (f"{G1},0", [G1, G0]),
        ("1:0", [M0]),
        (f"{M1}, 0", [M1, G0]),
        ("all", [G0, M0, M1]),  # a GPU in MIG mode contributes its MIG devices
        ("0,0", [G0]),
    ],
)
def test_device_lists(value, uuids):
    assert [d.uuid for d in parse_visible_devices(value, inventory()).devices] == uuids


@pytest.mark.parametrize("value", [None, "", "void", "  "])
def test_nothing_at_all(value):
    visible = parse_visible_devices(value, inventory())
    assert visible.empty and not visible.driver_only


def test_none_is_the_driver_without_a_gpu():
    visible = parse_visible_devices("none", inventory())
    assert visible.driver_only and visible.devices == () and not visible.empty


@pytest.mark.parametrize(
    ("value", "message", "inv"),
    [
        ("7", "GPU 7 does not exist (this node has 2)", inventory()),
        ("GPU-ffff", "'GPU-ffff' is not a device on this node", inventory()),
        ("MIG-ffff", "'MIG-ffff' is not a device on this node", inventory()),
        ("0:0", "'0:0' names a MIG device but GPU 0 is not in MIG mode", inventory()),
        ("1:0", "'1:0' names a MIG device but GPU 1 is not in MIG mode", inventory(mig=False)),
        (f"MIG-{G0}/1/0", "names a MIG device but GPU 0 is not in MIG mode", inventory()),
        ("1:9", "GPU 1 has no MIG device 9", inventory()),
        ("5:0", "GPU 5 does not exist", inventory()),
        ("gpu0", "'gpu0' is not a GPU index, UUID, MIG device", inventory()),
        ("0,none", "cannot be combined", inventory()),
        ("2", "GPU 2 (2) is not usable: fell off the bus", inventory(lost=True)),
    ],
)
def test_bad_ids_are_invalid_arguments_naming_them(value, message, inv):
    with pytest.raises(InvalidArgument, match="NVIDIA_VISIBLE_DEVICES") as exc:
        parse_visible_devices(value, inv)
    assert message in str(exc.value)


def test_driver_capabilities():
    assert parse_capabilities(None) == ("compute", "utility")
    assert parse_capabilities("") == ("compute", "utility")
    assert parse_capabilities("video,utility, bogus") == ("utility", "video")
    assert set(parse_capabilities("all")) >= {"compute", "graphics", "video", "utility"}


# -- NVIDIA_REQUIRE_* ----------------------------------------------------------

FACTS = {"cuda": "12.4", "driver": "550.54.15", "arch": ["9.0"], "brand": ["Nvidia"]}


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"NVIDIA_REQUIRE_CUDA": "cuda>=12.0"},
        {"NVIDIA_REQUIRE_CUDA": "cuda>=12.4"},
        {"NVIDIA_REQUIRE_CUDA": "cuda>=13.0 brand=nvidia,driver>=535"},  # the second holds
        {"NVIDIA_REQUIRE_CUDA": "cuda>=11.8", "NVIDIA_REQUIRE_ARCH": "arch>=8.0"},
        {"NVIDIA_REQUIRE_DRIVER": "driver>=550.54,driver<551"},
        {"NVIDIA_REQUIRE_CUDA": "cuda=12.4.0"},
        {"NVIDIA_REQUIRE_CUDA": "cuda>=99", "NVIDIA_DISABLE_REQUIRE": "true"},
        {"CUDA_VERSION": "12.2.2"},  # legacy: cuda>=12.2
        {"NVIDIA_REQUIRE_JETPACK": "jetpack>=9"},  # ignored, as the toolkit does
        {"NVIDIA_REQUIRE_X": "unknownprop>=1"},  # properties it does not know are skipped
    ],
)
def test_requirements_that_hold(env):
    try:
        check_requirements(env, FACTS)
    except FailedPrecondition as exc:
        pytest.fail(f"{env} holds on this node, yet: {exc}")


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"NVIDIA_REQUIRE_CUDA": "cuda>=12.6"}, "NVIDIA_REQUIRE_CUDA='cuda>=12.6'"),
        ({"NVIDIA_REQUIRE_CUDA": "cuda>=13.0 brand=tesla,driver>=535"}, "cuda=12.4"),
        ({"CUDA_VERSION": "12.8.0"}, "CUDA_VERSION='cuda>=12.8'"),
        ({"NVIDIA_REQUIRE_ARCH": "arch>=10.0"}, "arch=9.0"),
        ({"NVIDIA_REQUIRE_DRIVER": "driver<550"}, "driver=550.54.15"),
        ({"NVIDIA_REQUIRE_CUDA": "cuda>=12.0", "NVIDIA_REQUIRE_BRAND": "brand!=nvidia"}, "BRAND"),
    ],
)
def test_requirements_that_fail_name_the_condition(env, fragment):
    with pytest.raises(FailedPrecondition, match="unsatisfied condition") as exc:
        check_requirements(env, FACTS)
    assert fragment in str(exc.value)


def test_an_arch_requirement_must_hold_for_every_granted_gpu():
    facts = {**FACTS, "arch": ["9.0", "8.0"], "brand": ["Nvidia", "Nvidia"]}
    with pytest.raises(FailedPrecondition):
        check_requirements({"NVIDIA_REQUIRE_ARCH": "arch>=9.0"}, facts)
    check_requirements({"NVIDIA_REQUIRE_ARCH": "arch>=8.0"}, facts)


def test_a_malformed_requirement_is_an_invalid_argument():
    with pytest.raises(InvalidArgument, match="invalid constraint"):
        check_requirements({"NVIDIA_REQUIRE_CUDA": "cuda~12"}, FACTS)
    with pytest.raises(InvalidArgument, match="is not a version"):
        check_requirements({"NVIDIA_REQUIRE_CUDA": "cuda>=twelve"}, FACTS)


# -- the secure default ------------------------------------------------------


def policy(**kw: Any) -> EnvGrant:
    args: dict[str, Any] = {
        "image_env": {},
        "cri_env": {},
        "allocated": (),
        "accept_env": False,
        "inventory": inventory(),
    }
    args.update(kw)
    return visible_devices_policy(**args)


def test_the_image_config_never_grants():
    grant = policy(image_env={"NVIDIA_VISIBLE_DEVICES": "all"})
    assert grant.devices == () and "image config grants no GPU" in grant.image_value_ignored
    grant = policy(image_env={"NVIDIA_VISIBLE_DEVICES": "all"}, accept_env=True)
    assert grant.devices == ()  # not even when the node trusts the variable


def test_the_image_config_is_not_even_parsed():
    assert policy(image_env={"NVIDIA_VISIBLE_DEVICES": "garbage,7"}).devices == ()


def test_cri_env_is_honoured_for_what_the_agent_allocated():
    grant = policy(cri_env={"NVIDIA_VISIBLE_DEVICES": f"{G0},{G1}"}, allocated={G1})
    assert [d.uuid for d in grant.devices] == [G1]
    assert grant.requests == (G1,) and grant.source == "cri"
    assert len(grant.denied) == 1 and G0 in grant.denied[0]


def test_cri_env_for_an_allocated_mig_device():
    grant = policy(cri_env={"NVIDIA_VISIBLE_DEVICES": "1:2"}, allocated={M1})
    assert [d.uuid for d in grant.devices] == [M1] and grant.requests == ("1:2",)
    # the parent GPU's UUID does not allocate its MIG devices
    assert policy(cri_env={"NVIDIA_VISIBLE_DEVICES": "1:2"}, allocated={G1}).devices == ()


def test_cri_env_without_an_allocation_grants_nothing():
    grant = policy(cri_env={"NVIDIA_VISIBLE_DEVICES": "all"})
    assert grant.devices == () and len(grant.denied) == 3  # G0, M0, M1


def test_accept_env_trusts_the_cri_request():
    grant = policy(cri_env={"NVIDIA_VISIBLE_DEVICES": "all"}, accept_env=True)
    assert [d.uuid for d in grant.devices] == [G0, M0, M1] and grant.denied == ()


def test_cri_env_is_parsed_and_bad_ids_are_errors():
    with pytest.raises(InvalidArgument, match="GPU 7 does not exist"):
        policy(cri_env={"NVIDIA_VISIBLE_DEVICES": "7"})


def test_none_and_void_in_the_cri_request():
    # "none" is the driver without a GPU: a pod spec can set it with no resource request,
    # so only a node that trusts the variable honours it.
    secure = policy(cri_env={"NVIDIA_VISIBLE_DEVICES": "none"})
    assert not secure.driver_only and secure.devices == ()
    assert "accept_env" in secure.denied[0]
    assert policy(cri_env={"NVIDIA_VISIBLE_DEVICES": "none"}, accept_env=True).driver_only
    assert policy(cri_env={"NVIDIA_VISIBLE_DEVICES": "void"}).devices == ()
    cri_void = policy(
        image_env={"NVIDIA_VISIBLE_DEVICES": "all"}, cri_env={"NVIDIA_VISIBLE_DEVICES": "void"}
    )
    assert cri_void.devices == () and cri_void.image_value_ignored
