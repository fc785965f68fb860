"""Driver discovery through the ld cache, and the node's own CDI spec, from fake .so files."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from agent.gpu.cdi.driver import (
    DriverLayout,
    capability_of,
    discover,
    find_library,
    restrict_mounts,
)
from agent.gpu.cdi.ldcache import parse_ld_so_cache, parse_ldconfig_p, read_ld_so_cache
from agent.gpu.cdi.nodespec import (
    GENERATED_BY,
    NodeSpecOptions,
    build_node_spec,
    node_spec_path,
    write_node_spec,
)
from agent.gpu.cdi.spec import Mount, minimum_version, parse_spec
from agent.gpu.inventory import Inventory
from agent.gpu.simulated import SimulatedBackend
from tests.support.fake_driver import DRIVER_VERSION, install_driver, make_shared_object
from tests.support.gpu_node import GPU0, GPU1, MIG0, make_gpu_node

V = DRIVER_VERSION


def inventory(node) -> Inventory:
    backend = SimulatedBackend(node.sim_file)
    backend.open()
    return Inventory.read(backend)


# -- the ld cache ------------------------------------------------------------


def test_the_cache_ldconfig_writes_reads_like_ldconfig_p(tmp_path):
    driver = install_driver(str(tmp_path / "root"))
    entries = read_ld_so_cache(driver.ld_cache)
    names = {e.name: e.path for e in entries}
    assert names["libcuda.so.1"] == "/usr/lib/x86_64-linux-gnu/libcuda.so.1"
    assert names[f"libnvidia-eglcore.so.{V}"].endswith(f"libnvidia-eglcore.so.{V}")
    listed = subprocess.run(
        ["ldconfig", "-p", "-C", driver.ld_cache], capture_output=True, text=True, check=True
    ).stdout
    assert {(e.name, e.path) for e in parse_ldconfig_p(listed)} == {
        (e.name, e.path) for e in entries
    }


@pytest.mark.parametrize("fmt", ["compat", "old"])
def test_older_cache_formats(tmp_path, fmt):
    lib = tmp_path / "lib"
    lib.mkdir()
    make_shared_object(str(lib / "libfoo.so.1.2"), "libfoo.so.1")
    os.symlink("libfoo.so.1.2", lib / "libfoo.so.1")
    cache = tmp_path / "ld.so.cache"
    done = subprocess.run(  # -X: never touch links in the host's library dirs
        ["ldconfig", "-X", "-c", fmt, "-C", str(cache), "-f", "/dev/null", str(lib)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0 or not cache.exists():
        pytest.skip(f"this ldconfig cannot write the {fmt} format: {done.stderr.strip()}")
    entries = read_ld_so_cache(str(cache))
    assert ("libfoo.so.1", str(lib / "libfoo.so.1")) in {(e.name, e.path) for e in entries}


def test_garbage_is_not_a_cache():
    with pytest.raises(ValueError, match=r"not an ld\.so\.cache"):
        parse_ld_so_cache(b"hello world" * 10)


# -- discovery ---------------------------------------------------------------


def test_discovery_through_the_drivers_own_cache(tmp_path):
    driver = install_driver(str(tmp_path / "root"))
    files = discover(DriverLayout(driver_root=driver.root), V)
    assert files.problems == ()
    libs = {f.name: f for f in files.of("library")}
    cuda = libs["libcuda"]
    assert cuda.host_path == os.path.join(driver.lib_dir, f"libcuda.so.{V}")  # the real file
    assert cuda.container_path == f"/usr/lib/x86_64-linux-gnu/libcuda.so.{V}"
    assert (cuda.capability, libs["libnvidia-ml"].capability) == ("compute", "utility")
    assert libs["libnvidia-encode"].capability == "video"
    assert libs["libnvidia-eglcore"].capability == "graphics"
    bins = {f.name: f for f in files.of("binary")}
    assert bins["nvidia-smi"].container_path == "/usr/bin/nvidia-smi"
    assert set(bins) == {"nvidia-smi", "nvidia-debugdump", "nvidia-persistenced"}


def test_discovery_without_a_cache_searches_the_library_dirs(tmp_path):
    """The layout of the lent GPU machine: /usr/local/nvidia/{lib64,bin}, no ld cache."""
    root = str(tmp_path / "usr-local-nvidia")
    install_driver(root, lib_subdir="lib64", bin_subdir="bin", cache=False)
    mirrored = discover(
        DriverLayout(driver_root=root, container_driver_root="/usr/local/nvidia"), V
    )
    assert mirrored.problems == ()
    cuda = mirrored.library("libcuda")
    assert cuda is not None and cuda.host_path == f"{root}/lib64/libcuda.so.{V}"
    assert cuda.container_path == f"/usr/local/nvidia/lib64/libcuda.so.{V}"
    smi = next(f for f in mirrored.of("binary") if f.name == "nvidia-smi")
    assert smi.container_path == "/usr/local/nvidia/bin/nvidia-smi"
    stripped = discover(DriverLayout(driver_root=root), V)
    stripped_cuda = stripped.library("libcuda")
    assert stripped_cuda is not None and stripped_cuda.container_path == f"/lib64/libcuda.so.{V}"
    assert find_library(DriverLayout(driver_root=root), "libnvidia-ml") == (
        f"{root}/lib64/libnvidia-ml.so.{V}"
    )


def test_configured_library_dirs_and_cache(tmp_path):
    driver = install_driver(str(tmp_path / "root"))
    layout = DriverLayout(
        driver_root=driver.root, ld_cache=str(tmp_path / "none"), library_dirs=(driver.lib_dir,)
    )
    assert discover(layout, V).library("libcuda") is not None


def test_missing_essential_libraries_are_reported(tmp_path):
    root = tmp_path / "empty"
    root.mkdir()
    files = discover(DriverLayout(driver_root=str(root)), V)
    assert files.files == ()
    assert any("libcuda.so not found" in p for p in files.problems)
    assert any("libnvidia-ml.so not found" in p for p in files.problems)


def test_capability_classes_and_the_mount_filter():
    assert capability_of(f"/usr/lib/libcuda.so.{V}") == "compute"
    assert capability_of("/usr/lib/libnvidia-ml.so.1") == "utility"
    assert capability_of("/usr/bin/nvidia-smi") == "utility"
    assert capability_of(f"/x/libnvcuvid.so.{V}") == "video"
    assert capability_of("/x/libGLX_nvidia.so.0") == "graphics"
    assert capability_of("/x/libfoo.so.1") is None
    mounts = [
        Mount(f"/h/{n}", f"/c/{n}")
        for n in (
            f"libcuda.so.{V}",
            "nvidia-smi",
            f"libnvcuvid.so.{V}",
            "libGLX_nvidia.so.0",
            "socket",
        )
    ]
    kept = [m.container_path for m in restrict_mounts(mounts, ("compute",))]
    assert kept == [f"/c/libcuda.so.{V}", "/c/socket"]
    kept = [m.container_path for m in restrict_mounts(mounts, ("utility", "display"))]
    assert kept == ["/c/nvidia-smi", "/c/libGLX_nvidia.so.0", "/c/socket"]


# -- the node spec -----------------------------------------------------------


def test_the_node_spec_names_every_device_like_nvidia_ctk(tmp_path):
    node = make_gpu_node(str(tmp_path), mig=True)
    files = discover(DriverLayout(driver_root=node.driver.root), V)
    hook = ("/usr/bin/python3", "-m", "agent.gpu.cdi.hook")
    built = build_node_spec(
        inventory(node), files, NodeSpecOptions(dev_root=node.dev_root, hook_command=hook)
    )
    assert built.problems == ()
    spec = built.spec
    assert spec is not None and spec.kind == "nvidia.com/gpu"
    names = [d.name for d in spec.devices]
    assert names == ["0", GPU0, "1", GPU1, "1:0", MIG0, "all"]
    by_name = {d.name: d for d in spec.devices}
    assert [n.path for n in by_name["1"].edits.device_nodes] == ["/dev/nvidia1"]
    assert by_name["1"].edits.device_nodes[0].host_path == f"{node.dev_root}/dev/nvidia1"
    assert [n.path for n in by_name["1:0"].edits.device_nodes] == [
        "/dev/nvidia1",
        "/dev/nvidia-caps/nvidia-cap12",
        "/dev/nvidia-caps/nvidia-cap13",
    ]
    assert len(by_name["all"].edits.device_nodes) == 4
    assert all(n.major == 0 for d in spec.devices for n in d.edits.device_nodes)  # from the host
    edits = spec.edits
    assert [n.path for n in edits.device_nodes] == [
        "/dev/nvidiactl",
        "/dev/nvidia-uvm",
        "/dev/nvidia-uvm-tools",
        "/dev/nvidia-modeset",
    ]
    assert edits.env == ("NVIDIA_VISIBLE_DEVICES=void",)
    assert all(m.options == ("ro", "nosuid", "nodev", "bind") for m in edits.mounts)
    assert f"/usr/lib/x86_64-linux-gnu/libcuda.so.{V}" in {m.container_path for m in edits.mounts}
    assert "/usr/bin/nvidia-smi" in {m.container_path for m in edits.mounts}
    (h,) = edits.hooks
    assert (h.hook_name, h.path, h.timeout) == ("createContainer", "/usr/bin/python3", 30)
    assert h.args == (
        *hook,
        "update-ldcache",
        "--ldconfig-path",
        "/sbin/ldconfig",
        "--folder",
        "/usr/lib/x86_64-linux-gnu",
        "--link",
        "libcuda.so.1::/usr/lib/x86_64-linux-gnu/libcuda.so",
    )
    assert spec.annotations[GENERATED_BY] == "model-agent"
    assert spec.annotations["model-agent.io/driver-version"] == V
    assert minimum_version(spec) == "0.6.0" == spec.version


def test_the_written_file_is_a_valid_cdi_spec_rewritten_only_on_change(tmp_path):
    node = make_gpu_node(str(tmp_path))
    files = discover(DriverLayout(driver_root=node.driver.root), V)
    built = build_node_spec(inventory(node), files, NodeSpecOptions(dev_root=node.dev_root))
    path, changed = write_node_spec(node.run_cdi, "nvidia.com/gpu", built)
    assert changed and path == node_spec_path(node.run_cdi, "nvidia.com/gpu")
    assert path.endswith("model-agent-nvidia.com-gpu.json")
    with open(path, "rb") as f:
        assert parse_spec(f.read(), path) == built.spec  # round trip through the parser
    mtime = os.stat(path).st_mtime_ns
    assert write_node_spec(node.run_cdi, "nvidia.com/gpu", built) == (path, False)
    assert os.stat(path).st_mtime_ns == mtime
    assert not [n for n in os.listdir(node.run_cdi) if n.startswith(".")]  # no temp left


def test_missing_device_nodes_leave_devices_out_with_reasons(tmp_path):
    node = make_gpu_node(str(tmp_path), mig=True)
    os.unlink(f"{node.dev_root}/dev/nvidia-caps/nvidia-cap13")
    os.unlink(f"{node.dev_root}/dev/nvidia0")
    os.unlink(f"{node.dev_root}/dev/nvidiactl")
    files = discover(DriverLayout(driver_root=node.driver.root), V)
    built = build_node_spec(inventory(node), files, NodeSpecOptions(dev_root=node.dev_root))
    assert built.spec is not None
    assert [d.name for d in built.spec.devices] == ["1", GPU1, "all"]
    text = "\n".join(built.problems)
    assert f"GPU 0 ({GPU0}): {node.dev_root}/dev/nvidia0 does not exist" in text
    assert "MIG device 1:0" in text and "nvidia-cap13 does not exist" in text
    assert "nvidiactl does not exist" in text


def test_no_usable_gpu_means_no_spec_and_the_old_file_goes(tmp_path):
    node = make_gpu_node(str(tmp_path))
    files = discover(DriverLayout(driver_root=node.driver.root), V)
    good = build_node_spec(inventory(node), files, NodeSpecOptions(dev_root=node.dev_root))
    path, _ = write_node_spec(node.run_cdi, "nvidia.com/gpu", good)
    empty = build_node_spec(Inventory(inventory(node).status), files, NodeSpecOptions())
    assert empty.spec is None
    assert write_node_spec(node.run_cdi, "nvidia.com/gpu", empty) == (path, True)
    assert not os.path.exists(path)
    assert write_node_spec(node.run_cdi, "nvidia.com/gpu", empty) == (path, False)


def test_a_configurable_kind(tmp_path):
    node = make_gpu_node(str(tmp_path))
    files = discover(DriverLayout(driver_root=node.driver.root), V)
    built = build_node_spec(
        inventory(node), files, NodeSpecOptions(kind="example.com/accel", dev_root=node.dev_root)
    )
    path, _ = write_node_spec(node.run_cdi, "example.com/accel", built)
    with open(path) as f:
        assert json.load(f)["kind"] == "example.com/accel"
