#!/usr/bin/env python3
"""Benchmark: a model server's cold start, from PullImage to the first inference.

    .venv/bin/python bench/coldstart.py [--runs 3] [--weights-gb 2.5] [--work /var/tmp/ma-coldstart]

The minilm-embedding server image (built hermetically, no weights in it) and a ModelPack
artifact of about ``--weights-gb`` of random BERT weights the server really loads
(``modelbuild.synthetic``) are pushed once to a docker-registry on 127.0.0.1 (cached in
the work dir). Each run starts a fresh ``model-agent serve`` (empty image store), drops
the page cache, and times what the kubelet would do for a new pod:

    PullImage(server) || PullImage(artifact)  ->  RunPodSandbox  ->  CreateContainer with
    the artifact as an image volume  ->  StartContainer  ->  readiness (the server reads
    the weights)  ->  the first successful /infer

against the **pull floor** of the same bytes, measured in the same run from a cold cache:
every blob of the image and the artifact fetched from the same registry as parallel
``Range`` parts over as many connections as the agent uses (4, of 64 MiB parts, by
default), written in place into files on the same disk (no fsync; nor does a pull): the
bytes no puller can avoid moving, with no digests, unpacking or container. The ratio
says what the whole path costs on top of moving the bytes. Prints the medians and the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "examples", "models"))

from agent.api.cri.runtime.v1 import api_pb2 as pb  # noqa: E402
from agent.ctl.client import CriClient  # noqa: E402
from tests.support.agent import AgentProcess  # noqa: E402
from tests.support.models import (  # noqa: E402
    build_and_push,
    push_layout,
    write_random_bert_artifact,
)
from tests.support.registry import Registry  # noqa: E402

MODEL = "minilm-embedding"
REQUEST = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["hello"]}]}


def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def blobs_of(registry: Registry, repository: str, tag: str) -> list[tuple[str, int]]:
    """(digest, size) of every blob a pull of ``repository:tag`` downloads."""
    request = urllib.request.Request(
        f"{registry.url}/v2/{repository}/manifests/{tag}",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        manifest = json.load(response)
    return [(x["digest"], x["size"]) for x in [manifest["config"], *manifest["layers"]]]


def prepare(work: str, registry: Registry, weights_gb: float) -> dict[str, object]:
    """Build and push the server image and the big artifact, once (kept in ``work``)."""
    meta_path = os.path.join(work, "pushed.json")
    if os.path.exists(meta_path):
        with open(meta_path) as f:
            meta: dict[str, object] = json.load(f)
        if meta.get("weights_gb") == weights_gb:
            return meta
    print("building the minilm-embedding image (hermetic, cached rootfs)...", flush=True)
    pushed = build_and_push(
        MODEL, registry.url, os.path.join(work, "build"), weights="none", versions=("1",)
    )
    tokenizer = os.path.join(work, "v1-weights", "tokenizer.json")
    from modelbuild.recipes import minilm_v1_weights

    minilm_v1_weights(os.path.dirname(tokenizer))
    print(f"writing a {weights_gb:g} GB random-weights artifact...", flush=True)
    layout = os.path.join(work, "big-artifact")
    shutil.rmtree(layout, ignore_errors=True)
    made = write_random_bert_artifact(layout, tokenizer, total_bytes=int(weights_gb * 1e9))
    push_layout(registry.url, made.layout, made.tag, "bench/minilm-big", "v1")
    meta = {
        "weights_gb": weights_gb,
        "image": pushed.image,
        "image_repository": "examples/" + MODEL,
        "image_tag": "1",
        "artifact": f"{registry.host}/bench/minilm-big:v1",
        "artifact_repository": "bench/minilm-big",
        "artifact_tag": "v1",
        "artifact_bytes": made.total_bytes,
    }
    with open(meta_path, "w") as f:
        json.dump(meta, f)
    return meta


def run_floor(
    registry: Registry, meta: dict[str, object], scratch: str, connections: int, part_mb: int
) -> float:
    """Every blob of the image and the artifact fetched to files the way a fast puller
    fetches them (``Range`` parts of ``part_mb`` over ``connections`` connections at once,
    written in place), from a cold cache, with nothing else: no digests, no unpacking."""
    blobs = [
        (str(meta[f"{kind}_repository"]), digest, size)
        for kind in ("image", "artifact")
        for digest, size in blobs_of(
            registry, str(meta[f"{kind}_repository"]), str(meta[f"{kind}_tag"])
        )
    ]
    os.makedirs(scratch)
    part = part_mb << 20
    parts = []
    files = {}
    for repository, digest, size in blobs:
        path = os.path.join(scratch, digest.split(":")[1])
        files[digest] = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        os.ftruncate(files[digest], size)
        parts += [(repository, digest, start, min(size, start + part)) for start in
                  range(0, size, part)]  # fmt: skip
    netloc = urllib.parse.urlsplit(registry.url).netloc
    local = threading.local()

    def fetch(item: tuple[str, str, int, int]) -> None:
        repository, digest, start, end = item
        if not hasattr(local, "connection"):
            local.connection = http.client.HTTPConnection(netloc, timeout=120)
        connection = local.connection
        connection.request(
            "GET",
            f"/v2/{repository}/blobs/{digest}",
            headers={"Range": f"bytes={start}-{end - 1}"},
        )
        response = connection.getresponse()
        if response.status not in (200, 206):
            raise RuntimeError(f"floor fetch of {digest}: {response.status}")
        position = start
        while chunk := response.read(1 << 20):
            os.pwrite(files[digest], chunk, position)
            position += len(chunk)

    drop_caches()
    started = time.monotonic()
    try:
        with concurrent.futures.ThreadPoolExecutor(connections) as pool:
            list(pool.map(fetch, parts))
    finally:
        for fd in files.values():
            os.close(fd)
    seconds = time.monotonic() - started
    shutil.rmtree(scratch)
    return seconds


def get_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except OSError:
        return 0


def post(url: str, body: object) -> int:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except OSError:
        return 0


async def poll(done: Callable[[], bool], interval: float = 0.05) -> None:
    """Until ``done()`` (a blocking HTTP call, in a thread) says yes; as a probe would."""
    while True:
        if await asyncio.to_thread(done):
            return
        await asyncio.sleep(interval)


async def cold_start(socket: str, meta: dict[str, object], base: str) -> dict[str, float]:
    image, artifact = str(meta["image"]), str(meta["artifact"])
    marks: dict[str, float] = {}
    async with CriClient(socket, timeout=900) as cri:
        started = time.monotonic()
        await asyncio.gather(
            cri.images.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=image))),
            cri.images.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=artifact))),
        )
        marks["pulled"] = time.monotonic() - started
        name = f"coldstart-{uuid.uuid4().hex[:6]}"
        sandbox = pb.PodSandboxConfig(
            metadata=pb.PodSandboxMetadata(name=name, uid=uuid.uuid4().hex, namespace="bench"),
            hostname=name,
            log_directory=os.path.join(base, "logs", name),
        )
        sid = (
            await cri.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=sandbox))
        ).pod_sandbox_id
        status = await cri.runtime.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=sid))
        ip = status.status.network.ip
        config = pb.ContainerConfig(
            metadata=pb.ContainerMetadata(name="server"),
            image=pb.ImageSpec(image=image),
            log_path="server.log",
            mounts=[
                pb.Mount(
                    container_path=f"/models/{MODEL}",
                    image=pb.ImageSpec(image=artifact),
                    readonly=True,
                )
            ],
        )
        cid = (
            await cri.runtime.CreateContainer(
                pb.CreateContainerRequest(pod_sandbox_id=sid, config=config, sandbox_config=sandbox)
            )
        ).container_id
        await cri.runtime.StartContainer(pb.StartContainerRequest(container_id=cid))
        marks["started"] = time.monotonic() - started
        await poll(lambda: get_status(f"http://{ip}:8080/v2/health/ready") == 200)
        marks["ready"] = time.monotonic() - started
        url = f"http://{ip}:8080/v2/models/{MODEL}/infer"
        await poll(lambda: post(url, REQUEST) == 200)
        marks["first_inference"] = time.monotonic() - started
        await cri.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sid))
        await cri.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sid))
    return marks


def run_ours(meta: dict[str, object], scratch: str, pod_cidr: str) -> dict[str, float]:
    bridge = f"ma-c{uuid.uuid4().hex[:6]}"
    os.makedirs(scratch)
    parent = f"/ma-coldstart-{uuid.uuid4().hex[:6]}"
    config = (
        f'[network]\nbridge = "{bridge}"\npod_cidr = "{pod_cidr}"\n'
        f'[runtime]\ndefault_cgroup_parent = "{parent}"\n'
    )
    try:
        with AgentProcess(scratch, config) as agent:
            drop_caches()
            return asyncio.run(cold_start(agent.socket, meta, scratch))
    finally:
        subprocess.run(["ip", "link", "del", bridge], capture_output=True, check=False)
        for controller in os.listdir("/sys/fs/cgroup"):
            path = os.path.join("/sys/fs/cgroup", controller, parent.strip("/"))
            if os.path.isdir(path):
                os.rmdir(path)
        shutil.rmtree(scratch, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--weights-gb", type=float, default=2.5)
    parser.add_argument("--work", default="/var/tmp/ma-coldstart")
    parser.add_argument("--pod-cidr", default="10.213.0.0/24")
    parser.add_argument(
        "--connections", type=int, default=4, help="the floor's (image.max_concurrent_downloads)"
    )
    parser.add_argument(
        "--part-mb", type=int, default=64, help="the floor's Range parts (image.download_part_mb)"
    )
    args = parser.parse_args()
    os.makedirs(args.work, exist_ok=True)
    scratch_root = tempfile.mkdtemp(prefix="ma-coldstart-", dir=args.work)
    results: dict[str, list[float]] = {}
    try:
        with Registry(os.path.join(args.work, "registry")) as registry:
            meta = prepare(args.work, registry, args.weights_gb)
            # The registry's port changes per start: refer to this one.
            for key in ("image", "artifact"):
                meta[key] = registry.host + "/" + str(meta[key]).split("/", 1)[1]
            for run in range(args.runs):
                floor = run_floor(
                    registry,
                    meta,
                    os.path.join(scratch_root, f"floor-{run}"),
                    args.connections,
                    args.part_mb,
                )
                marks = run_ours(meta, os.path.join(scratch_root, f"ours-{run}"), args.pod_cidr)
                marks["floor"] = floor
                for key, value in marks.items():
                    results.setdefault(key, []).append(value)
                print(
                    f"run {run + 1}: floor {floor:.1f}s, pulled {marks['pulled']:.1f}s, "
                    f"ready {marks['ready']:.1f}s, first inference "
                    f"{marks['first_inference']:.1f}s",
                    flush=True,
                )
    finally:
        shutil.rmtree(scratch_root, ignore_errors=True)
    median = {key: statistics.median(values) for key, values in results.items()}
    gigabytes = float(meta["artifact_bytes"]) / 1e9  # type: ignore[arg-type]
    print(f"\ncold start of {MODEL} with a {gigabytes:.2f} GB artifact, medians of {args.runs}:")
    print(f"  pull floor (ranged, parallel) {median['floor']:7.1f} s")
    print(f"  both pulls done               {median['pulled']:7.1f} s")
    print(f"  container started             {median['started']:7.1f} s")
    print(f"  ready (weights loaded)        {median['ready']:7.1f} s")
    print(f"  first inference               {median['first_inference']:7.1f} s")
    print(f"  pulls / floor               = {median['pulled'] / median['floor']:.2f}x")
    print(f"  first inference / floor     = {median['first_inference'] / median['floor']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
