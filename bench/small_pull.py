#!/usr/bin/env python3
"""Benchmark: pulling small images, against the floor of the same work in this process.

    .venv/bin/python bench/small_pull.py [--images 20] [--mb 1] [--files 1]

Pushes ``--images`` distinct single-layer images (``--files`` files of random
bytes adding up to ``--mb`` MB, gzip) to a local docker-registry and pulls
each once through a real ``model-agent serve`` (``PullImage``; distinct images,
so every pull fetches and unpacks its layer). In the same run, as references:

* null RPC:  ``Version`` over the same socket (what any RPC costs);
* floor:     the manifest, config and blob fetched with ``urllib`` from the same
             registry, the blob decompressed with isal and extracted with
             ``tarfile`` into a fresh directory, in this process: the work no
             puller can skip (without verification or crash safety).

Prints medians; the machine is shared, so run-to-run noise is large.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import random
import shutil
import statistics
import sys
import tarfile
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from agent.api.cri.runtime.v1 import api_pb2 as pb  # noqa: E402
from agent.ctl.client import CriClient  # noqa: E402
from tests.support.agent import AgentProcess  # noqa: E402
from tests.support.images import Image, build_image  # noqa: E402
from tests.support.layers import File, layer  # noqa: E402
from tests.support.push import RegistryClient  # noqa: E402
from tests.support.registry import Registry  # noqa: E402


def make_image(seed: int, total: int, files: int) -> Image:
    rng = random.Random(seed)
    each = max(1, total // files)
    return build_image([layer([File(f"data/f{i}", rng.randbytes(each)) for i in range(files)])])


def floor_once(registry: Registry, name: str, image: Image, scratch: str) -> float:
    from isal import igzip

    started = time.perf_counter()
    base = f"{registry.url}/v2/{name}"
    accept = {"Accept": image.media_type}
    with urllib.request.urlopen(urllib.request.Request(f"{base}/manifests/latest", headers=accept)):
        pass
    with urllib.request.urlopen(f"{base}/blobs/{image.config_digest}") as resp:
        resp.read()
    with urllib.request.urlopen(f"{base}/blobs/{image.layers[0].digest}") as resp:
        blob = resp.read()
    target = tempfile.mkdtemp(dir=scratch)
    with tarfile.open(fileobj=io.BytesIO(igzip.decompress(blob))) as tar:
        tar.extractall(target, filter="fully_trusted")
    return time.perf_counter() - started


async def agent_pulls(socket: str, refs: list[str]) -> tuple[list[float], list[float]]:
    pulls, nulls = [], []
    async with CriClient(socket, timeout=120) as cri:
        for _ in range(20):
            started = time.perf_counter()
            await cri.runtime.Version(pb.VersionRequest())
            nulls.append(time.perf_counter() - started)
        for ref in refs:
            await asyncio.sleep(0.05)  # let the previous pull's background work settle
            started = time.perf_counter()
            await cri.images.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=ref)))
            pulls.append(time.perf_counter() - started)
    return pulls, nulls


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--mb", type=float, default=1.0)
    parser.add_argument("--files", type=int, default=1)
    parser.add_argument("--config", default="", help="extra TOML for the agent")
    args = parser.parse_args()
    base = tempfile.mkdtemp(prefix="ma-bench-small-", dir="/tmp")
    try:
        with Registry(os.path.join(base, "registry")) as registry:
            pusher = RegistryClient(registry.url)
            images = [make_image(i, int(args.mb * 1e6), args.files) for i in range(args.images)]
            names = [f"bench/small{i}" for i in range(args.images)]
            for name, image in zip(names, images, strict=True):
                pusher.push_image(name, image)
            scratch = os.path.join(base, "floor")
            os.makedirs(scratch)
            floors = [
                floor_once(registry, n, i, scratch) for n, i in zip(names, images, strict=True)
            ]
            agent_dir = os.path.join(base, "agent")
            os.makedirs(agent_dir)
            with AgentProcess(agent_dir, args.config) as agent:
                refs = [f"{registry.host}/{n}:latest" for n in names]
                pulls, nulls = asyncio.run(agent_pulls(agent.socket, refs))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    size = images[0].layers[0].size
    pull_ms = statistics.median(pulls) * 1e3
    floor_ms = statistics.median(floors) * 1e3
    null_ms = statistics.median(nulls) * 1e3
    print(f"{args.images} images, one {size / 1e6:.2f} MB layer of {args.files} file(s) each")
    print(f"  PullImage   median {pull_ms:7.1f} ms  (p90 {_p(pulls, 0.9) * 1e3:.1f} ms)")
    print(f"  floor       median {floor_ms:7.1f} ms  (fetch + decompress + extract here)")
    print(f"  null RPC    median {null_ms:7.2f} ms  (Version)")
    print(f"  PullImage / floor = {pull_ms / floor_ms:.1f}x   (target: PullImage <= 50 ms)")
    return 0


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


if __name__ == "__main__":
    raise SystemExit(main())
