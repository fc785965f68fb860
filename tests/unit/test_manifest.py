"""Manifests, indexes and configs: parsing, media types and platform choice."""

from __future__ import annotations

import json
import re

import pytest

from agent.errors import InvalidArgument, NotFound
from agent.images.manifest import (
    OCI_INDEX,
    OCI_MANIFEST,
    Platform,
    media_type_of,
    parse_config,
    parse_index,
    parse_manifest,
    select_platform,
)

D = ["sha256:" + c * 64 for c in "0123456789abcdef"]


def manifest(**overrides):
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": D[0],
            "size": 10,
        },
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+zstd", "digest": D[1], "size": 5}
        ],
    }
    doc.update(overrides)
    return json.dumps(doc).encode()


def index(*platforms):
    return json.dumps(
        {
            "schemaVersion": 2,
            "manifests": [
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": D[i + 2],
                    "size": 1,
                    "platform": {"os": os_, "architecture": arch, **({"variant": v} if v else {})},
                }
                for i, (os_, arch, v) in enumerate(platforms)
            ],
        }
    ).encode()


def test_manifest_parses():
    parsed = parse_manifest(manifest(), OCI_MANIFEST)
    assert parsed.config.digest == D[0]
    assert [layer.media_type for layer in parsed.layers] == [
        "application/vnd.oci.image.layer.v1.tar+zstd"
    ]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"[]", "not a JSON object"),
        (b"{not json", "not valid JSON"),
        (manifest(schemaVersion=1), "schema1 is not supported"),
        (
            manifest(layers=[{"mediaType": "application/x-tar+lz4", "digest": D[1], "size": 1}]),
            "unsupported layer media type 'application/x-tar+lz4'",
        ),
        (
            manifest(
                mediaType="application/vnd.docker.distribution.manifest.v2+json",
                config={"mediaType": "text/plain", "digest": D[0], "size": 1},
            ),
            "unsupported image config media type",
        ),
        (
            manifest(
                config={"mediaType": "text/plain", "digest": D[0], "size": 1},
                annotations={"a": 1},
            ),
            "annotations are not a map of strings",
        ),
        (
            manifest(
                layers=[
                    {
                        "mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": "sha256:nope",
                        "size": 1,
                    }
                ]
            ),
            "invalid digest",
        ),
        (
            manifest(
                layers=[
                    {
                        "mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": D[1],
                        "size": -1,
                    }
                ]
            ),
            "no valid size",
        ),
    ],
)
def test_bad_manifests(body, message):
    try:
        media_type = json.loads(body).get("mediaType", OCI_MANIFEST)
    except (ValueError, AttributeError):
        media_type = OCI_MANIFEST
    with pytest.raises(InvalidArgument, match=re.escape(message)):
        parse_manifest(body, media_type)


def test_an_image_is_not_an_artifact_even_with_an_artifact_type():
    parsed = parse_manifest(manifest(artifactType="application/x-mine"), OCI_MANIFEST)
    assert not parsed.is_artifact


def test_artifacts_are_named_by_artifact_type_else_config_type():
    model = "application/vnd.cncf.model.manifest.v1+json"
    raw = {
        "mediaType": "application/vnd.cncf.model.weight.v1.raw",
        "digest": D[1],
        "size": 5,
        "annotations": {"org.opencontainers.image.title": "model.safetensors"},
    }
    parsed = parse_manifest(
        manifest(
            artifactType=model,
            config={
                "mediaType": "application/vnd.cncf.model.config.v1+json",
                "digest": D[0],
                "size": 3,
            },
            layers=[raw],
            annotations={"org.cncf.model.name": "iris"},
        ),
        OCI_MANIFEST,
    )
    assert parsed.is_artifact and parsed.artifact_type == model
    assert parsed.annotations == {"org.cncf.model.name": "iris"}
    assert parsed.layers[0].annotations["org.opencontainers.image.title"] == "model.safetensors"
    oras = parse_manifest(
        manifest(
            config={"mediaType": "application/vnd.acme.rocket.config", "digest": D[0], "size": 2}
        ),
        OCI_MANIFEST,
    )
    assert oras.artifact_type == "application/vnd.acme.rocket.config"


def test_media_type_prefers_the_document_and_infers_oci():
    assert media_type_of(manifest(), "application/json; charset=utf-8") == OCI_MANIFEST
    assert media_type_of(index(("linux", "amd64", "")), "application/json") == OCI_INDEX
    assert media_type_of(b"garbage", "text/plain; x=y") == "text/plain"


def test_platform_selection():
    idx = parse_index(
        index(
            ("linux", "arm", "v7"),
            ("linux", "arm64", "v8"),
            ("linux", "amd64", ""),
            ("unknown", "unknown", ""),
        ),
        OCI_INDEX,
    )
    assert select_platform(idx, Platform("linux", "amd64")).digest == D[4]
    assert select_platform(idx, Platform("linux", "arm64", "v8")).digest == D[3]
    # No exact variant: any entry for the architecture will do.
    idx2 = parse_index(index(("linux", "arm64", "")), OCI_INDEX)
    assert select_platform(idx2, Platform("linux", "arm64", "v8")).digest == D[2]
    with pytest.raises(NotFound, match="offers linux/arm, linux/arm64"):
        select_platform(
            parse_index(index(("linux", "arm", "v7"), ("linux", "arm64", "")), OCI_INDEX),
            Platform("linux", "amd64"),
        )


def test_config():
    body = json.dumps(
        {
            "rootfs": {"type": "layers", "diff_ids": [D[5]]},
            "config": {
                "User": "1000:1000",
                "Env": ["A=1"],
                "Entrypoint": ["/bin/sh"],
                "Cmd": None,
                "WorkingDir": "/w",
                "StopSignal": "SIGINT",
                "Labels": {"a": "b"},
            },
        }
    ).encode()
    config = parse_config(body)
    assert config.diff_ids == (D[5],)
    assert (config.user, config.env, config.entrypoint, config.cmd) == (
        "1000:1000",
        ("A=1",),
        ("/bin/sh",),
        (),
    )
    assert (config.working_dir, config.stop_signal, config.labels) == ("/w", "SIGINT", {"a": "b"})
    with pytest.raises(InvalidArgument, match="rootfs"):
        parse_config(b'{"config": {}}')
    with pytest.raises(InvalidArgument, match="Env is not a list of strings"):
        parse_config(
            json.dumps(
                {"rootfs": {"type": "layers", "diff_ids": []}, "config": {"Env": "A=1"}}
            ).encode()
        )
