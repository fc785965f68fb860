"""CDI spec parsing for versions 0.3.0-1.1.0, device names, and the annotation form."""

from __future__ import annotations

import json

import pytest

from agent.errors import InvalidArgument
from agent.gpu.cdi.names import merge_requests, parse_annotations, parse_qualified
from agent.gpu.cdi.spec import (
    ContainerEdits,
    Device,
    DeviceNode,
    Hook,
    IntelRdt,
    Mount,
    NetDevice,
    Spec,
    SpecError,
    minimum_version,
    parse_spec,
    spec_to_dict,
)


def spec_json(version: str, **extra) -> bytes:
    data = {
        "cdiVersion": version,
        "kind": "vendor.com/dev",
        "devices": [{"name": "d0", "containerEdits": {"env": ["A=1"]}}],
    }
    data.update(extra)
    return json.dumps(data).encode()


FULL_YAML = b"""
cdiVersion: 1.1.0
kind: example.com/nic
annotations:
  owner: tests
devices:
  - name: "0"
    annotations: {slot: "3"}
    containerEdits:
      deviceNodes:
        - path: /dev/vfio/3
          hostPath: /dev/vfio/3
          type: c
          major: 240
          minor: 3
          fileMode: 0660
          permissions: rw
          uid: 1000
          gid: 1000
      netDevices:
        - hostInterfaceName: eth1
          name: net1
containerEdits:
  env: ["NIC=1", "X=y=z"]
  mounts:
    - hostPath: /usr/lib/libnic.so
      containerPath: /usr/lib/libnic.so
      type: bind
      options: [ro, bind]
  hooks:
    - hookName: createContainer
      path: /usr/bin/nic-hook
      args: [nic-hook, setup]
      env: [DEBUG=1]
      timeout: 5
  additionalGids: [44, 0]
  intelRdt:
    closID: gold
    schemata: ["L3:0=ff"]
    enableMonitoring: true
"""


def test_a_full_1_1_spec_in_yaml():
    spec = parse_spec(FULL_YAML, "/etc/cdi/nic.yaml")
    assert (spec.version, spec.kind, spec.vendor, spec.device_class) == (
        "1.1.0",
        "example.com/nic",
        "example.com",
        "nic",
    )
    assert spec.annotations == {"owner": "tests"}
    (device,) = spec.devices
    assert device.name == "0" and device.annotations == {"slot": "3"}
    assert device.edits.device_nodes == (
        DeviceNode("/dev/vfio/3", "/dev/vfio/3", "c", 240, 3, 0o660, "rw", 1000, 1000),
    )
    assert device.edits.net_devices == (NetDevice("eth1", "net1"),)
    edits = spec.edits
    assert edits.env == ("NIC=1", "X=y=z")
    assert edits.mounts == (
        Mount("/usr/lib/libnic.so", "/usr/lib/libnic.so", ("ro", "bind"), "bind"),
    )
    assert edits.hooks == (
        Hook("createContainer", "/usr/bin/nic-hook", ("nic-hook", "setup"), ("DEBUG=1",), 5),
    )
    assert edits.additional_gids == (44, 0)
    assert edits.intel_rdt == IntelRdt(
        clos_id="gold", schemata=("L3:0=ff",), enable_monitoring=True
    )
    assert minimum_version(spec) == "1.1.0"


