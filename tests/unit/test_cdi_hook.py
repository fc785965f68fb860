"""The update-ldcache hook program, run as runc runs it: a process with the state on stdin.

The container root is a plain directory with fake driver libraries in it (runc
would have bind-mounted them); the real ldconfig writes its cache there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from agent.gpu.cdi.ldcache import read_ld_so_cache
from tests.support.fake_driver import DRIVER_VERSION, make_shared_object

LIB = "/usr/local/nvidia/lib64"
V = DRIVER_VERSION


def make_bundle(
    tmp_path, *, conf_d: bool = True, etc: bool = True, relative: bool = True
) -> tuple[str, str]:
    bundle = tmp_path / "bundle"
    rootfs = bundle / "rootfs"
    (rootfs / LIB.lstrip("/")).mkdir(parents=True)
    for base in ("libcuda", "libnvidia-ml"):
        make_shared_object(str(rootfs / LIB.lstrip("/") / f"{base}.so.{V}"), f"{base}.so.1")
    if etc:
        (rootfs / "etc").mkdir()
        (rootfs / "etc" / "ld.so.conf").write_text("include /etc/ld.so.conf.d/*.conf\n")
        if conf_d:
            (rootfs / "etc" / "ld.so.conf.d").mkdir()
    root_path = "rootfs" if relative else str(rootfs)
    (bundle / "config.json").write_text(json.dumps({"root": {"path": root_path}}))
    return str(bundle), str(rootfs)


def run_hook(bundle: str, *args: str) -> subprocess.CompletedProcess[str]:
    state = {"ociVersion": "1.2.0", "id": "c1", "status": "creating", "pid": 1, "bundle": bundle}
    argv = [
        sys.executable,
        "-I",
        "-m",
        "agent.gpu.cdi.hook",
        "update-ldcache",
        "--ldconfig-path",
        "/sbin/ldconfig",
        *args,
    ]
    return subprocess.run(
        argv, input=json.dumps(state), capture_output=True, text=True, timeout=60, cwd="/"
    )


def test_the_hook_writes_the_containers_ld_cache_links_and_conf(tmp_path):
    bundle, rootfs = make_bundle(tmp_path)
    start = time.monotonic()
    done = run_hook(bundle, "--folder", LIB, "--link", f"libcuda.so.1::{LIB}/libcuda.so")
    elapsed = time.monotonic() - start
    assert done.returncode == 0, done.stderr
    lib = os.path.join(rootfs, LIB.lstrip("/"))
    assert os.readlink(os.path.join(lib, "libcuda.so.1")) == f"libcuda.so.{V}"  # by ldconfig
    assert os.readlink(os.path.join(lib, "libcuda.so")) == "libcuda.so.1"  # by --link
    conf = os.path.join(rootfs, "etc/ld.so.conf.d/00-model-agent-cdi.conf")
    with open(conf) as f:
        assert f.read() == f"{LIB}\n"
    assert os.stat(conf).st_mode & 0o777 == 0o644
    entries = {e.name: e.path for e in read_ld_so_cache(os.path.join(rootfs, "etc/ld.so.cache"))}
    assert entries["libcuda.so.1"] == f"{LIB}/libcuda.so.1"  # container paths, not host ones
    assert entries["libnvidia-ml.so.1"] == f"{LIB}/libnvidia-ml.so.1"
    assert elapsed < 5, f"the hook took {elapsed:.2f}s"


def test_an_image_without_ld_so_conf_d_gets_the_folders_on_the_command_line(tmp_path):
    bundle, rootfs = make_bundle(tmp_path, conf_d=False, relative=False)
    done = run_hook(bundle, "--folder", LIB)
    assert done.returncode == 0, done.stderr
    entries = {e.name for e in read_ld_so_cache(os.path.join(rootfs, "etc/ld.so.cache"))}
    assert "libcuda.so.1" in entries
    assert not os.path.exists(os.path.join(rootfs, "etc/ld.so.conf.d"))


def test_an_image_without_etc_gets_links_only(tmp_path):
    bundle, rootfs = make_bundle(tmp_path, etc=False)
    done = run_hook(bundle, "--folder", LIB)
    assert done.returncode == 0, done.stderr
    assert os.path.islink(os.path.join(rootfs, LIB.lstrip("/"), "libcuda.so.1"))
    assert not os.path.exists(os.path.join(rootfs, "etc"))


def test_an_existing_file_at_a_link_path_is_left_alone(tmp_path):
    bundle, rootfs = make_bundle(tmp_path)
    mine = os.path.join(rootfs, LIB.lstrip("/"), "libcuda.so")
    with open(mine, "w") as f:
        f.write("the image's own")
    assert (
        run_hook(bundle, "--folder", LIB, "--link", f"libcuda.so.1::{LIB}/libcuda.so").returncode
        == 0
    )
    with open(mine) as f:
        assert f.read() == "the image's own"


def test_symlinks_in_the_image_cannot_lead_writes_outside(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    bundle, rootfs = make_bundle(tmp_path, conf_d=False)
    os.symlink(str(outside), os.path.join(rootfs, "etc/ld.so.conf.d"))  # absolute: the host's
    os.symlink(str(outside), os.path.join(rootfs, "evil"))
    done = run_hook(bundle, "--folder", LIB, "--link", "x::/evil/link")
    assert done.returncode == 0, done.stderr
    assert os.listdir(outside) == []  # resolved inside the root instead
    assert os.path.islink(os.path.join(rootfs, str(outside).lstrip("/"), "link"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--folder", "relative/lib"], "must be an absolute path"),
        (["--ldconfig-path", "/nonexistent/ldconfig"], "is not an executable file"),
        (["--link", "no-separator"], "expected TARGET::/ABSOLUTE/PATH"),
    ],
)
def test_bad_arguments_fail_with_a_reason(tmp_path, args, message):
    bundle, _ = make_bundle(tmp_path)
    done = run_hook(bundle, *args)
    assert done.returncode == 1 and message in done.stderr


def test_the_hosts_root_is_refused(tmp_path):
    bundle = tmp_path / "b"
    bundle.mkdir()
    (bundle / "config.json").write_text(json.dumps({"root": {"path": "/"}}))
    done = run_hook(str(bundle), "--folder", LIB)
    assert done.returncode == 1 and "refusing" in done.stderr


def test_an_unreadable_bundle_is_an_error(tmp_path):
    done = run_hook(str(tmp_path / "missing"), "--folder", LIB)
    assert done.returncode == 1 and "cannot read the container spec" in done.stderr
