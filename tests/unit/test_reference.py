"""Image references normalise like the kubelet's and containerd's."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from agent.errors import InvalidArgument
from agent.images.reference import Reference, is_digest, parse

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("busybox", "docker.io/library/busybox:latest"),
        ("busybox:1.36", "docker.io/library/busybox:1.36"),
        ("library/busybox", "docker.io/library/busybox:latest"),
        ("docker.io/busybox", "docker.io/library/busybox:latest"),
        ("index.docker.io/library/busybox", "docker.io/library/busybox:latest"),
        ("nvidia/cuda:12.4.1-runtime", "docker.io/nvidia/cuda:12.4.1-runtime"),
        ("quay.io/org/app:v1", "quay.io/org/app:v1"),
        ("localhost/app", "localhost/app:latest"),
        ("localhost:5000/team/model:v2", "localhost:5000/team/model:v2"),
        ("127.0.0.1:5000/m", "127.0.0.1:5000/m:latest"),
        ("[::1]:5000/m:x", "[::1]:5000/m:x"),
        (f"busybox@{DIGEST}", f"docker.io/library/busybox@{DIGEST}"),
        (f"app:v1@{DIGEST}", f"docker.io/library/app@{DIGEST}"),
        ("registry.example.com/a/b/c__d.e-f:T_1.x", "registry.example.com/a/b/c__d.e-f:T_1.x"),
    ],
)
def test_normalisation(text, expected):
    assert str(parse(text)) == expected


def test_parts():
    ref = parse(f"localhost:5000/team/model:v2@{DIGEST}")
    assert ref == Reference("localhost:5000", "team/model", "", DIGEST)
    assert ref.name == "localhost:5000/team/model"
    assert ref.object == DIGEST
    assert parse("busybox").object == "latest"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        (" busybox", "padded"),
        ("Busybox", "must be lowercase"),
        ("busybox:", "bad tag"),
        ("busybox:-x", "bad tag"),
        ("a//b", "bad repository"),
        ("a/-b", "bad repository"),
        ("busybox@sha256:123", "invalid digest"),
        ("busybox@md5:" + "a" * 32, "unsupported digest algorithm"),
        ("ex ample.com/a", "bad registry"),
        ("a" * 256, "longer than 255"),
    ],
)
def test_invalid_references_say_why(text, message):
    with pytest.raises(InvalidArgument, match=message):
        parse(text)


def test_is_digest():
    assert is_digest(DIGEST)
    assert not is_digest("sha256:abc")
    assert not is_digest(DIGEST.upper())


# No dots: a dotted first component would (rightly) be read as a registry host.
_component = st.from_regex(r"[a-z0-9]{1,8}([_-][a-z0-9]{1,8}){0,2}", fullmatch=True)
_tag = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}", fullmatch=True)


@given(
    domain=st.sampled_from(["", "quay.io/", "localhost:5000/", "10.0.0.1:80/"]),
    path=st.lists(_component, min_size=1, max_size=3),
    tag=st.one_of(st.none(), _tag),
)
def test_normalising_twice_changes_nothing(domain, path, tag):
    text = domain + "/".join(path) + (f":{tag}" if tag else "")
    once = parse(text)
    assert parse(str(once)) == once
    assert once.tag == (tag or "latest")
