"""A pull interrupted by ``kill -9`` of the agent resumes cleanly after a restart."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import grpc
import pytest

from agent.api.cri.runtime.v1 import api_pb2 as pb
from agent.ctl.client import CriClient
from tests.support.faults import FaultProxy
from tests.support.images import build_image
from tests.support.layers import File, layer
from tests.support.push import RegistryClient

pytestmark = pytest.mark.integration

PART = 1 << 20


@contextlib.contextmanager
def agent_process(base: str) -> Iterator[subprocess.Popen[str]]:
    config = f"{base}/config.toml"
    with open(config, "w") as f:
        f.write("[image]\ndownload_part_mb = 1\nmax_concurrent_downloads = 2\n")
    env = dict(
        os.environ,
        MODEL_AGENT_ROOT_DIR=f"{base}/root",
        MODEL_AGENT_STATE_DIR=f"{base}/state",
        MODEL_AGENT_METRICS_ADDRESS="",
        MODEL_AGENT_CONFIG=config,
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "serve"],
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        assert "serving CRI" in proc.stdout.readline()
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()  # a clean stop releases what the agent mounted
        proc.communicate(timeout=30)


def children_of(pid: int) -> list[int]:
    result = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{entry}/stat") as f:
                if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                    result.append(int(entry))
    return result


@pytest.mark.slow
async def test_kill_9_mid_pull_then_resume(short_dir, registry):
    name = f"resume-{os.getpid()}"
    weights = layer([File("weights", os.urandom(12 * PART))], "gzip")
    image = build_image([weights])
    RegistryClient(registry.url).push_image(name, image)
    socket = f"{short_dir}/state/model-agent.sock"
    with FaultProxy(registry.url) as proxy:
        ref = f"{proxy.host}/{name}"
        # Every part is slow, so the agent dies with some parts done and some not.
        proxy.stall("GET", weights.digest, after_bytes=0, seconds=0.3, times=None)
        parts_file = f"{short_dir}/root/content/ingest/{weights.digest[7:]}/parts.json"
        with agent_process(short_dir) as proc:
            async with CriClient(socket, timeout=None) as cri:
                call = asyncio.ensure_future(
                    cri.images.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=ref)))
                )
                for _ in range(300):
                    if done_parts(parts_file) >= 3:
                        break
                    await asyncio.sleep(0.02)
                before = done_parts(parts_file)
                assert 3 <= before < 12
                workers = children_of(proc.pid)
                assert workers, "an unpack worker was running"
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=30)
                with pytest.raises(grpc.aio.AioRpcError):
                    await call
        for pid in workers:  # the unpack workers died with the agent
            for _ in range(100):
                if not os.path.exists(f"/proc/{pid}"):
                    break
                await asyncio.sleep(0.05)
            assert not os.path.exists(f"/proc/{pid}")
        proxy.clear()
        proxy.clear_requests()
        with agent_process(short_dir):
            snapshots = os.listdir(f"{short_dir}/root/snapshots")
            assert [n for n in snapshots if n.startswith("tmp-")] == []  # swept at start
            async with CriClient(socket, timeout=120) as cri:
                resp = await cri.images.PullImage(
                    pb.PullImageRequest(image=pb.ImageSpec(image=ref))
                )
                assert resp.image_ref == image.config_digest
                status = await cri.images.ImageStatus(
                    pb.ImageStatusRequest(image=pb.ImageSpec(image=ref))
                )
                assert status.image.id == image.config_digest
        fetched = [r for r in proxy.requests if weights.digest in r.path and r.method == "GET"]
    # Only the parts not finished before the kill were fetched again.
    assert 0 < len(fetched) <= weights.size // PART + 1 - before
    assert os.listdir(f"{short_dir}/root/content/ingest") == []


def done_parts(path: str) -> int:
    try:
        with open(path) as f:
            return len(json.load(f)["done"])
    except (OSError, ValueError):
        return 0
