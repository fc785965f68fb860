#!/usr/bin/env python3
"""Benchmark: pull a >3 GB synthetic model image, against a reference and the floor.

    .venv/bin/python bench/pull.py [--runs 3] [--weights-gib 2.75] [--work /var/tmp/ma-bench]

The image (built once, cached in the work dir) is a busybox base layer, three
layers of 6,700 small files each, and one gzip layer of incompressible
weights, pushed to a local docker-registry on 127.0.0.1. Each run measures,
from a cold page cache:

* ours:      ``PullImage`` through a real ``model-agent serve`` process;
* reference: ``skopeo copy`` to a directory, then ``tar -xzf`` per layer, one
             after the other (what a serial puller does);
* floor:     the blobs read from the registry's own disk, decompressed with
             isal and extracted by ``tar``, every layer in parallel: the work
             no puller can avoid.

It prints the median of each and the ratios ours/floor and ours/reference.
``--breakdown`` adds, each from a cold cache too, what a pull does that the
floor does not:

* fetch:     every blob downloaded from the registry with ``curl``, in parallel,
             to /dev/null (the registry's disk reads and the loopback copy);
* verify:    sha256 of every compressed blob and of its decompressed stream, in
             parallel (the two digests a puller must check and the floor skips).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import http.client
import io
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
import urllib.parse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from agent.api.cri.runtime.v1 import api_pb2 as pb  # noqa: E402
from agent.ctl.client import CriClient  # noqa: E402
from tests.support.images import busybox_layer  # noqa: E402
from tests.support.registry import Registry  # noqa: E402

NAME = "bench/model"
SMALL_FILES = 6700


# -- building the image ------------------------------------------------------------


def _gzip_tar_to(path: str, add_members) -> tuple[str, str, int]:
    """Write a gzip'd tar built by ``add_members(tar)``; return (digest, diff_id, size)."""
    from isal import igzip

    class Hashing(io.RawIOBase):
        def __init__(self, raw):
            self.raw, self.digest, self.size = raw, hashlib.sha256(), 0

        def writable(self):
            return True

        def write(self, data):
            self.digest.update(data)
            self.size += len(data)
            return self.raw.write(data)

    with open(path + ".tmp", "wb") as out:
        compressed = Hashing(out)
        with igzip.IGzipFile(fileobj=compressed, mode="wb", compresslevel=1) as gz:
            uncompressed = Hashing(gz)
            with tarfile.open(fileobj=uncompressed, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                add_members(tar)
    os.replace(path + ".tmp", path)
    return (
        "sha256:" + compressed.digest.hexdigest(),
        "sha256:" + uncompressed.digest.hexdigest(),
        compressed.size,
    )


def _small_files(seed: int):
    def add(tar: tarfile.TarFile) -> None:
        rng = random.Random(seed)
        for i in range(SMALL_FILES):
            data = rng.randbytes(rng.randint(512, 16384))
            info = tarfile.TarInfo(f"lib/pkg{seed}/mod{i // 100}/file{i}.py")
            info.size, info.mode, info.mtime = len(data), 0o644, 1_700_000_000
            tar.addfile(info, io.BytesIO(data))

    return add


def _weights(size: int):
    def add(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo("models/weights.safetensors")
        info.size, info.mode, info.mtime = size, 0o644, 1_700_000_000

        class Random(io.RawIOBase):
            left = size

            def readable(self):
                return True

            def readinto(self, buffer):
                n = min(len(buffer), self.left, 8 << 20)
                buffer[:n] = os.urandom(n)
                self.left -= n
                return n

        tar.addfile(info, io.BufferedReader(Random(), 8 << 20))

    return add


def build_image(work: str, weights_bytes: int) -> dict:
    """Build the layers and config once; reuse them on later runs."""
    meta_path = os.path.join(work, "image.json")
    if os.path.exists(meta_path):
        with open(meta_path) as f:
            meta = json.load(f)
        if meta.get("weights_bytes") == weights_bytes:
            return meta
    os.makedirs(work, exist_ok=True)
    layers = []
    base = busybox_layer("gzip")
    base_path = os.path.join(work, "layer-base.tar.gz")
    with open(base_path, "wb") as f:
        f.write(base.blob)
    layers.append(
        {"path": base_path, "digest": base.digest, "diff_id": base.diff_id, "size": base.size}
    )
    for seed in range(3):
        path = os.path.join(work, f"layer-small{seed}.tar.gz")
        print(f"building layer of {SMALL_FILES} small files ({seed + 1}/3)", flush=True)
        digest, diff_id, size = _gzip_tar_to(path, _small_files(seed))
        layers.append({"path": path, "digest": digest, "diff_id": diff_id, "size": size})
    print(f"building the {weights_bytes / 2**30:.2f} GiB weights layer", flush=True)
    path = os.path.join(work, "layer-weights.tar.gz")
    digest, diff_id, size = _gzip_tar_to(path, _weights(weights_bytes))
    layers.append({"path": path, "digest": digest, "diff_id": diff_id, "size": size})
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"]},
            "rootfs": {"type": "layers", "diff_ids": [layer["diff_id"] for layer in layers]},
        }
    ).encode()
    meta = {"weights_bytes": weights_bytes, "layers": layers, "config": config.decode()}
    with open(meta_path, "w") as f:
        json.dump(meta, f)
    return meta


