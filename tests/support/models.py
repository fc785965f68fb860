"""The example model images for tests and benchmarks: build, push, unpack, run in a chroot.

``build_and_push`` is the one call an end-to-end test or a benchmark needs: it builds an
example (``sklearn-iris`` or ``minilm-embedding``) hermetically with
``examples/models/modelbuild`` — the image and its ModelPack model artifacts v1 and v2 —
and pushes them to a registry URL, saying how long each part took.

``unpack_image`` and ``run_server`` check a built image without a runtime: the layers
applied in order (whiteouts honoured) into a directory, the image's own entrypoint run
there with ``chroot`` as the image's user, on 127.0.0.1. ``place_artifact`` puts an
artifact's files where an image volume would show them (named by their
``org.opencontainers.image.title``).

Builds need root, mmdebstrap and (the first time) a Debian mirror and PyPI; the rootfs
cache (``MODEL_BUILD_CACHE``, default ``/var/cache/model-agent-build``) makes reruns take
seconds.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import shutil
import signal
import socket
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from modelbuild.examples import EXAMPLES, BuildResult, build_example
from modelbuild.oci import TITLE, Layout
from modelbuild.push import RegistryPusher
from modelbuild.rootfs import DEFAULT_CACHE
from modelbuild.synthetic import SyntheticModel, write_random_bert_artifact

__all__ = [
    "DEFAULT_CACHE",
    "EXAMPLES",
    "PushedExample",
    "RunningServer",
    "SyntheticModel",
    "build_and_push",
    "image_config",
    "place_artifact",
    "push_layout",
    "run_server",
    "unpack_image",
    "write_random_bert_artifact",
]


@dataclass(frozen=True)
class PushedExample:
    """Where an example went: ``host/repo:tag`` references, digests, sizes, seconds."""

    example: str
    image: str
    image_digest: str
    #: version ("1", "2") → ``host/<name>-model:v<N>`` and its manifest digest.
    artifacts: Mapping[str, str]
    artifact_digests: Mapping[str, str]
    image_size: int  # compressed layers + nothing else: what a pull downloads
    unpacked_size: int
    build_seconds: float
    push_seconds: float
    build: BuildResult

    def artifact_ref(self, version: str) -> str:
        return self.artifacts[version]


def push_layout(
    registry_url: str, layout_path: str, ref_name: str, repository: str, tag: str
) -> str:
    """Push one tag of an OCI layout; returns the manifest digest."""
    return RegistryPusher(registry_url).push(Layout(layout_path), ref_name, repository, tag).digest


def build_and_push(
    example: str,
    registry_url: str,
    out_dir: str,
    *,
    cache_dir: str = DEFAULT_CACHE,
    weights: str | None = None,
    versions: Sequence[str] = ("1", "2"),
    repository_prefix: str = "examples",
    image_tag: str = "1",
) -> PushedExample:
    """Build ``example`` (image + artifacts ``versions``) and push them to ``registry_url``.

    ``weights``: "layer" bakes v1 into the image, "none" leaves it to the artifacts; the
    default is the example's own (iris: layer, minilm: none). Pushed as
    ``<prefix>/<example>:<image_tag>`` and ``<prefix>/<example>-model:v<N>``.
    """
    started = time.monotonic()
    result = build_example(
        example,
        out_dir,
        cache_dir=cache_dir,
        weights=weights,  # type: ignore[arg-type]
        artifact_versions=versions,
        image_tag=image_tag,
    )
    built = time.monotonic()
    host = registry_url.split("://", 1)[-1].rstrip("/")
    image_repository = f"{repository_prefix}/{example}".strip("/")
    artifact_repository = f"{image_repository}-model"
    image_digest = push_layout(
        registry_url, result.image_layout, image_tag, image_repository, image_tag
    )
    artifacts, artifact_digests = {}, {}
    for version in versions:
        tag = f"v{version}"
        artifact_digests[version] = push_layout(
            registry_url, result.artifact_layout, tag, artifact_repository, tag
        )
        artifacts[version] = f"{host}/{artifact_repository}:{tag}"
    return PushedExample(
        example=example,
        image=f"{host}/{image_repository}:{image_tag}",
        image_digest=image_digest,
        artifacts=artifacts,
        artifact_digests=artifact_digests,
        image_size=result.image_size,
        unpacked_size=result.unpacked_size,
        build_seconds=built - started,
        push_seconds=time.monotonic() - built,
        build=result,
    )


def _manifest(layout: Layout, ref_name: str) -> dict[str, Any]:
    manifest: dict[str, Any] = layout.read_json(layout.resolve(ref_name).digest)
    return manifest


def image_config(layout_path: str, ref_name: str) -> dict[str, Any]:
    layout = Layout(layout_path)
    config: dict[str, Any] = layout.read_json(_manifest(layout, ref_name)["config"]["digest"])
    return config


def _apply_layer(tar: tarfile.TarFile, dest: str) -> None:
    for member in tar:
        directory, _, base = member.name.rstrip("/").rpartition("/")
        target_dir = os.path.join(dest, directory)
        if base == ".wh..wh..opq":
            for child in os.listdir(target_dir):
                _remove(os.path.join(target_dir, child))
            continue
        if base.startswith(".wh."):
            _remove(os.path.join(target_dir, base[len(".wh.") :]))
            continue
        existing = os.path.join(dest, member.name)
        if os.path.lexists(existing) and not (member.isdir() and os.path.isdir(existing)):
            _remove(existing)
        tar.extract(member, dest, numeric_owner=True, filter="fully_trusted")


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


def unpack_image(layout_path: str, ref_name: str, dest: str) -> dict[str, Any]:
    """Apply the image's layers into ``dest`` as a runtime would; returns its config."""
    layout = Layout(layout_path)
    manifest = _manifest(layout, ref_name)
    os.makedirs(dest, exist_ok=True)
    for layer in manifest["layers"]:
        path = layout.blob_path(layer["digest"])
        opener: Any = gzip.open if layer["mediaType"].endswith("+gzip") else open
        with opener(path, "rb") as raw, tarfile.open(fileobj=raw, mode="r|") as tar:
            _apply_layer(tar, dest)
    return image_config(layout_path, ref_name)


