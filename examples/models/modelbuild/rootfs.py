"""Debian root filesystems for the images, bootstrapped with mmdebstrap and cached.

Owns two cached trees and their layer tars:

- the **base**: ``mmdebstrap --variant=essential`` plus ``python3`` (no apt, no docs, no
  man pages, no locales), shared by every example, written whole as the base layer;
- the **full** tree of one example: the same bootstrap plus its Debian packages and its
  hash-pinned wheels (installed into ``/usr/local/lib/python3.X/dist-packages`` and
  byte-compiled in the tree with the image's own Python, as unchecked-hash .pyc so they
  do not depend on mtimes), whose difference from the base is the dependencies layer.

Each is keyed by a hash of everything that goes into it (suite, mirror, package lists,
dpkg filters, the lock file, the epoch, this module's version): a rebuild with the same
inputs reuses the cache and takes seconds; a new input builds afresh. Builds run under a
lock per cache, into a temp dir renamed into place, so a crash leaves nothing half-made.
Needs root (mmdebstrap's root mode). Must not import ``oci``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from modelbuild import tree, wheels

__all__ = ["DEFAULT_CACHE", "Rootfs", "RootfsSpec", "build_rootfs"]

#: Bump when a change here changes what the trees hold.
BUILDER_VERSION = "1"
DEFAULT_CACHE = os.environ.get("MODEL_BUILD_CACHE", "/var/cache/model-agent-build")
MMDEBSTRAP_TIMEOUT = 1800.0
SUITE_PYTHON = {"bookworm": "3.11", "trixie": "3.13"}
DPKG_FILTERS = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/lintian/*",
)


@dataclass(frozen=True)
class RootfsSpec:
    """What one example's root filesystem holds."""

    packages: tuple[str, ...]
    wheels_lock: str | None = None
    base_packages: tuple[str, ...] = ("python3",)
    suite: str = "bookworm"
    mirror: str = "http://deb.debian.org/debian"

    @property
    def python(self) -> str:
        return SUITE_PYTHON[self.suite]

    @property
    def site_packages(self) -> str:
        return f"usr/local/lib/python{self.python}/dist-packages"


@dataclass(frozen=True)
class Rootfs:
    base_dir: str
    base_tar: str
    full_dir: str
    deps_tar: str
    #: ``name version`` of every Debian package in the full tree, one a line.
    packages: str
    #: What this call built (empty when everything came from the cache) and how long it took.
    built: tuple[str, ...] = ()
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)


def _key(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:20]