@pytest.mark.parametrize(
    ("extra_device", "needed"),
    [
        (
            {
                "name": "d0",
                "containerEdits": {
                    "mounts": [{"hostPath": "/a", "containerPath": "/a", "type": "bind"}]
                },
            },
            "0.4.0",
        ),
        ({"name": "0", "containerEdits": {"env": ["A=1"]}}, "0.5.0"),
        (
            {
                "name": "d0",
                "containerEdits": {"deviceNodes": [{"path": "/dev/x", "hostPath": "/dev/y"}]},
            },
            "0.5.0",
        ),
        ({"name": "d0", "annotations": {"k": "v"}, "containerEdits": {"env": ["A=1"]}}, "0.6.0"),
        ({"name": "d0", "containerEdits": {"additionalGids": [5]}}, "0.7.0"),
        ({"name": "d0", "containerEdits": {"intelRdt": {"closID": "c"}}}, "0.7.0"),
        (
            {
                "name": "d0",
                "containerEdits": {"netDevices": [{"hostInterfaceName": "a", "name": "b"}]},
            },
            "1.1.0",
        ),
    ],
)
def test_fields_need_their_version(extra_device, needed):
    versions = ("0.3.0", "0.4.0", "0.5.0", "0.6.0", "0.7.0", "0.8.0", "1.0.0", "1.1.0")
    for version in versions:
        data = spec_json(version, devices=[extra_device])
        if versions.index(version) < versions.index(needed):
            with pytest.raises(SpecError, match=f"need at least {needed}"):
                parse_spec(data)
        else:
            assert minimum_version(parse_spec(data)) == needed


def test_a_dot_in_the_class_needs_0_6():
    with pytest.raises(SpecError, match=r"0\.6\.0"):
        parse_spec(spec_json("0.5.0", kind="vendor.com/dev.x"))
    assert parse_spec(spec_json("0.6.0", kind="vendor.com/dev.x")).kind == "vendor.com/dev.x"


def test_enable_cmt_is_gone_in_1_1():
    rdt = {"name": "d0", "containerEdits": {"intelRdt": {"enableCMT": True}}}
    parsed = parse_spec(spec_json("0.8.0", devices=[rdt])).devices[0].edits.intel_rdt
    assert parsed is not None and parsed.enable_cmt
    with pytest.raises(SpecError, match="enableCMT"):
        parse_spec(spec_json("1.1.0", devices=[rdt]))


def test_a_leading_v_in_the_version_is_accepted():
    assert parse_spec(spec_json("v0.6.0")).version == "0.6.0"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"{not json", "not valid JSON"),
        (spec_json("0.2.0"), "unsupported version '0.2.0'"),
        (spec_json("2.0.0"), "unsupported version"),
        (spec_json("0.6.0", kind="nokind"), "kind: kind 'nokind' is not vendor/class"),
        (spec_json("0.6.0", kind="vendor.com/-bad"), "should start with a letter"),
        (spec_json("0.6.0", devices=[]), "at least one device"),
        (spec_json("0.6.0", colour="red"), "unknown field 'colour'"),
        (spec_json("0.6.0", containerEdits=[{"env": ["A=1"]}]), "expected an object"),
        (
            spec_json("0.6.0", devices=[{"name": "d0", "containerEdits": {}}]),
            "empty container edits",
        ),
        (
            spec_json("0.6.0", devices=[{"name": "-x", "containerEdits": {"env": ["A=1"]}}]),
            "should start with a letter or digit",
        ),
        (
            spec_json("0.6.0", devices=[{"name": "a/b", "containerEdits": {"env": ["A=1"]}}]),
            "invalid character '/'",
        ),
        (
            spec_json("0.6.0", devices=[{"name": "d0", "containerEdits": {"env": ["A=1"]}}] * 2),
            "defined twice",
        ),
        (
            spec_json("0.6.0", devices=[{"name": "d0", "containerEdits": {"env": ["=1"]}}]),
            "invalid environment variable",
        ),
        (
            spec_json(
                "0.6.0",
                devices=[
                    {
                        "name": "d0",
                        "containerEdits": {"hooks": [{"hookName": "beforeLunch", "path": "/x"}]},
                    }
                ],
            ),
            "invalid hook name",
        ),
        (
            spec_json(
                "0.6.0",
                devices=[
                    {
                        "name": "d0",
                        "containerEdits": {
                            "hooks": [{"hookName": "poststop", "path": "/x", "timeout": 0}]
                        },
                    }
                ],
            ),
            "greater than zero",
        ),
        (
            spec_json(
                "0.6.0",
                devices=[
                    {
                        "name": "d0",
                        "containerEdits": {
                            "deviceNodes": [{"path": "/dev/x", "permissions": "rwx"}]
                        },
                    }
                ],
            ),
            "invalid permissions",
        ),
        (
            spec_json(
                "0.6.0",
                devices=[
                    {
                        "name": "d0",
                        "containerEdits": {"deviceNodes": [{"path": "/dev/x", "type": "q"}]},
                    }
                ],
            ),
            "invalid type",
        ),
        (
            spec_json(
                "0.6.0",
                devices=[
                    {
                        "name": "d0",
                        "containerEdits": {"deviceNodes": [{"path": "/dev/x", "major": "195"}]},
                    }
                ],
            ),
            "major: expected an integer",
        ),
        (
            spec_json(
                "0.6.0",
                devices=[{"name": "d0", "containerEdits": {"mounts": [{"hostPath": "/a"}]}}],
            ),
            "'containerPath' is required",
        ),
        (
            spec_json(
                "0.7.0", devices=[{"name": "d0", "containerEdits": {"additionalGids": [-1]}}]
            ),
            "unsigned 32-bit",
        ),
    ],
)
def test_malformed_specs_say_why(data, message):
    with pytest.raises(SpecError, match=message):
        parse_spec(data)


