"""OCI artifacts as image volumes: pulled through the CRI, listed like images, mounted.

The artifacts are pushed here the way ORAS pushes them (an empty config, an
``artifactType``, one blob per file with its ``org.opencontainers.image.title``, a
directory as a ``tar+gzip`` layer): files land at their titles, tars are extracted, the
volume is read-only, a new version downloads only the blobs that changed, and a container
cannot run an artifact.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
import pytest

from agent.api.cri.runtime.v1 import api_pb2 as pb
from tests.integration.test_pods import Env, environment, images  # noqa: F401
from tests.support.layers import Dir, File, layer, sha256_digest
from tests.support.push import RegistryClient

pytestmark = pytest.mark.integration

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
EMPTY = "application/vnd.oci.empty.v1+json"
TYPE = "application/vnd.example.model.v1"
TITLE = "org.opencontainers.image.title"
Blob = tuple[bytes, str, dict[str, str]]  # data, media type, annotations


def file_blob(data: bytes, title: str | None) -> Blob:
    return data, "application/octet-stream", {TITLE: title} if title else {}


def tokenizer_blob() -> Blob:
    tar = layer([Dir("tokenizer"), File("tokenizer/vocab.txt", b"[CLS]\n[SEP]\n", mode=0o600)])
    return tar.blob, "application/vnd.oci.image.layer.v1.tar+gzip", {TITLE: "tokenizer"}


def push_artifact(
    client: RegistryClient, name: str, tag: str, blobs: Sequence[Blob], **extra: Any
) -> str:
    config = client.push_blob(name, b"{}")
    layers = []
    for data, media_type, notes in blobs:
        digest = client.push_blob(name, data)
        layers.append(
            {
                "mediaType": media_type,
                "digest": digest,
                "size": len(data),
                **({"annotations": notes} if notes else {}),
            }
        )
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": TYPE,
        "config": {"mediaType": EMPTY, "digest": config, "size": 2},
        "layers": layers,
        "annotations": {"org.opencontainers.image.version": tag},
        **extra,
    }
    body = json.dumps(manifest).encode()
    client.put_manifest(name, tag, body, OCI_MANIFEST)
    return sha256_digest(body)


@pytest.fixture
async def env(short_dir: str, images: dict[str, str]) -> AsyncIterator[Env]:  # noqa: F811
    async with environment(short_dir, images) as env:
        yield env


async def pulled_bytes(env: Env) -> float:
    """Bytes the agent received from registries (its metric), read off the event loop."""
    assert env.agent.metrics_server is not None
    url = env.agent.metrics_server.url

    def fetch() -> str:
        with urllib.request.urlopen(url, timeout=10) as response:
            return str(response.read().decode())

    text = await asyncio.to_thread(fetch)
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("model_agent_image_pull_bytes_total{")
    )


async def pull(env: Env, reference: str) -> str:
    answer = await env.cri.images.PullImage(
        pb.PullImageRequest(image=pb.ImageSpec(image=reference))
    )
    return answer.image_ref


def volume(reference: str, path: str = "/model", sub_path: str = "") -> pb.Mount:
    return pb.Mount(
        container_path=path,
        image=pb.ImageSpec(image=reference),
        readonly=True,
        image_sub_path=sub_path,
    )


async def test_an_artifact_is_pulled_listed_mounted_and_updated(env, registry):
    client = RegistryClient(registry.url)
    weights = b"\x01" * 300_000
    v1 = [
        file_blob(weights, "model.bin"),
        file_blob(b'{"layers": 2}', "config/settings.json"),
        tokenizer_blob(),
        file_blob(b"untitled", None),
    ]
    digest = push_artifact(client, "art/model", "v1", v1)
    ref = f"{registry.host}/art/model:v1"
    before = await pulled_bytes(env)
    image_id = await pull(env, ref)
    assert image_id == digest
    assert await pulled_bytes(env) - before == sum(len(b[0]) for b in v1)

    listed = await env.cri.images.ListImages(pb.ListImagesRequest())
    (image,) = [i for i in listed.images if i.id == image_id]
    assert image.repo_tags == [ref]
    assert image.repo_digests == [f"{registry.host}/art/model@{digest}"]
    assert image.size >= len(weights)
    assert image.spec.annotations["org.opencontainers.image.version"] == "v1"
    status = await env.cri.images.ImageStatus(
        pb.ImageStatusRequest(image=pb.ImageSpec(image=ref), verbose=True)
    )
    info = json.loads(status.info["info"])
    assert info["artifactType"] == TYPE
    assert [layer.get("path") for layer in info["artifact"]["layers"]] == [
        "model.bin",
        "config/settings.json",
        None,
        "sha256-" + sha256_digest(b"untitled")[7:],
    ]

    sid = await env.run_pod()
    cid = await env.run(sid, "reader", "sleep", "1000", mounts=[volume(ref)])
    found = await env.exec(
        cid,
        "sh",
        "-c",
        "cd /model && find . -type f | sort && stat -c '%a %n' model.bin tokenizer/vocab.txt",
    )
    assert found.stdout.decode().split("\n")[:4] == [
        "./config/settings.json",
        "./model.bin",
        "./sha256-" + sha256_digest(b"untitled")[7:],
        "./tokenizer/vocab.txt",
    ]
    assert "444 model.bin" in found.stdout.decode()
    assert "600 tokenizer/vocab.txt" in found.stdout.decode()  # a tar keeps its modes
    same = await env.exec(cid, "sh", "-c", "md5sum < /model/model.bin")
    assert same.stdout.split()[0].decode() == __import__("hashlib").md5(weights).hexdigest()
    write = await env.exec(cid, "sh", "-c", "echo x > /model/new")
    assert write.exit_code != 0 and b"Read-only file system" in write.stderr
    sub = await env.run(sid, "sub", "sleep", "1000", mounts=[volume(ref, sub_path="config")])
    settings = await env.exec(sub, "cat", "/model/settings.json")
    assert settings.stdout == b'{"layers": 2}'

    # v2 changes the weights only: only they come down again.
    new_weights = b"\x02" * 200_000
    push_artifact(client, "art/model", "v2", [file_blob(new_weights, "model.bin"), *v1[1:]])
    before = await pulled_bytes(env)
    v2_id = await pull(env, f"{registry.host}/art/model:v2")
    assert await pulled_bytes(env) - before == len(new_weights)
    remove = pb.RemoveImageRequest(image=pb.ImageSpec(image=image_id))
    with pytest.raises(grpc.aio.AioRpcError) as in_use:
        await env.cri.images.RemoveImage(remove)
    assert in_use.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    await env.remove_pod(sid)
    await env.cri.images.RemoveImage(remove)  # v1 goes; what v2 shares stays
    sid = await env.run_pod()
    cid = await env.run(
        sid, "reader", "sleep", "1000", mounts=[volume(f"{registry.host}/art/model:v2")]
    )
    again = await env.exec(
        cid, "sh", "-c", "wc -c < /model/model.bin; cat /model/tokenizer/vocab.txt"
    )
    assert again.stdout.decode().split("\n")[:2] == ["200000", "[CLS]"]
    assert v2_id != image_id


async def test_a_container_cannot_run_an_artifact(env, registry):
    client = RegistryClient(registry.url)
    push_artifact(client, "art/norun", "v1", [file_blob(b"w", "w.bin")])
    ref = f"{registry.host}/art/norun:v1"
    await pull(env, ref)
    sid = await env.run_pod()
    config = env.container_config("x", "true")
    config.image.image = ref
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await env.create(sid, config)
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "is an OCI artifact" in (refused.value.details() or "")
    listed = await env.cri.runtime.ListContainers(pb.ListContainersRequest())
    assert list(listed.containers) == []


async def test_an_artifact_with_no_layers_is_an_empty_volume(env, registry):
    client = RegistryClient(registry.url)
    push_artifact(client, "art/empty", "v1", [])
    ref = f"{registry.host}/art/empty:v1"
    await pull(env, ref)
    sid = await env.run_pod()
    cid = await env.run(sid, "reader", "sleep", "1000", mounts=[volume(ref)])
    listing = await env.exec(cid, "ls", "-A", "/model")
    assert listing.exit_code == 0 and listing.stdout == b""


@pytest.mark.parametrize(
    ("blobs", "message"),
    [
        ([file_blob(b"x", "../escape")], "not a clean relative path"),
        ([file_blob(b"x", "/etc/passwd")], "not a clean relative path"),
        ([file_blob(b"x", "a"), file_blob(b"y", "a/b")], "both claim"),
    ],
)
async def test_an_artifact_with_bad_titles_is_refused_and_leaves_nothing(
    env, registry, blobs, message
):
    client = RegistryClient(registry.url)
    push_artifact(client, "art/bad", "v1", blobs)
    assert env.agent.images is not None
    snapshots = env.agent.images.store.snapshots()
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await pull(env, f"{registry.host}/art/bad:v1")
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert message in (refused.value.details() or "")
    listed = await env.cri.images.ListImages(pb.ListImagesRequest())
    assert not [i for i in listed.images if any("art/bad" in t for t in i.repo_tags)]
    assert env.agent.images.store.snapshots() == snapshots
