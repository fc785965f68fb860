"""The test-support layer and image builders write what the pull tests rely on."""

from __future__ import annotations

import gzip
import io
import json
import tarfile

import pytest
import zstandard

from tests.support.images import (
    BUSYBOX_APPLETS,
    DOCKER_CONFIG,
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_MANIFEST,
    Platform,
    build_image,
    build_index,
    busybox_entries,
)
from tests.support.layers import (
    MALICIOUS,
    Device,
    Dir,
    Fifo,
    File,
    Hardlink,
    Layer,
    Opaque,
    Raw,
    Sparse,
    Symlink,
    Whiteout,
    build_tar,
    layer,
    sha256_digest,
    truncated_tar,
)


def members(tar: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(tar)) as reader:
        return {member.name: member for member in reader.getmembers()}


def test_every_entry_type_is_written_as_described():
    tar = build_tar(
        [
            Dir("etc", mode=0o750, uid=1, gid=2),
            File("etc/conf", b"hello", mode=0o600, uid=1000, gid=1001, mtime=123),
            File("bin/ping", b"\x7fELF", xattrs={"security.capability": b"\x01\x00\xff\xfe"}),
            Symlink("etc/link", "/etc/conf"),
            Hardlink("etc/hard", "etc/conf"),
            Device("dev/null", "char", 1, 3),
            Device("dev/sda", "block", 8, 0, mode=0o660),
            Fifo("run/pipe"),
            Whiteout("usr/share/doc"),
            Whiteout("gone"),
            Opaque("var/cache/"),
        ]
    )
    found = members(tar)
    assert found["etc"].isdir() and found["etc"].mode == 0o750 and found["etc"].uid == 1
    conf = found["etc/conf"]
    assert conf.isfile() and conf.size == 5 and conf.mode == 0o600
    assert (conf.uid, conf.gid, conf.mtime) == (1000, 1001, 123)
    assert found["bin/ping"].pax_headers["SCHILY.xattr.security.capability"].encode(
        "utf-8", "surrogateescape"
    ) == (b"\x01\x00\xff\xfe")
    assert found["etc/link"].issym() and found["etc/link"].linkname == "/etc/conf"
    assert found["etc/hard"].islnk() and found["etc/hard"].linkname == "etc/conf"
    assert found["dev/null"].ischr() and (
        found["dev/null"].devmajor,
        found["dev/null"].devminor,
    ) == (1, 3)
    assert found["dev/sda"].isblk() and found["dev/sda"].devmajor == 8
    assert found["run/pipe"].isfifo()
    assert found["usr/share/.wh.doc"].isfile() and found["usr/share/.wh.doc"].size == 0
    assert ".wh.gone" in found
    assert found["var/cache/.wh..wh..opq"].size == 0


def test_sparse_file_reads_back_with_holes():
    tar = build_tar(
        [Sparse("data/model.bin", 3 * 1024 * 1024, {0: b"head", 2 * 1024 * 1024: b"mid"})]
    )
    assert len(tar) < 64 * 1024  # the holes are not stored
    with tarfile.open(fileobj=io.BytesIO(tar)) as reader:
        member = reader.getmember("data/model.bin")
        assert member.issparse() and member.size == 3 * 1024 * 1024
        extracted = reader.extractfile(member)
        assert extracted is not None
        content = extracted.read()
    assert len(content) == 3 * 1024 * 1024
    assert content[:4] == b"head" and content[2 * 1024 * 1024 : 2 * 1024 * 1024 + 3] == b"mid"
    assert content[4 : 2 * 1024 * 1024].count(0) == 2 * 1024 * 1024 - 4


@pytest.mark.parametrize("kind", list(MALICIOUS))
def test_malicious_entries_keep_their_names_and_targets(kind):
    entries = MALICIOUS[kind]
    found = list(members(build_tar(entries)).values())
    assert len(found) == len(entries)
    for entry, member in zip(entries, found, strict=True):
        assert member.name.rstrip("/") == entry.path.rstrip("/")  # type: ignore[union-attr]
        if isinstance(entry, (Symlink, Hardlink)):
            assert member.linkname == entry.target


def test_raw_tarinfo_is_written_untouched():
    info = tarfile.TarInfo("/../../etc/shadow")
    info.size = 3
    info.mode = 0o4777
    member = members(build_tar([Raw(info, b"abc")]))["/../../etc/shadow"]
    assert member.mode == 0o4777 and member.size == 3


def test_truncated_tar_ends_inside_the_last_member():
    entries = [File("a", b"x"), File("big", b"y" * 4096)]
    tar = truncated_tar(entries)
    assert len(tar) < len(build_tar(entries)) and tar.endswith(b"y" * 2048)
    with pytest.raises(tarfile.ReadError), tarfile.open(fileobj=io.BytesIO(tar)) as reader:
        for member in reader:
            extracted = reader.extractfile(member)
            if extracted is not None:
                extracted.read()


