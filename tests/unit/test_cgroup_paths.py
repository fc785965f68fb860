"""Where a container's and a pod's cgroups are, under both cgroup drivers, and the
kubelet's ``cgroup_parent`` as the request validator takes it.

The systemd driver is what the node install picks wherever systemd is PID 1: runc gets
``slice:prefix:name`` and creates ``prefix-name.scope`` in that slice; the agent reads
stats from the cgroupfs path systemd gives the scope (each ``-`` of a slice name a level).
"""

from __future__ import annotations

import pytest

from agent.api.cri.runtime.v1 import api_pb2 as pb
from agent.cri.convert.sandboxes import sandbox_config_from_pb
from agent.cri.validate import cgroup_parent
from agent.errors import InvalidArgument
from agent.pods import cgroups
from agent.pods.spec import cgroups_path
from agent.pods.stats import pod_cgroup_path

POD_SLICE = "kubepods-burstable-pod1234.slice"
POD_SLICE_DIRS = "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234.slice"


def test_cgroupfs_puts_the_container_under_the_kubelets_parent_or_the_default():
    assert cgroups_path("cgroupfs", "/kubepods/burstable/pod1234", "c1") == (
        "/kubepods/burstable/pod1234/c1"
    )
    assert cgroups_path("cgroupfs", "kubepods/pod1/", "c1") == "/kubepods/pod1/c1"
    assert cgroups_path("cgroupfs", "", "c1", default_parent="/ma-test") == "/ma-test/c1"


def test_systemd_gives_runc_slice_prefix_and_name():
    assert cgroups_path("systemd", POD_SLICE, "c1") == f"{POD_SLICE}:model-agent:c1"
    # The kubelet may send the slice as the full path; runc wants its name.
    assert cgroups_path("systemd", POD_SLICE_DIRS, "c1") == f"{POD_SLICE}:model-agent:c1"
    # No parent (a client other than the kubelet): runc's own default slice.
    assert cgroups_path("systemd", "", "c1") == "system.slice:model-agent:c1"


def test_a_systemd_cgroups_path_expands_to_the_scope_systemd_creates(tmp_path, monkeypatch):
    monkeypatch.setattr(cgroups, "ROOT", str(tmp_path))
    cgroups.unified.cache_clear()
    try:
        dirs = cgroups.cgroup_dirs(f"{POD_SLICE}:model-agent:c1")
        assert dirs["memory"] == f"{tmp_path}/memory{POD_SLICE_DIRS}/model-agent-c1.scope"
        assert set(dirs) == {"cpuacct", "cpu", "memory", "pids", "blkio"}
        root_slice = cgroups.cgroup_dirs("-.slice:model-agent:c1")
        assert root_slice["pids"] == f"{tmp_path}/pids/model-agent-c1.scope"
        (tmp_path / "cgroup.controllers").write_text("cpu memory pids\n")  # a v2 host
        cgroups.unified.cache_clear()
        assert cgroups.cgroup_dirs(f"{POD_SLICE}:model-agent:c1") == {
            "": f"{tmp_path}{POD_SLICE_DIRS}/model-agent-c1.scope"
        }
    finally:
        cgroups.unified.cache_clear()


def test_the_pod_cgroup_of_a_slice_and_of_a_cgroupfs_parent():
    assert pod_cgroup_path(POD_SLICE) == POD_SLICE_DIRS
    assert pod_cgroup_path("/kubepods/burstable/pod1234") == "/kubepods/burstable/pod1234"


@pytest.mark.parametrize("parent", ["", "/kubepods/burstable/pod1234", POD_SLICE, POD_SLICE_DIRS])
def test_the_kubelets_cgroup_parents_are_taken(parent):
    assert cgroup_parent(parent, "f") == parent


@pytest.mark.parametrize(
    "parent", ["/kubepods/../../../etc", "..", "/kubepods/./pod", "a\x00b", "/" + "a" * 4096]
)
def test_a_cgroup_parent_that_could_leave_the_cgroup_root_is_refused(parent):
    with pytest.raises(InvalidArgument):
        cgroup_parent(parent, "f")
    config = pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name="p", uid="u", namespace="n"),
        linux=pb.LinuxPodSandboxConfig(cgroup_parent=parent),
    )
    with pytest.raises(InvalidArgument, match=r"config\.linux\.cgroup_parent"):
        sandbox_config_from_pb(config, "")