def test_yaml_errors_are_reported():
    with pytest.raises(SpecError, match="not valid YAML"):
        parse_spec(b"cdiVersion: [unclosed", "x.yaml")
    with pytest.raises(SpecError, match="expected an object"):
        parse_spec(b"- a\n- b\n", "x.yaml")


def test_written_specs_parse_back_to_the_same_value():
    spec = Spec(
        version="0.7.0",
        kind="nvidia.com/gpu",
        annotations={"a": "b"},
        devices=(
            Device("0", ContainerEdits(device_nodes=(DeviceNode("/dev/nvidia0", "/h/nvidia0"),))),
            Device(
                "GPU-x",
                ContainerEdits(device_nodes=(DeviceNode("/dev/nvidia0", type="c", major=195),)),
            ),
        ),
        edits=ContainerEdits(
            env=("A=1",),
            mounts=(Mount("/h/lib.so", "/lib.so", ("ro", "bind")),),
            hooks=(Hook("createContainer", "/bin/true", ("true",), ("X=1",), 3),),
            additional_gids=(44,),
        ),
    )
    again = parse_spec(json.dumps(spec_to_dict(spec)).encode())
    assert again == spec


def test_qualified_names():
    assert parse_qualified("nvidia.com/gpu=0") == ("nvidia.com", "gpu", "0")
    assert parse_qualified("nvidia.com/gpu=1:0") == ("nvidia.com", "gpu", "1:0")
    assert parse_qualified("k8s.gpu.model-agent.io/claim=abc-gpu-0")[2] == "abc-gpu-0"
    for bad in (
        "gpu=0",
        "nvidia.com/gpu",
        "nvidia.com/gpu=",
        "/dev/nvidia0",
        "a/b/c=1",
        "nvidia.com/gpu=0:",
        "1vendor/gpu=0",
    ):
        with pytest.raises(ValueError, match="CDI device name"):
            parse_qualified(bad)


def test_annotations_are_parsed_in_key_order_and_bad_names_are_refused():
    annotations = {
        "cdi.k8s.io/nvidia-device-plugin_GPU-b": "nvidia.com/gpu=GPU-b",
        "cdi.k8s.io/a_1": "vendor.com/nic=eth0,vendor.com/nic=eth1",
        "io.kubernetes.other": "nvidia.com/gpu=all",
    }
    assert parse_annotations(annotations) == [
        "vendor.com/nic=eth0",
        "vendor.com/nic=eth1",
        "nvidia.com/gpu=GPU-b",
    ]
    with pytest.raises(InvalidArgument, match=r"annotation cdi\.k8s\.io/x: 'gpu0'"):
        parse_annotations({"cdi.k8s.io/x": "gpu0"})


def test_merge_is_field_then_annotations_each_once():
    merged = merge_requests(
        ["nvidia.com/gpu=0", "nvidia.com/gpu=0"], {"cdi.k8s.io/p_0": "nvidia.com/gpu=0,x.io/y=1"}
    )
    assert merged == ["nvidia.com/gpu=0", "x.io/y=1"]
    with pytest.raises(InvalidArgument, match="CDI device"):
        merge_requests(["not-a-name"], {})