def test_layer_digests_and_media_types():
    entries = [File("a", b"hello")]
    gzipped, zstd, plain = (layer(entries, c) for c in ("gzip", "zstd", "none"))
    assert gzipped.tar == zstd.tar == plain.tar == plain.blob
    assert gzip.decompress(gzipped.blob) == gzipped.tar and gzipped.blob[:2] == b"\x1f\x8b"
    assert zstandard.ZstdDecompressor().decompress(zstd.blob) == zstd.tar
    assert zstd.blob[:4] == b"\x28\xb5\x2f\xfd"
    assert gzipped.diff_id == zstd.diff_id == sha256_digest(plain.tar)
    assert gzipped.digest == sha256_digest(gzipped.blob) and gzipped.size == len(gzipped.blob)
    assert layer(entries, "gzip").blob == gzipped.blob  # reproducible
    assert gzipped.media_type("oci") == "application/vnd.oci.image.layer.v1.tar+gzip"
    assert zstd.media_type("oci") == "application/vnd.oci.image.layer.v1.tar+zstd"
    assert plain.media_type("oci") == "application/vnd.oci.image.layer.v1.tar"
    assert gzipped.media_type("docker") == "application/vnd.docker.image.rootfs.diff.tar.gzip"
    assert plain.media_type("docker") == "application/vnd.docker.image.rootfs.diff.tar"
    with pytest.raises(ValueError, match="no docker media type"):
        zstd.media_type("docker")


def test_busybox_rootfs_has_the_applets_and_users():
    found = members(build_tar(busybox_entries()))
    assert found["bin/busybox"].mode == 0o755 and found["bin/busybox"].size > 100_000
    for applet in BUSYBOX_APPLETS:
        assert found[f"bin/{applet}"].linkname == "busybox"
    assert found["tmp"].mode == 0o1777
    assert (found["home/app"].uid, found["home/app"].gid) == (1000, 1000)


@pytest.mark.parametrize(
    ("flavor", "manifest_type", "config_type"),
    [("oci", OCI_MANIFEST, OCI_CONFIG), ("docker", DOCKER_MANIFEST, DOCKER_CONFIG)],
)
def test_image_config_and_manifest(flavor, manifest_type, config_type):
    layers = [Layer.from_tar(build_tar([File("a", b"1")])), layer([File("b", b"2")], "none")]
    image = build_image(
        layers,
        flavor=flavor,
        env=["A=1"],
        entrypoint=["/bin/sh", "-c"],
        cmd=["echo hi"],
        user="1000:1000",
        working_dir="/work",
        stop_signal="SIGINT",
        labels={"k": "v"},
        extra_config={"ExposedPorts": {"80/tcp": {}}},
    )
    config = json.loads(image.config)
    assert (config["architecture"], config["os"]) == ("amd64", "linux")
    assert config["config"] == {
        "User": "1000:1000",
        "Env": ["A=1"],
        "Entrypoint": ["/bin/sh", "-c"],
        "Cmd": ["echo hi"],
        "WorkingDir": "/work",
        "StopSignal": "SIGINT",
        "Labels": {"k": "v"},
        "ExposedPorts": {"80/tcp": {}},
    }
    assert config["rootfs"] == {"type": "layers", "diff_ids": image.diff_ids}
    assert len(config["history"]) == 2
    manifest = json.loads(image.manifest)
    assert manifest["mediaType"] == image.media_type == manifest_type
    assert manifest["config"] == {
        "mediaType": config_type,
        "digest": image.config_digest,
        "size": len(image.config),
    }
    assert [item["digest"] for item in manifest["layers"]] == image.layer_digests
    assert image.size == len(image.config) + sum(item.size for item in layers)


@pytest.mark.parametrize(("flavor", "media_type"), [("oci", OCI_INDEX), ("docker", DOCKER_LIST)])
def test_index_lists_each_platform(flavor, media_type):
    arm = Platform(architecture="arm64", variant="v8")
    images = [build_image([], flavor="docker"), build_image([], flavor="docker", platform=arm)]
    index = build_index(images, flavor=flavor)
    body = json.loads(index.manifest)
    assert body["mediaType"] == index.media_type == media_type
    assert [entry["platform"] for entry in body["manifests"]] == [
        {"architecture": "amd64", "os": "linux"},
        {"architecture": "arm64", "os": "linux", "variant": "v8"},
    ]
    assert body["manifests"][1]["digest"] == images[1].manifest_digest
    assert index.image_for(arm) is images[1]
