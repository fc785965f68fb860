"""Hash-pinned PyPI wheels: fetched once into a cache, installed without pip's resolver.

Owns reading a ``requirements.lock`` (``name==version --hash=sha256:…`` lines), fetching
each wheel for the image's platform (CPython 3.11, manylinux x86_64) with
``pip download --require-hashes --no-deps``, and installing wheels into a directory with
``pip install --target --no-deps --no-index``. A wheel already in the cache with a
pinned hash is used without asking PyPI, so a rebuild needs no network.

Must not import ``oci`` or ``rootfs``.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Pin", "fetch", "install", "read_lock"]

PLATFORM = ("--platform", "manylinux_2_17_x86_64", "--implementation", "cp")
TIMEOUT = 900.0
_LINE = re.compile(r"^([A-Za-z0-9._-]+)==([^\s]+)((?:\s+--hash=sha256:[0-9a-f]{64})+)\s*$")


@dataclass(frozen=True)
class Pin:
    name: str
    version: str
    hashes: tuple[str, ...]


def read_lock(path: str) -> list[Pin]:
    pins = []
    with open(path) as f:
        for number, raw in enumerate(f, 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            match = _LINE.match(line)
            if match is None:
                raise ValueError(f"{path}:{number}: expected 'name==version --hash=sha256:…'")
            hashes = tuple(re.findall(r"sha256:([0-9a-f]{64})", match.group(3)))
            pins.append(Pin(match.group(1), match.group(2), hashes))
    return pins


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def _cached(pin: Pin, directory: str) -> str | None:
    prefix = f"{_normalized(pin.name)}-{pin.version}-"
    for name in sorted(os.listdir(directory)):
        if name.lower().startswith(prefix) and name.endswith(".whl"):
            path = os.path.join(directory, name)
            if _sha256(path) in pin.hashes:
                return path
    return None


def fetch(lock: str, cache_dir: str, python_version: str = "3.11") -> list[str]:
    """The wheel files of ``lock``, downloaded into ``cache_dir`` where missing."""
    os.makedirs(cache_dir, exist_ok=True)
    pins = read_lock(lock)
    if any(_cached(pin, cache_dir) is None for pin in pins):
        argv = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
            "--only-binary=:all:",
            "--require-hashes",
            *PLATFORM,
            "--python-version",
            python_version,
            "-d",
            cache_dir,
            "-r",
            lock,
        ]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT)
        if result.returncode != 0:
            raise RuntimeError(f"pip download -r {lock} failed:\n{result.stderr[-4000:]}")
    paths = []
    for pin in pins:
        path = _cached(pin, cache_dir)
        if path is None:
            raise RuntimeError(f"{pin.name}=={pin.version}: no wheel with a pinned hash")
        paths.append(path)
    return paths


def install(wheels: Sequence[str], target: str) -> None:
    """Unpack ``wheels`` into ``target`` (a site-packages directory), nothing else."""
    if not wheels:
        return
    os.makedirs(target, exist_ok=True)
    argv = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--no-deps",
        "--no-index",
        "--no-compile",
        "--target",
        target,
        *wheels,
    ]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT)
    if result.returncode != 0:
        raise RuntimeError(f"pip install --target {target} failed:\n{result.stderr[-4000:]}")
