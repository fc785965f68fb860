"""ImageService end to end: a real agent pulling from a real docker-registry on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import stat
import time
import uuid

import grpc
import pytest

from agent.api.cri.runtime.v1 import api_pb2 as pb
from agent.app import Agent
from agent.ctl.client import CriClient
from tests.support.faults import FaultProxy, HeaderRecorder
from tests.support.images import Platform, build_image, build_index, busybox_image, busybox_layer
from tests.support.layers import (
    ESCAPE_NAME,
    MALICIOUS,
    Device,
    Dir,
    Fifo,
    File,
    Hardlink,
    Layer,
    Opaque,
    Sparse,
    Symlink,
    Whiteout,
    build_tar,
    layer,
    truncated_tar,
)
from tests.support.push import RegistryClient
from tests.support.registry import running_registry
from tests.support.scrape import scrape

pytestmark = pytest.mark.integration


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def details(error: grpc.aio.AioRpcError) -> str:
    return error.details() or ""


async def pull(cri: CriClient, image: str, **auth: str) -> str:
    request = pb.PullImageRequest(image=pb.ImageSpec(image=image))
    if auth:
        request.auth.CopyFrom(pb.AuthConfig(**auth))
    resp = await cri.images.PullImage(request, timeout=120)
    return resp.image_ref


async def status(cri: CriClient, image: str) -> pb.ImageStatusResponse:
    return await cri.images.ImageStatus(
        pb.ImageStatusRequest(image=pb.ImageSpec(image=image), verbose=True)
    )


async def pull_error(cri: CriClient, image: str, **auth: str) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await pull(cri, image, **auth)
    return info.value


def snapshot_dirs(agent: Agent, image_id: str) -> list[str]:
    assert agent.images is not None
    record = agent.images.store.get(image_id)
    assert record is not None
    result = []
    for chain in record.layers:
        snapshot = agent.images.store.snapshot(chain)
        assert snapshot is not None
        result.append(agent.images.snapshots.fs_path(snapshot.name))
    return result


def leftovers(agent: Agent) -> list[str]:
    """Temporary snapshot dirs that a failed pull must not leave behind."""
    root = os.path.join(agent.config.agent.root_dir, "snapshots")
    return [n for n in os.listdir(root) if n.startswith(("tmp-", ".del-"))]


# -- happy paths ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("flavor", "compression"),
    [("oci", "gzip"), ("docker", "gzip"), ("oci", "zstd"), ("oci", "none"), ("docker", "none")],
)
async def test_pull_busybox_in_each_format(agent, cri, pusher, registry, flavor, compression):
    image = busybox_image(flavor, compression, user="1000")
    name = unique(f"busybox-{flavor}-{compression}")
    pushed = pusher.push_image(name, image, tag="v1")
    image_id = await pull(cri, f"{registry.host}/{name}:v1")
    assert image_id == image.config_digest

    resp = await status(cri, f"{registry.host}/{name}:v1")
    assert resp.image.id == image.config_digest
    assert list(resp.image.repo_tags) == [f"{registry.host}/{name}:v1"]
    assert list(resp.image.repo_digests) == [f"{registry.host}/{name}@{pushed.digest}"]
    assert resp.image.uid.value == 1000
    assert resp.image.size > 1_000_000  # the unpacked busybox binary
    info = json.loads(resp.info["info"])
    assert info["manifestDigest"] == image.manifest_digest

    (fs,) = snapshot_dirs(agent, image_id)
    busybox = os.lstat(f"{fs}/bin/busybox")
    assert stat.S_IMODE(busybox.st_mode) == 0o755
    assert os.readlink(f"{fs}/bin/sh") == "busybox"
    assert stat.S_IMODE(os.lstat(f"{fs}/tmp").st_mode) == 0o1777
    assert os.lstat(f"{fs}/home/app").st_uid == 1000
    with open("/bin/busybox", "rb") as a, open(f"{fs}/bin/busybox", "rb") as b:
        assert a.read() == b.read()


async def test_pull_by_digest_and_short_names(cri, pusher, registry):
    name = unique("bydigest")
    pushed = pusher.push_image(name, busybox_image(), tag="latest")
    image_id = await pull(cri, f"{registry.host}/{name}@{pushed.digest}")
    resp = await status(cri, f"{registry.host}/{name}@{pushed.digest}")
    assert resp.image.id == image_id
    assert list(resp.image.repo_tags) == []  # pulled by digest: no tag recorded
    # A tag plus a digest pulls the digest (containerd's normalisation).
    assert await pull(cri, f"{registry.host}/{name}:whatever@{pushed.digest}") == image_id
    # Lookups by id, bare hex and a unique id prefix all find it.
    for text in (image_id, image_id.removeprefix("sha256:"), image_id[7:19]):
        assert (await status(cri, text)).image.id == image_id


@pytest.mark.parametrize("flavor", ["oci", "docker"])
async def test_multi_arch_index_picks_the_host_platform(agent, cri, pusher, registry, flavor):
    amd64 = build_image([layer([File("arch", b"amd64")], "gzip")], flavor=flavor)
    arm64 = build_image(
        [layer([File("arch", b"arm64")], "gzip")],
        flavor=flavor,
        platform=Platform(architecture="arm64", variant="v8"),
    )
    index = build_index([arm64, amd64], flavor=flavor)
    name = unique(f"multi-{flavor}")
    pushed = pusher.push_index(name, index, tag="v1")
    image_id = await pull(cri, f"{registry.host}/{name}:v1")
    assert image_id == amd64.config_digest
    resp = await status(cri, image_id)
    assert list(resp.image.repo_digests) == [f"{registry.host}/{name}@{pushed.digest}"]
    (fs,) = snapshot_dirs(agent, image_id)
    with open(f"{fs}/arch", "rb") as f:
        assert f.read() == b"amd64"


async def test_index_without_the_host_platform_is_not_found(cri, pusher, registry):
    arm = build_image([layer([File("x", b"1")])], platform=Platform(architecture="arm64"))
    name = unique("armonly")
    pusher.push_index(name, build_index([arm]), tag="v1")
    error = await pull_error(cri, f"{registry.host}/{name}:v1")
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "linux/arm64" in details(error)


async def test_layer_features_are_kept(agent, cri, pusher, registry):
    base = layer(
        [
            Dir("etc"),
            File("etc/old", b"old"),
            Dir("opt"),
            File("opt/lower", b"lower"),
        ]
    )
    top = layer(
        [
            Whiteout("etc/old"),
            Opaque("opt"),
            File(
                "opt/mine",
                b"mine",
                mode=0o640,
                uid=1000,
                gid=2000,
                mtime=1_600_000_000,
                xattrs={"user.model": b"weights"},
            ),
            Hardlink("opt/mine-link", "opt/mine"),
            Symlink("opt/to-mine", "mine"),
            Fifo("opt/pipe"),
            Device("dev-null", "char", 1, 3),
            Sparse("opt/sparse", 64 << 20, {0: b"start", (32 << 20): b"middle"}),
            File("etc/setuid", b"#!", mode=0o4755),
        ]
    )
    name = unique("features")
    image = build_image([base, top])
    pusher.push_image(name, image)
    image_id = await pull(cri, f"{registry.host}/{name}")
    lower, upper = snapshot_dirs(agent, image_id)

    whiteout = os.lstat(f"{upper}/etc/old")
    assert stat.S_ISCHR(whiteout.st_mode)
    assert os.major(whiteout.st_rdev) == 0 and os.minor(whiteout.st_rdev) == 0
    assert os.getxattr(f"{upper}/opt", "trusted.overlay.opaque") == b"y"
    assert not os.path.lexists(f"{upper}/.wh..wh..opq")
    assert not os.path.lexists(f"{upper}/opt/.wh..wh..opq")

    mine = os.lstat(f"{upper}/opt/mine")
    assert (stat.S_IMODE(mine.st_mode), mine.st_uid, mine.st_gid) == (0o640, 1000, 2000)
    assert int(mine.st_mtime) == 1_600_000_000
    assert os.getxattr(f"{upper}/opt/mine", "user.model") == b"weights"
    assert os.lstat(f"{upper}/opt/mine-link").st_ino == mine.st_ino
    assert os.readlink(f"{upper}/opt/to-mine") == "mine"
    assert stat.S_ISFIFO(os.lstat(f"{upper}/opt/pipe").st_mode)
    dev = os.lstat(f"{upper}/dev-null")
    assert stat.S_ISCHR(dev.st_mode) and os.minor(dev.st_rdev) == 3
    assert stat.S_IMODE(os.lstat(f"{upper}/etc/setuid").st_mode) == 0o4755

    sparse = os.lstat(f"{upper}/opt/sparse")
    assert sparse.st_size == 64 << 20
    assert sparse.st_blocks * 512 < 1 << 20  # holes stayed holes
    with open(f"{upper}/opt/sparse", "rb") as f:
        assert f.read(5) == b"start"
        f.seek(32 << 20)
        assert f.read(6) == b"middle"

    with open(f"{lower}/opt/lower", "rb") as f:
        assert f.read() == b"lower"  # the lower layer is untouched by the upper's whiteouts


async def test_shared_layers_are_fetched_and_unpacked_once(agent, cri, registry):
    base = busybox_layer("gzip")
    with FaultProxy(registry.url) as proxy:
        client = RegistryClient(proxy.url)
        name = unique("shared")
        one = build_image([base, layer([File("one", b"1")])])
        two = build_image([base, layer([File("two", b"2")])])
        client.push_image(name, one, tag="one")
        client.push_image(name, two, tag="two")
        proxy.clear_requests()
        id_one = await pull(cri, f"{proxy.host}/{name}:one")
        id_two = await pull(cri, f"{proxy.host}/{name}:two")
        base_gets = [r for r in proxy.requests if base.digest in r.path and r.method == "GET"]
    assert base_gets, "the base layer was fetched"
    assert len({r.range for r in base_gets}) == len(base_gets)  # no part fetched twice
    assert snapshot_dirs(agent, id_one)[0] == snapshot_dirs(agent, id_two)[0]


async def test_list_and_stream_images_with_filters(cri, pusher, registry):
    names = [unique("list-a"), unique("list-b")]
    ids = []
    for i, name in enumerate(names):
        image = build_image([layer([File("n", str(i).encode())])])
        pusher.push_image(name, image)
        ids.append(await pull(cri, f"{registry.host}/{name}"))
    listed = await cri.images.ListImages(pb.ListImagesRequest())
    assert set(ids) <= {image.id for image in listed.images}
    filtered = await cri.images.ListImages(
        pb.ListImagesRequest(
            filter=pb.ImageFilter(image=pb.ImageSpec(image=f"{registry.host}/{names[1]}"))
        )
    )
    assert [image.id for image in filtered.images] == [ids[1]]
    streamed = [
        image.id
        async for message in cri.images.StreamImages(pb.StreamImagesRequest())
        for image in message.images
    ]
    assert sorted(streamed) == sorted(image.id for image in listed.images)


async def test_unknown_image_status_is_empty_and_bad_references_are_invalid(cri):
    resp = await status(cri, "127.0.0.1:1/never/pulled:v1")
    assert not resp.HasField("image")
    for bad in ("UPPER/case", "a:b:c:d", "x@sha256:short", "name@md5:abcd"):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await pull(cri, bad)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, bad
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await cri.images.PullImage(pb.PullImageRequest())
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "image is required" in details(info.value)


async def test_remove_image_collects_what_no_other_image_uses(agent, cri, pusher, registry):
    base = layer([File("base", b"shared base " * 1000)])
    name = unique("remove")
    first = build_image([base, layer([File("first", b"1")])])
    second = build_image([base, layer([File("second", b"2")])])
    pusher.push_image(name, first, tag="first")
    pusher.push_image(name, second, tag="second")
    id_first = await pull(cri, f"{registry.host}/{name}:first")
    id_second = await pull(cri, f"{registry.host}/{name}:second")
    base_dir, first_top = snapshot_dirs(agent, id_first)
    assert agent.images is not None
    content = agent.images.content

    await cri.images.RemoveImage(
        pb.RemoveImageRequest(image=pb.ImageSpec(image=f"{registry.host}/{name}:first"))
    )
    assert not (await status(cri, id_first)).HasField("image")
    assert not os.path.exists(first_top)
    assert os.path.exists(base_dir)  # still used by the second image
    assert not content.has(first.manifest_digest)
    assert content.has(second.manifest_digest)
    # Idempotent: removing again, or by another name, is fine.
    await cri.images.RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image=id_first)))

    await cri.images.RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image=id_second)))
    assert not os.path.exists(base_dir)
    assert agent.images.store.snapshots() == []
    assert content.digests() == set()


async def test_remove_image_in_use_is_refused(agent, cri, pusher, registry):
    name = unique("inuse")
    pusher.push_image(name, build_image([layer([File("x", b"x")])]))
    image_id = await pull(cri, f"{registry.host}/{name}")
    assert agent.images is not None
    agent.images.in_use = lambda candidate: candidate == image_id
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await cri.images.RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image=image_id)))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert (await status(cri, image_id)).HasField("image")


async def test_retag_moves_the_tag_and_keeps_the_old_image(cri, pusher, registry):
    name = unique("retag")
    old = build_image([layer([File("v", b"old")])])
    new = build_image([layer([File("v", b"new")])])
    pusher.push_image(name, old, tag="latest")
    old_id = await pull(cri, f"{registry.host}/{name}")
    pusher.push_image(name, new, tag="latest")
    new_id = await pull(cri, f"{registry.host}/{name}")
    assert old_id != new_id
    old_status = await status(cri, old_id)
    assert list(old_status.image.repo_tags) == []
    assert len(old_status.image.repo_digests) == 1
    assert list((await status(cri, new_id)).image.repo_tags) == [f"{registry.host}/{name}:latest"]


async def test_image_fs_info_counts_pulled_images(agent, cri, pusher, registry):
    before = await cri.images.ImageFsInfo(pb.ImageFsInfoRequest())
    name = unique("fsinfo")
    pusher.push_image(name, busybox_image())
    await pull(cri, f"{registry.host}/{name}")
    after = await cri.images.ImageFsInfo(pb.ImageFsInfoRequest())
    (fs,) = after.image_filesystems
    assert fs.fs_id.mountpoint == agent.config.agent.root_dir
    assert fs.timestamp > 0
    assert fs.used_bytes.value > before.image_filesystems[0].used_bytes.value + 1_000_000
    assert fs.inodes_used.value > before.image_filesystems[0].inodes_used.value + 20
    assert len(after.container_filesystems) == 1


async def test_pinned_images_are_reported(start_agent, pusher, registry):
    name = unique("pinned")
    pusher.push_image(name, build_image([layer([File("p", b"p")])]))
    agent = await start_agent(**{"image.pinned_images": [f"{registry.host}/{name}"]})
    async with CriClient(agent.socket_path) as cri:
        image_id = await pull(cri, f"{registry.host}/{name}")
        assert (await status(cri, image_id)).image.pinned is True


# -- registries, mirrors, credentials -------------------------------------------------


async def test_unknown_manifest_is_not_found(cri, registry):
    error = await pull_error(cri, f"{registry.host}/{unique('missing')}:v1")
    assert error.code() == grpc.StatusCode.NOT_FOUND


async def test_unreachable_registry_is_registry_unavailable(start_agent):
    agent = await start_agent()
    assert agent.images is not None
    agent.images.client._retry.base_delay = 0.01
    async with CriClient(agent.socket_path) as cri:
        error = await pull_error(cri, "127.0.0.1:1/nothing/listens:here")
    assert error.code() == grpc.StatusCode.UNKNOWN
    assert details(error).startswith("RegistryUnavailable: ")


async def test_mirror_first_then_fallback_to_the_registry(start_agent, pusher, registry):
    name = unique("mirrored")
    image = build_image([layer([File("m", b"m")])])
    pusher.push_image(name, image)
    # The image's own registry does not exist (nothing listens on port 1); the mirror has it.
    mirrored = await start_agent(
        **{
            "image.registries": {"127.0.0.1:1": {"mirrors": [registry.url]}},
        }
    )
    async with CriClient(mirrored.socket_path) as cri:
        assert await pull(cri, f"127.0.0.1:1/{name}") == image.config_digest
    # A dead mirror falls back to the registry itself.
    fallback = await start_agent(
        **{
            "image.registries": {registry.host: {"mirrors": ["http://127.0.0.1:1"]}},
        }
    )
    assert fallback.images is not None
    fallback.images.client._retry.base_delay = 0.01
    async with CriClient(fallback.socket_path) as cri:
        assert await pull(cri, f"{registry.host}/{name}") == image.config_digest


@pytest.fixture(scope="module")
def token_registry(tmp_path_factory):
    with running_registry(
        tmp_path_factory.mktemp("token"),
        auth="token",
        users={"tester": "s3cret-pw", "reader": "read-only-pw"},
        readonly_users={"reader"},
    ) as registry:
        yield registry


async def test_token_auth(cri, token_registry):
    pusher = RegistryClient(token_registry.url, "tester", "s3cret-pw")
    name = unique("private")
    image = busybox_image()
    pusher.push_image(name, image, tag="v1")
    ref = f"{token_registry.host}/{name}:v1"

    error = await pull_error(cri, ref)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    error = await pull_error(cri, ref, username="reader", password="wrong")
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED

    assert token_registry.token_server is not None
    token_registry.token_server.clear_requests()
    assert await pull(cri, ref, username="reader", password="read-only-pw") == image.config_digest
    first = len(token_registry.token_server.requests)
    assert first >= 1
    assert all(r.authorization for r in token_registry.token_server.requests)
    # The `auth` form (base64 user:password) works too, and the token is reused.
    encoded = base64.b64encode(b"reader:read-only-pw").decode()
    await cri.images.RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image=ref)))
    assert await pull(cri, ref, auth=encoded) == image.config_digest
    assert len(token_registry.token_server.requests) == first


async def test_node_credentials_file(start_agent, short_dir, token_registry):
    pusher = RegistryClient(token_registry.url, "tester", "s3cret-pw")
    name = unique("nodecreds")
    pusher.push_image(name, build_image([layer([File("c", b"c")])]))
    path = f"{short_dir}/auth.json"
    with open(path, "w") as f:
        encoded = base64.b64encode(b"reader:read-only-pw").decode()
        json.dump({"auths": {token_registry.host: {"auth": encoded}}}, f)
    agent = await start_agent(**{"image.credentials_file": path})
    async with CriClient(agent.socket_path) as cri:
        image_id = await pull(cri, f"{token_registry.host}/{name}")
        assert image_id.startswith("sha256:")  # the node's read-only credentials were enough


async def test_forbidden_is_permission_denied(cri, registry):
    name = unique("forbidden")
    RegistryClient(registry.url).push_image(name, build_image([layer([File("f", b"f")])]))
    with FaultProxy(registry.url) as proxy:
        proxy.fail("GET", r"/manifests/", status=403, times=None)
        error = await pull_error(cri, f"{proxy.host}/{name}")
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_blob_redirect_does_not_leak_the_token(cri, token_registry):
    pusher = RegistryClient(token_registry.url, "tester", "s3cret-pw")
    name = unique("redirect")
    image = build_image([layer([File("r", os.urandom(3 << 20))])])
    pusher.push_image(name, image)
    with FaultProxy(token_registry.url) as proxy, HeaderRecorder(token_registry) as other:
        proxy.redirect("GET", r"/blobs/", lambda path: other.url + path, times=None)
        image_id = await pull(
            cri, f"{proxy.host}/{name}", username="reader", password="read-only-pw"
        )
        assert image_id == image.config_digest
        assert other.requests, "blobs came from the other host"
        assert all(r.authorization is None for r in other.requests)
        assert any(r.authorization for r in proxy.requests)


# -- robustness --------------------------------------------------------------------


async def test_transient_500s_and_resets_are_retried(agent, cri, registry):
    name = unique("flaky")
    big = layer([File("weights", os.urandom(6 << 20))], "gzip")
    image = build_image([big])
    RegistryClient(registry.url).push_image(name, image)
    assert agent.images is not None
    agent.images.client._retry.base_delay = 0.01
    with FaultProxy(registry.url) as proxy:
        proxy.fail("GET", r"/manifests/", status=500, times=2)
        proxy.fail("GET", big.digest, status=503, retry_after="0", times=2)
        reset = proxy.reset("GET", big.digest, after_bytes=300_000)
        assert await pull(cri, f"{proxy.host}/{name}") == image.config_digest
        assert reset.fired == 1
        ranges = [r.range for r in proxy.requests if big.digest in r.path and r.status == 206]
    # The reset part was resumed from where it broke, not fetched from its start again.
    starts = [int(r.split("=")[1].split("-")[0]) for r in ranges if r]
    assert any(start % (1 << 20) != 0 for start in starts)


async def test_persistent_500s_are_registry_unavailable(agent, cri, registry):
    name = unique("broken")
    RegistryClient(registry.url).push_image(name, build_image([layer([File("b", b"b")])]))
    assert agent.images is not None
    agent.images.client._retry.base_delay = 0.01
    with FaultProxy(registry.url) as proxy:
        proxy.fail("GET", r"/manifests/", status=500, times=None)
        error = await pull_error(cri, f"{proxy.host}/{name}")
    assert error.code() == grpc.StatusCode.UNKNOWN
    assert details(error).startswith("RegistryUnavailable: ")
    assert "500" in details(error)


@pytest.mark.slow
async def test_stalled_blob_fails_after_the_progress_timeout(start_agent, registry):
    agent = await start_agent(**{"image.pull_progress_timeout_seconds": 2})
    name = unique("stall")
    big = layer([File("weights", os.urandom(4 << 20))], "gzip")
    image = build_image([big])
    RegistryClient(registry.url).push_image(name, image)
    with FaultProxy(registry.url) as proxy:
        proxy.stall("GET", big.digest, after_bytes=100_000, times=None)
        async with CriClient(agent.socket_path) as cri:
            started = time.monotonic()
            error = await pull_error(cri, f"{proxy.host}/{name}")
            elapsed = time.monotonic() - started
            # The agent kept answering while the pull hung.
            assert (await cri.runtime.Version(pb.VersionRequest())).version == "0.1.0"
    assert error.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNKNOWN)
    assert elapsed < 60
    assert leftovers(agent) == []


async def test_short_stall_is_survived(start_agent, registry):
    agent = await start_agent(**{"image.pull_progress_timeout_seconds": 3})
    name = unique("hiccup")
    big = layer([File("weights", os.urandom(3 << 20))], "gzip")
    image = build_image([big])
    RegistryClient(registry.url).push_image(name, image)
    with FaultProxy(registry.url) as proxy:
        proxy.stall("GET", big.digest, after_bytes=50_000, seconds=1.0, times=1)
        async with CriClient(agent.socket_path) as cri:
            assert await pull(cri, f"{proxy.host}/{name}") == image.config_digest


async def test_corrupt_blob_is_rejected_and_not_kept(agent, cri, registry):
    name = unique("corrupt")
    big = layer([File("weights", os.urandom(2 << 20))], "gzip")
    image = build_image([big])
    RegistryClient(registry.url).push_image(name, image)
    with FaultProxy(registry.url) as proxy:
        proxy.corrupt("GET", big.digest, offset=100_000, times=None)
        error = await pull_error(cri, f"{proxy.host}/{name}")
    assert "failed verification" in details(error) or "corrupt" in details(error)
    assert not (await status(cri, f"{proxy.host}/{name}")).HasField("image")
    assert leftovers(agent) == []
    assert agent.images is not None
    assert os.listdir(agent.images.content.ingests) == []  # bad bytes are never resumed


async def test_oversized_manifest_is_refused(cri, registry):
    name = unique("hugemanifest")
    RegistryClient(registry.url).push_image(name, build_image([layer([File("h", b"h")])]))
    with FaultProxy(registry.url) as proxy:
        proxy.replace_body("GET", r"/manifests/", b"{" + b" " * (5 << 20) + b"}", times=None)
        error = await pull_error(cri, f"{proxy.host}/{name}")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "4 MiB" in details(error)


async def test_unknown_layer_media_type_is_refused(cri, pusher, registry):
    weird = layer([File("w", b"w")])
    image = build_image([weird])
    manifest = json.loads(image.manifest)
    manifest["layers"][0]["mediaType"] = "application/vnd.example.weird.layer"
    body = json.dumps(manifest).encode()
    name = unique("weird")
    pusher.push_blob(name, image.config)
    pusher.push_blob(name, weird.blob)
    pusher.put_manifest(name, "latest", body, image.media_type)
    error = await pull_error(cri, f"{registry.host}/{name}")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "application/vnd.example.weird.layer" in details(error)


@pytest.mark.parametrize("case", sorted(MALICIOUS))
async def test_hostile_layers_never_write_outside(agent, cri, pusher, registry, case):
    escape = f"/tmp/{ESCAPE_NAME}"
    if os.path.lexists(escape):
        os.unlink(escape)
    name = unique(f"hostile-{case}")
    image = build_image([Layer.from_tar(build_tar(MALICIOUS[case]), "gzip")])
    pusher.push_image(name, image)
    try:
        await pull(cri, f"{registry.host}/{name}")
    except grpc.aio.AioRpcError as exc:
        assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, details(exc)
        assert not (await status(cri, f"{registry.host}/{name}")).HasField("image")
    else:
        # Contained: names were resolved inside the layer, as the container will see them.
        (fs,) = snapshot_dirs(agent, image.config_digest)
        assert os.path.exists(f"{fs}/tmp/{ESCAPE_NAME}")
    assert not os.path.lexists(escape)
    assert not os.path.lexists("/etc/passwd.model-agent")
    assert leftovers(agent) == []


async def test_truncated_layer_is_refused(agent, cri, pusher, registry):
    tar = truncated_tar([File("a", b"x" * 100_000), File("b", os.urandom(200_000))])
    image = build_image([Layer.from_tar(tar, "gzip")])
    name = unique("truncated")
    pusher.push_image(name, image)
    error = await pull_error(cri, f"{registry.host}/{name}")
    assert error.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNKNOWN)
    assert leftovers(agent) == []


async def test_diff_id_mismatch_is_refused(agent, cri, pusher, registry):
    good = layer([File("a", b"a")])
    other = layer([File("b", b"b")])
    image = build_image([good])
    config = json.loads(image.config)
    config["rootfs"]["diff_ids"] = [other.diff_id]
    config_bytes = json.dumps(config).encode()
    manifest = json.loads(image.manifest)
    manifest["config"]["digest"] = "sha256:" + hashlib.sha256(config_bytes).hexdigest()
    manifest["config"]["size"] = len(config_bytes)
    name = unique("diffid")
    pusher.push_blob(name, config_bytes)
    pusher.push_blob(name, good.blob)
    pusher.put_manifest(name, "latest", json.dumps(manifest).encode(), image.media_type)
    error = await pull_error(cri, f"{registry.host}/{name}")
    assert "failed verification" in details(error)
    assert leftovers(agent) == []


async def test_identical_concurrent_pulls_share_one_operation(agent, cri, registry):
    name = unique("concurrent")
    big = layer([File("weights", os.urandom(4 << 20))], "gzip")
    image = build_image([big])
    RegistryClient(registry.url).push_image(name, image)
    with FaultProxy(registry.url) as proxy:
        proxy.clear_requests()
        results = await asyncio.gather(*(pull(cri, f"{proxy.host}/{name}") for _ in range(5)))
        manifest_gets = [r for r in proxy.requests if "/manifests/" in r.path]
    assert set(results) == {image.config_digest}
    assert len(manifest_gets) == 1


async def test_pull_metrics(agent, cri, pusher, registry):
    name = unique("metrics")
    big = layer([File("weights", os.urandom(1 << 20))], "gzip")
    pusher.push_image(name, build_image([big]))
    await pull(cri, f"{registry.host}/{name}")
    assert agent.metrics_server is not None

    metrics = await asyncio.to_thread(scrape, agent.metrics_server.url)
    by_registry = {"registry": registry.host}
    assert metrics.value("model_agent_image_pull_bytes_total", **by_registry) >= big.size
    assert metrics.value("model_agent_image_pulls_total", **by_registry, result="success") >= 1
    assert metrics.value("model_agent_image_pull_duration_seconds_count", **by_registry) >= 1
    assert metrics.value("model_agent_image_pulls_in_flight", **by_registry) == 0


async def test_identity_token_uses_the_oauth2_refresh_flow(cri, token_registry):
    pusher = RegistryClient(token_registry.url, "tester", "s3cret-pw")
    name = unique("oauth")
    image = build_image([layer([File("o", b"o")])])
    pusher.push_image(name, image)
    assert token_registry.token_server is not None
    refresh = token_registry.token_server.issue_refresh_token("reader")
    token_registry.token_server.clear_requests()
    assert await pull(cri, f"{token_registry.host}/{name}", identity_token=refresh) == (
        image.config_digest
    )
    assert [r.method for r in token_registry.token_server.requests] == ["POST"]


async def test_registry_token_is_sent_as_is(cri, token_registry):
    pusher = RegistryClient(token_registry.url, "tester", "s3cret-pw")
    name = unique("bearer")
    image = build_image([layer([File("t", b"t")])])
    pusher.push_image(name, image)
    server = token_registry.token_server
    assert server is not None
    token = server.issue_token("reader", [f"repository:{name}:pull"])
    server.clear_requests()
    assert await pull(cri, f"{token_registry.host}/{name}", registry_token=token) == (
        image.config_digest
    )
    assert server.requests == []  # no trip to the token server


async def test_basic_auth_registry(cri, tmp_path):
    with running_registry(tmp_path, auth="basic", users={"basic": "pw-basic"}) as basic:
        name = unique("basic")
        image = build_image([layer([File("b", b"b")])])
        RegistryClient(basic.url, "basic", "pw-basic").push_image(name, image)
        error = await pull_error(cri, f"{basic.host}/{name}")
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        assert await pull(cri, f"{basic.host}/{name}", username="basic", password="pw-basic") == (
            image.config_digest
        )


@pytest.mark.slow
async def test_the_server_stays_responsive_during_a_big_pull(cri, pusher, registry):
    name = unique("responsive")
    image = build_image([layer([File("w", os.urandom(48 << 20))], "gzip")])
    pusher.push_image(name, image)
    pulling = asyncio.ensure_future(pull(cri, f"{registry.host}/{name}"))
    latencies = []
    while not pulling.done():
        started = time.monotonic()
        await cri.runtime.Version(pb.VersionRequest())
        latencies.append(time.monotonic() - started)
        await asyncio.sleep(0.02)
    assert await pulling == image.config_digest
    assert latencies
    assert max(latencies) < 1.0
