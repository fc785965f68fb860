"""OCI artifacts as volumes: which layers are extracted, which become files and where."""

from __future__ import annotations

import os
import stat

import pytest

from agent.errors import InvalidArgument
from agent.images.artifact import TITLE, artifact_layers, place_file, tar_compression
from agent.images.manifest import Descriptor, Manifest

D = ["sha256:" + c * 64 for c in "0123456789abcdef"]
CONFIG = Descriptor("application/vnd.oci.empty.v1+json", D[0], 2)


def artifact(*layers: Descriptor) -> Manifest:
    return Manifest("application/vnd.oci.image.manifest.v1+json", CONFIG, layers, "x/y")


def layer(media_type: str, digest: str, title: str | None = None) -> Descriptor:
    return Descriptor(media_type, digest, 1, annotations={TITLE: title} if title else {})


@pytest.mark.parametrize(
    ("media_type", "compression"),
    [
        ("application/vnd.oci.image.layer.v1.tar+gzip", "gzip"),
        ("application/vnd.cncf.model.weight.v1.tar", ""),
        ("application/vnd.cncf.model.weight.v1.tar+zstd", "zstd"),
        ("application/vnd.cncf.helm.chart.content.v1.tar+gzip", "gzip"),
        ("application/vnd.cncf.model.weight.v1.raw", None),
        ("application/vnd.cncf.model.weight.v1.tar+lz4", None),
        ("application/octet-stream", None),
        ("text/plain+gzip", None),
    ],
)
def test_tar_layers_are_known_by_their_media_type(media_type, compression):
    assert tar_compression(media_type) == compression


def test_files_are_named_by_title_and_tars_extracted():
    planned = artifact_layers(
        artifact(
            layer("application/vnd.cncf.model.weight.v1.raw", D[1], "model.safetensors"),
            layer("application/vnd.oci.image.layer.v1.tar+gzip", D[2], "tokenizer"),
            layer("application/octet-stream", D[3], "config/model.json"),
            layer("application/octet-stream", D[4]),
        )
    )
    assert [(p.is_tar, p.path) for p in planned] == [
        (False, "model.safetensors"),
        (True, ""),
        (False, "config/model.json"),
        (False, "sha256-" + "4" * 64),
    ]
    assert len({p.key for p in planned}) == 4
    assert all(p.key.startswith("sha256:") and len(p.key) == 71 for p in planned)


def test_a_snapshot_key_is_what_it_holds_not_where_it_sits():
    weights = layer("application/octet-stream", D[1], "w.bin")
    renamed = layer("application/octet-stream", D[1], "v2.bin")
    one = artifact_layers(artifact(weights, layer("application/octet-stream", D[2], "c")))
    two = artifact_layers(artifact(layer("application/octet-stream", D[3], "c"), weights))
    assert one[0].key == two[1].key
    assert artifact_layers(artifact(renamed))[0].key != one[0].key


@pytest.mark.parametrize("title", ["/etc/passwd", "../up", "a/../../b", ".", "a//b", "a/./b"])
def test_titles_must_be_clean_relative_paths(title):
    with pytest.raises(InvalidArgument, match="not a clean relative path"):
        artifact_layers(artifact(layer("application/octet-stream", D[1], title)))


@pytest.mark.parametrize(("first", "second"), [("a", "a"), ("a", "a/b"), ("a/b", "a")])
def test_two_files_cannot_claim_one_path(first, second):
    with pytest.raises(InvalidArgument, match="both claim"):
        artifact_layers(
            artifact(
                layer("application/octet-stream", D[1], first),
                layer("application/octet-stream", D[2], second),
            )
        )


def test_place_file_moves_the_blob_and_makes_it_readable(tmp_path):
    blob = tmp_path / "ingest"
    blob.write_bytes(b"weights")
    os.chmod(blob, 0o600)
    snapshot = tmp_path / "fs"
    snapshot.mkdir(mode=0o700)
    place_file(str(blob), str(snapshot), "sub/dir/w.bin")
    target = snapshot / "sub" / "dir" / "w.bin"
    assert target.read_bytes() == b"weights"
    assert not blob.exists()
    assert stat.S_IMODE(target.stat().st_mode) == 0o444
    assert stat.S_IMODE(snapshot.stat().st_mode) == 0o755