def place_artifact(layout_path: str, ref_name: str, dest: str) -> list[str]:
    """Copy an artifact's raw blobs into ``dest`` named by their title annotation."""
    layout = Layout(layout_path)
    os.makedirs(dest, exist_ok=True)
    names = []
    for layer in _manifest(layout, ref_name)["layers"]:
        name = layer["annotations"][TITLE]
        shutil.copyfile(layout.blob_path(layer["digest"]), os.path.join(dest, name))
        os.chmod(os.path.join(dest, name), 0o444)
        names.append(name)
    return names


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(frozen=True)
class RunningServer:
    url: str
    metrics_url: str
    process: subprocess.Popen[bytes]
    log_path: str

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()


@contextlib.contextmanager
def run_server(
    rootfs: str,
    config: Mapping[str, Any],
    env: Mapping[str, str] | None = None,
    timeout: float = 120.0,
) -> Iterator[RunningServer]:
    """Run the image's entrypoint in ``rootfs`` (chroot, as its user) on 127.0.0.1.

    Waits for ``/v2/health/ready``; on exit sends SIGTERM (SIGKILL after 10 s).
    """
    runtime = config["config"]
    port, metrics_port = _free_port(), _free_port()
    variables = dict(item.split("=", 1) for item in runtime.get("Env", []))
    variables.update(HTTP_HOST="127.0.0.1", HTTP_PORT=str(port), METRICS_PORT=str(metrics_port))
    variables.update(env or {})
    argv = [
        shutil.which("chroot") or "/usr/sbin/chroot",
        f"--userspec={runtime.get('User', '0:0')}",
        rootfs,
        *runtime["Entrypoint"],
        *runtime.get("Cmd", []),
    ]
    log_path = os.path.join(os.path.dirname(rootfs.rstrip("/")), "server.log")
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            argv,
            env=variables,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=rootfs,
            start_new_session=True,
        )
    server = RunningServer(
        f"http://127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}", process, log_path
    )
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited {process.returncode}:\n{server.log()}")
            try:
                with urllib.request.urlopen(f"{server.url}/v2/health/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"the server was not ready in {timeout}s:\n{server.log()}")
            time.sleep(0.2)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def post_json(url: str, body: Any, timeout: float = 60.0) -> tuple[int, Any]:
    """POST ``body`` as JSON; (status, decoded JSON answer), 4xx/5xx included."""
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())
