"""CDI container edits: checked against real device nodes, applied to the pods' OCI spec dict."""

from __future__ import annotations

import os
import stat
from typing import Any

import pytest

from agent.errors import InvalidArgument
from agent.gpu.cdi.edits import apply_edits, check_edits
from agent.gpu.cdi.spec import ContainerEdits, DeviceNode, Hook, IntelRdt, Mount, NetDevice
from agent.images.manifest import ImageConfig
from agent.pods.model import ContainerConfig
from agent.pods.spec import PodFiles, container_spec
from agent.pods.users import User
from tests.support.fake_driver import make_device_nodes

UVM = 235


@pytest.fixture
def dev(tmp_path):
    make_device_nodes(str(tmp_path), [0, 1], uvm_major=UVM)
    os.mkfifo(tmp_path / "dev" / "fifo")
    os.mknod(tmp_path / "dev" / "loop9", 0o660 | 0o060000, os.makedev(7, 9))
    (tmp_path / "dev" / "plain").write_text("")
    return tmp_path / "dev"


def node(dev, name: str, **kw) -> DeviceNode:
    return DeviceNode(path=f"/dev/{name}", host_path=str(dev / name), **kw)


def pod_spec(tmp_path, uid: int = 0, gid: int = 0) -> dict[str, Any]:
    """The spec dict pods/ builds for a plain container (what apply_edits edits)."""
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir(exist_ok=True)
    return container_spec(
        container_id="c" * 64,
        sandbox_id="s" * 64,
        config=ContainerConfig(
            name="app", attempt=0, image="img", envs=(("NVIDIA_VISIBLE_DEVICES", "all"),)
        ),
        image=ImageConfig(diff_ids=(), env=("PATH=/usr/bin", "A=image"), cmd=("sleep", "1")),
        rootfs=str(rootfs),
        user=User(uid, gid),
        pod=PodFiles(netns="/run/netns/x"),
        infra_pid=1,
        hostname="pod",
        cgroups="/model-agent/c",
        seccomp=None,
        oom_score_adj=0,
    )


def test_device_nodes_are_completed_from_the_host(dev):
    checked = check_edits("v.com/d=x", ContainerEdits(device_nodes=(node(dev, "nvidia1"),)))
    (n,) = checked.device_nodes
    assert (n.type, n.major, n.minor, n.file_mode) == ("c", 195, 1, 0o666)
    uvm = check_edits("x", ContainerEdits(device_nodes=(node(dev, "nvidia-uvm-tools"),)))
    assert (uvm.device_nodes[0].major, uvm.device_nodes[0].minor) == (UVM, 1)
    block = check_edits("x", ContainerEdits(device_nodes=(node(dev, "loop9"),)))
    assert (block.device_nodes[0].type, block.device_nodes[0].major) == ("b", 7)
    fifo = check_edits("x", ContainerEdits(device_nodes=(node(dev, "fifo"),)))
    assert fifo.device_nodes[0].type == "p"


def test_a_node_given_in_full_is_not_read_from_the_host():
    full = DeviceNode("/dev/nvidia9", "/nonexistent/nvidia9", "c", 195, 9)
    (n,) = check_edits("x", ContainerEdits(device_nodes=(full,))).device_nodes
    assert (n.major, n.minor, n.host_path) == (195, 9, "/nonexistent/nvidia9")