@contextlib.contextmanager
def _locked(cache_dir: str) -> Iterator[None]:
    os.makedirs(cache_dir, exist_ok=True)
    with open(os.path.join(cache_dir, ".lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _mmdebstrap(
    spec: RootfsSpec, packages: Sequence[str], out_dir: str, epoch: int, hooks: Sequence[str]
) -> None:
    argv = ["mmdebstrap", "--quiet", "--mode=root", "--variant=essential", "--format=directory"]
    argv += [f"--dpkgopt={rule}" for rule in DPKG_FILTERS]
    argv += [f"--include={','.join(packages)}"]
    argv += [f"--customize-hook={hook}" for hook in hooks]
    argv += [spec.suite, out_dir, spec.mirror]
    env = dict(os.environ, SOURCE_DATE_EPOCH=str(epoch), LC_ALL="C.UTF-8")
    result = subprocess.run(
        argv, capture_output=True, text=True, timeout=MMDEBSTRAP_TIMEOUT, env=env
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"mmdebstrap failed ({result.returncode}):\n{(result.stderr or result.stdout)[-6000:]}"
        )


def _package_list(root: str) -> str:
    result = subprocess.run(
        ["dpkg-query", f"--admindir={root}/var/lib/dpkg", "-W", "-f=${Package} ${Version}\\n"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return "".join(sorted(result.stdout.splitlines(keepends=True)))


def _build_tree(
    cache_dir: str,
    name: str,
    make: Callable[[str], None],
) -> tuple[str, bool]:
    """``cache_dir/name`` (with ``tree/`` inside), made by ``make(tmp)`` if missing."""
    final = os.path.join(cache_dir, name)
    if os.path.exists(os.path.join(final, "done")):
        return final, False
    shutil.rmtree(final, ignore_errors=True)
    tmp = tempfile.mkdtemp(prefix=f".{name}-", dir=cache_dir)
    try:
        make(tmp)
        with open(os.path.join(tmp, "done"), "w") as f:
            f.write(time.strftime("%Y-%m-%dT%H:%M:%SZ\n", time.gmtime()))
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final, True


def build_rootfs(spec: RootfsSpec, cache_dir: str = DEFAULT_CACHE, epoch: int = 0) -> Rootfs:
    """The base and full trees of ``spec`` and their layer tars, from the cache or built."""
    started = time.monotonic()
    cache_dir = os.path.abspath(cache_dir)
    timings: dict[str, float] = {}
    built: list[str] = []
    base_inputs = {
        "builder": BUILDER_VERSION,
        "suite": spec.suite,
        "mirror": spec.mirror,
        "packages": sorted(spec.base_packages),
        "filters": DPKG_FILTERS,
        "epoch": epoch,
    }
    lock_text = ""
    if spec.wheels_lock:
        with open(spec.wheels_lock) as f:
            lock_text = f.read()
    full_inputs = {"base": base_inputs, "packages": sorted(spec.packages), "lock": lock_text}
    with _locked(cache_dir):

        def make_base(tmp: str) -> None:
            t0 = time.monotonic()
            _mmdebstrap(spec, spec.base_packages, os.path.join(tmp, "tree"), epoch, ())
            timings["base_mmdebstrap"] = time.monotonic() - t0
            t0 = time.monotonic()
            root = os.path.join(tmp, "tree")
            tree.write_tar(root, tree.scan(root), os.path.join(tmp, "layer.tar"), epoch=epoch)
            timings["base_tar"] = time.monotonic() - t0

        base, made = _build_tree(cache_dir, f"base-{_key(base_inputs)}", make_base)
        if made:
            built.append("base")

        def make_full(tmp: str) -> None:
            hooks = []
            if spec.wheels_lock:
                t0 = time.monotonic()
                files = wheels.fetch(spec.wheels_lock, os.path.join(cache_dir, "wheels"))
                timings["wheels_fetch"] = time.monotonic() - t0
                staged = os.path.join(tmp, "wheels")
                wheels.install(files, staged)
                site = spec.site_packages
                hooks = [
                    f'mkdir -p "$1/{site}" && cp -a {staged}/. "$1/{site}/"',
                    f'chroot "$1" python3 -m compileall -q -j 0 '
                    f"--invalidation-mode unchecked-hash /{site}",
                ]
            t0 = time.monotonic()
            root = os.path.join(tmp, "tree")
            _mmdebstrap(spec, (*spec.base_packages, *spec.packages), root, epoch, hooks)
            timings["full_mmdebstrap"] = time.monotonic() - t0
            shutil.rmtree(os.path.join(tmp, "wheels"), ignore_errors=True)
            t0 = time.monotonic()
            base_root = os.path.join(base, "tree")
            changed, removed = tree.diff_paths(
                base_root, tree.scan(base_root), root, tree.scan(root)
            )
            tree.write_tar(
                root, changed, os.path.join(tmp, "layer.tar"), epoch=epoch, whiteouts=removed
            )
            with open(os.path.join(tmp, "packages.txt"), "w") as f:
                f.write(_package_list(root))
            timings["deps_tar"] = time.monotonic() - t0

        full, made = _build_tree(cache_dir, f"full-{_key(full_inputs)}", make_full)
        if made:
            built.append("deps")
    with open(os.path.join(full, "packages.txt")) as f:
        packages = f.read()
    return Rootfs(
        base_dir=os.path.join(base, "tree"),
        base_tar=os.path.join(base, "layer.tar"),
        full_dir=os.path.join(full, "tree"),
        deps_tar=os.path.join(full, "layer.tar"),
        packages=packages,
        built=tuple(built),
        seconds=time.monotonic() - started,
        timings=timings,
    )