# -- pushing (streamed from files: the weights do not fit comfortably in memory) -------


def _http(url: str, method: str, path: str, body=None, headers=None) -> http.client.HTTPResponse:
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=600)
    conn.request(method, path, body=body, headers=headers or {})
    return conn.getresponse()


def push(registry: Registry, meta: dict) -> str:
    def upload(data_or_path, digest: str, size: int) -> None:
        head = _http(registry.url, "HEAD", f"/v2/{NAME}/blobs/{digest}")
        head.read()
        if head.status == 200:
            return
        start = _http(registry.url, "POST", f"/v2/{NAME}/blobs/uploads/")
        start.read()
        location = urllib.parse.urlsplit(start.headers["Location"])
        query = (location.query + "&" if location.query else "") + f"digest={digest}"
        with contextlib.ExitStack() as stack:
            body = data_or_path
            if isinstance(body, str):
                body = stack.enter_context(open(body, "rb"))  # streamed, not read into memory
            done = _http(
                registry.url,
                "PUT",
                f"{location.path}?{query}",
                body=body,
                headers={"Content-Length": str(size), "Content-Type": "application/octet-stream"},
            )
            done.read()
        if done.status != 201:
            raise RuntimeError(f"upload of {digest} failed: HTTP {done.status}")

    config = meta["config"].encode()
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    for layer in meta["layers"]:
        upload(layer["path"], layer["digest"], layer["size"])
    upload(config, config_digest, len(config))
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": layer["digest"],
                    "size": layer["size"],
                }
                for layer in meta["layers"]
            ],
        }
    ).encode()
    resp = _http(
        registry.url,
        "PUT",
        f"/v2/{NAME}/manifests/latest",
        body=manifest,
        headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
    )
    resp.read()
    if resp.status != 201:
        raise RuntimeError(f"manifest push failed: HTTP {resp.status}")
    return config_digest


# -- the three contenders ---------------------------------------------------------------


def cold_cache() -> None:
    """Drop the page cache before each run, or stop: a warm run is not the measured one."""
    subprocess.run(["sync"], check=True)
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError as exc:
        raise SystemExit(f"cannot drop the page cache (run as root): {exc}") from None


def run_ours(registry: Registry, scratch: str, image_id: str) -> float:
    root, state = os.path.join(scratch, "root"), os.path.join(scratch, "state")
    env = dict(
        os.environ,
        MODEL_AGENT_ROOT_DIR=root,
        MODEL_AGENT_STATE_DIR=state,
        MODEL_AGENT_METRICS_ADDRESS="",
        MODEL_AGENT_CONFIG=os.path.join(scratch, "c.toml"),
    )
    with open(env["MODEL_AGENT_CONFIG"], "w"):
        pass
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "serve"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        proc.stdout.readline()
        socket_path = os.path.join(state, "model-agent.sock")

        async def pull() -> float:
            async with CriClient(socket_path, timeout=None) as cri:
                started = time.monotonic()
                resp = await cri.images.PullImage(
                    pb.PullImageRequest(image=pb.ImageSpec(image=f"{registry.host}/{NAME}"))
                )
                elapsed = time.monotonic() - started
                assert resp.image_ref == image_id, resp.image_ref
                return elapsed

        return asyncio.run(pull())
    finally:
        proc.terminate()
        proc.communicate(timeout=60)


def run_reference(registry: Registry, scratch: str, meta: dict) -> float:
    copy_dir, out = os.path.join(scratch, "skopeo"), os.path.join(scratch, "rootfs")
    started = time.monotonic()
    subprocess.run(
        [
            "skopeo",
            "copy",
            "--src-tls-verify=false",
            "--quiet",
            f"docker://{registry.host}/{NAME}:latest",
            f"dir:{copy_dir}",
        ],
        check=True,
    )
    for i, layer in enumerate(meta["layers"]):
        target = os.path.join(out, str(i))
        os.makedirs(target)
        blob = os.path.join(copy_dir, layer["digest"].split(":", 1)[1])
        subprocess.run(["tar", "-xzf", blob, "-C", target], check=True)
    return time.monotonic() - started