def test_the_path_alone_names_the_host_node_when_hostpath_is_omitted():
    (n,) = check_edits("x", ContainerEdits(device_nodes=(DeviceNode("/dev/null"),))).device_nodes
    assert (n.type, n.major, n.minor, n.host_path) == ("c", 1, 3, "/dev/null")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: DeviceNode("/etc/passwd", str(d / "nvidia0")), "outside /dev"),
        (lambda d: DeviceNode("dev/nvidia0", str(d / "nvidia0")), "must be absolute"),
        (lambda d: DeviceNode("/dev/../etc/x", str(d / "nvidia0")), "must be absolute"),
        (
            lambda d: DeviceNode("/dev/nvidia0", "rel/nvidia0"),
            "host path rel/nvidia0 must be absolute",
        ),
        (lambda d: DeviceNode("/dev/nvidia7", str(d / "nvidia7")), "No such file or directory"),
        (lambda d: DeviceNode("/dev/plain", str(d / "plain")), "is not a device node"),
        (lambda d: DeviceNode("/dev/loop9", str(d / "loop9"), type="c"), "is type 'b'"),
    ],
)
def test_bad_device_nodes_name_the_device_and_the_problem(dev, make, message):
    with pytest.raises(InvalidArgument, match=message) as exc:
        check_edits("vendor.com/gpu=7", ContainerEdits(device_nodes=(make(dev),)))
    assert "CDI device vendor.com/gpu=7" in str(exc.value)


def test_mounts_and_hooks_are_checked(tmp_path):
    lib = tmp_path / "lib.so"
    lib.write_text("")
    hook = tmp_path / "hook"
    hook.write_text("#!/bin/sh\n")
    hook.chmod(0o755)
    ok = ContainerEdits(
        mounts=(
            Mount(str(lib), "/usr/lib/lib.so", ("ro", "bind")),
            Mount("tmpfs", "/t", (), "tmpfs"),
        ),
        hooks=(Hook("createContainer", str(hook)),),
    )
    assert check_edits("x", ok) == ok
    cases = [
        (
            ContainerEdits(mounts=(Mount(str(lib), "usr/lib.so"),)),
            "container path must be absolute",
        ),
        (ContainerEdits(mounts=(Mount("lib.so", "/lib.so", ("bind",)),)), "must be absolute"),
        (ContainerEdits(mounts=(Mount(str(tmp_path / "no"), "/x"),)), "does not exist"),
        (ContainerEdits(hooks=(Hook("poststop", "hook"),)), "hook path must be absolute"),
        (ContainerEdits(hooks=(Hook("poststop", str(tmp_path / "nope")),)), "does not exist"),
        (ContainerEdits(hooks=(Hook("poststop", str(lib)),)), "not executable"),
    ]
    for edits, message in cases:
        with pytest.raises(InvalidArgument, match=message):
            check_edits("vendor.com/x=1", edits)


def test_apply_to_the_pods_spec(tmp_path, dev):
    spec = pod_spec(tmp_path, uid=1000, gid=2000)
    lib = tmp_path / "libcuda.so.550"
    lib.write_text("")
    edits = check_edits(
        "nvidia.com/gpu=1",
        ContainerEdits(
            env=("NVIDIA_VISIBLE_DEVICES=void", "NEW=1"),
            device_nodes=(
                node(dev, "nvidiactl"),
                node(dev, "nvidia1", permissions="rw"),
                node(dev, "nvidia-uvm", uid=0, gid=0),
            ),
            mounts=(
                Mount(
                    str(lib), "/usr/lib/x86_64-linux-gnu/libcuda.so.550", ("ro", "nosuid", "bind")
                ),
                Mount(str(tmp_path), "/etc/hosts", ("ro", "bind")),  # replaces the pod's
            ),
            hooks=tuple(
                Hook(name, "/bin/true", ("true", name), ("X=1",), 3)
                for name in (
                    "prestart",
                    "createRuntime",
                    "createContainer",
                    "startContainer",
                    "poststart",
                    "poststop",
                )
            ),
            additional_gids=(44, 0, 44),
            intel_rdt=IntelRdt(clos_id="gold", l3_cache_schema="L3:0=f"),
            net_devices=(NetDevice("eth1", "net1"),),
        ),
    )
    apply_edits(spec, edits)
    env = spec["process"]["env"]
    assert "NVIDIA_VISIBLE_DEVICES=void" in env and "NVIDIA_VISIBLE_DEVICES=all" not in env
    assert env.count("NEW=1") == 1 and "A=image" in env
    devices = {d["path"]: d for d in spec["linux"]["devices"]}
    assert devices["/dev/nvidia1"] == {
        "path": "/dev/nvidia1",
        "type": "c",
        "major": 195,
        "minor": 1,
        "fileMode": 0o666,
        "uid": 1000,
        "gid": 2000,
    }
    assert (devices["/dev/nvidia-uvm"]["uid"], devices["/dev/nvidia-uvm"]["gid"]) == (0, 0)
    rules = spec["linux"]["resources"]["devices"]
    assert rules[0] == {"allow": False, "access": "rwm"}  # the pod's deny-all stays first
    assert {"allow": True, "type": "c", "major": 195, "minor": 1, "access": "rw"} in rules
    assert {"allow": True, "type": "c", "major": 195, "minor": 255, "access": "rwm"} in rules
    assert {"allow": True, "type": "c", "major": UVM, "minor": 0, "access": "rwm"} in rules
    mounts = spec["mounts"]
    hosts = [m for m in mounts if m["destination"] == "/etc/hosts"]
    assert hosts == [
        {
            "destination": "/etc/hosts",
            "type": "bind",
            "source": str(tmp_path),
            "options": ["ro", "bind"],
        }
    ]
    depths = [len(m["destination"].strip("/").split("/")) for m in mounts]
    assert depths == sorted(depths)  # parents before children
    assert mounts[-1]["destination"] == "/usr/lib/x86_64-linux-gnu/libcuda.so.550"
    for name in (
        "prestart",
        "createRuntime",
        "createContainer",
        "startContainer",
        "poststart",
        "poststop",
    ):
        assert spec["hooks"][name] == [
            {"path": "/bin/true", "args": ["true", name], "env": ["X=1"], "timeout": 3}
        ]
    assert spec["process"]["user"]["additionalGids"] == [44]
    assert spec["linux"]["intelRdt"] == {"closID": "gold", "l3CacheSchema": "L3:0=f"}
    assert spec["linux"]["netDevices"] == {"eth1": {"name": "net1"}}


def test_apply_replaces_a_device_at_the_same_path_and_appends_hooks(tmp_path, dev):
    spec = pod_spec(tmp_path)
    first = check_edits("x", ContainerEdits(device_nodes=(node(dev, "nvidia0"),)))
    again = check_edits(
        "x",
        ContainerEdits(
            device_nodes=(DeviceNode("/dev/nvidia0", str(dev / "nvidia1")),),
            hooks=(Hook("poststop", "/bin/true"),),
        ),
    )
    apply_edits(spec, first)
    apply_edits(spec, again)
    assert next(d for d in spec["linux"]["devices"] if d["path"] == "/dev/nvidia0")["minor"] == 1
    assert "uid" not in spec["linux"]["devices"][0]  # root: no owner written
    apply_edits(spec, ContainerEdits(hooks=(Hook("poststop", "/bin/false"),)))
    assert [h["path"] for h in spec["hooks"]["poststop"]] == ["/bin/true", "/bin/false"]


def test_apply_to_an_empty_spec_creates_what_it_needs(dev):
    spec: dict[str, Any] = {}
    apply_edits(
        spec,
        check_edits(
            "x",
            ContainerEdits(
                env=("A=1",),
                device_nodes=(node(dev, "fifo"),),
                additional_gids=(5,),
            ),
        ),
    )
    assert spec["process"]["env"] == ["A=1"]
    mode = stat.S_IMODE(os.stat(dev / "fifo").st_mode)
    assert spec["linux"]["devices"][0] == {"path": "/dev/fifo", "type": "p", "fileMode": mode}
    assert spec["linux"]["resources"]["devices"] == []  # no cgroup rule for a fifo
    assert spec["process"]["user"]["additionalGids"] == [5]