def run_floor(registry: Registry, scratch: str, meta: dict) -> float:
    started = time.monotonic()
    procs = []
    for i, layer in enumerate(meta["layers"]):
        target = os.path.join(scratch, "floor", str(i))
        os.makedirs(target)
        blob = registry.blob_path(layer["digest"])
        procs.append(
            subprocess.Popen(
                f"{sys.executable} -m isal.igzip -d -c {blob} | tar -x -C {target}", shell=True
            )
        )
    for proc in procs:
        if proc.wait() != 0:
            raise RuntimeError("floor extraction failed")
    return time.monotonic() - started


def run_fetch(registry: Registry, scratch: str, meta: dict) -> float:
    started = time.monotonic()
    procs = [
        subprocess.Popen(
            ["curl", "-sf", "-o", "/dev/null", f"{registry.url}/v2/{NAME}/blobs/{layer['digest']}"]
        )
        for layer in meta["layers"]
    ]
    if any(proc.wait() != 0 for proc in procs):
        raise RuntimeError("fetch failed")
    return time.monotonic() - started


_VERIFY = """
import hashlib, sys
from isal import isal_zlib
blob, diff = hashlib.sha256(), hashlib.sha256()
stream = isal_zlib.decompressobj(31)  # gzip
with open(sys.argv[1], "rb") as f:
    while chunk := f.read(4 << 20):
        blob.update(chunk)
        diff.update(stream.decompress(chunk))
diff.update(stream.flush())
"""


def run_verify(registry: Registry, scratch: str, meta: dict) -> float:
    started = time.monotonic()
    procs = [
        subprocess.Popen([sys.executable, "-c", _VERIFY, registry.blob_path(layer["digest"])])
        for layer in meta["layers"]
    ]
    if any(proc.wait() != 0 for proc in procs):
        raise RuntimeError("verify failed")
    return time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--weights-gib", type=float, default=2.75)
    parser.add_argument("--work", default="/var/tmp/model-agent-bench")
    parser.add_argument("--breakdown", action="store_true", help="also time fetch and verify")
    args = parser.parse_args()
    meta = build_image(args.work, int(args.weights_gib * 2**30))
    total = sum(layer["size"] for layer in meta["layers"])
    print(f"image: {len(meta['layers'])} layers, {total / 1e9:.2f} GB compressed", flush=True)
    contenders = ["ours", "reference", "floor"] + (["fetch", "verify"] if args.breakdown else [])
    results: dict[str, list[float]] = {name: [] for name in contenders}
    registry_dir = os.path.join(args.work, "registry")
    shutil.rmtree(registry_dir, ignore_errors=True)
    with Registry(registry_dir) as registry:
        image_id = push(registry, meta)
        for run in range(args.runs):
            order = contenders[run % 3 :] + contenders[: run % 3]  # no one always goes first
            for name in order:
                scratch = os.path.join(args.work, f"scratch-{name}")
                shutil.rmtree(scratch, ignore_errors=True)
                os.makedirs(scratch)
                cold_cache()
                try:
                    if name == "ours":
                        seconds = run_ours(registry, scratch, image_id)
                    elif name == "reference":
                        seconds = run_reference(registry, scratch, meta)
                    elif name == "floor":
                        seconds = run_floor(registry, scratch, meta)
                    elif name == "fetch":
                        seconds = run_fetch(registry, scratch, meta)
                    else:
                        seconds = run_verify(registry, scratch, meta)
                finally:
                    shutil.rmtree(scratch, ignore_errors=True)
                results[name].append(seconds)
                print(f"run {run + 1}: {name:9s} {seconds:7.2f} s", flush=True)
    medians = {name: statistics.median(values) for name, values in results.items()}
    print()
    print(f"median of {args.runs} runs ({total / 1e9:.2f} GB image):")
    for name in contenders:
        rate = total / medians[name] / 1e6
        print(f"  {name:9s} {medians[name]:7.2f} s   ({rate:6.0f} MB/s compressed)")
    print(f"  ours / floor     = {medians['ours'] / medians['floor']:.2f}x  (target <= 1.2)")
    print(f"  ours / reference = {medians['ours'] / medians['reference']:.2f}x  (target < 1)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
