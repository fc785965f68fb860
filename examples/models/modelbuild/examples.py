"""The two example images and their model artifacts: what each holds, and building them.

Owns the recipe of ``sklearn-iris`` and ``minilm-embedding``: Debian packages and wheel
locks, which weights recipe (``recipes``) makes each version, the image config
(entrypoint, env, user, ports, labels) and the layer order:

    base (Debian + python3) · deps (Debian packages + wheels) · [extra wheels] · code · [weights]

The weights go either in the image as the last layer (``weights="layer"``, at
``/opt/model/<name>``, the server's fallback directory) or only into a separate model
artifact (``weights="none"``), which the manifests mount at ``/models/<name>`` as an
image volume; artifacts are built for every version asked for, in their own layout.

Must not import ``push`` (``build.py`` pushes).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from modelbuild import oci, tree, wheels
from modelbuild.recipes import HERE, iris_weights, minilm_v1_weights, minilm_weights, run_in_rootfs
from modelbuild.rootfs import DEFAULT_CACHE, Rootfs, RootfsSpec, build_rootfs

__all__ = [
    "EPOCH",
    "EXAMPLES",
    "HERE",
    "BuildResult",
    "Example",
    "build_example",
    "image_gpu",
    "minilm_v1_weights",
    "run_in_rootfs",
]

SERVER_PACKAGE = os.path.join(HERE, "model_server")
#: Every timestamp in the images: tar mtimes are clamped to it, configs are "created" then.
EPOCH = int(os.environ.get("SOURCE_DATE_EPOCH", "1700000000"))
CODE_DIR = "opt/model-server"
HTTP_PORT = 8080
METRICS_PORT = 8082
NOBODY = "65534:65534"
WeightsMode = Literal["layer", "none"]


@dataclass(frozen=True)
class Example:
    name: str
    kind: str  # model_server --model
    description: str
    framework: str
    weights_format: str
    gpu: Literal["none", "optional", "required"]
    rootfs: RootfsSpec
    default_weights: WeightsMode
    versions: tuple[str, ...]
    #: make_weights(rootfs, version, out_dir, cache_dir) writes one version's files.
    make_weights: Callable[[Rootfs, str, str, str], None]
    #: Modules the server imports: the build imports them in the rootfs before anything else.
    imports: tuple[str, ...] = ("numpy", "uvicorn", "prometheus_client")
    #: ModelPack layer media type by file name (weights by default).
    file_types: Mapping[str, str] = field(default_factory=dict)
    model_config: Mapping[str, str] = field(default_factory=dict)
    #: The wheel (name prefix) ``gpu`` needs: an image without it is labelled gpu=none.
    gpu_wheel: str = ""

    @property
    def mount_path(self) -> str:
        return f"/models/{self.name}"

    @property
    def baked_path(self) -> str:
        return f"/opt/model/{self.name}"


#: libstdc++6: the scipy and tokenizers wheels link it (Debian's own packages would pull it).
_BASE_DEBIAN = (
    "python3-numpy",
    "libopenblas0-pthread",
    "python3-uvicorn",
    "python3-prometheus-client",
    "libstdc++6",
)

EXAMPLES: Mapping[str, Example] = {
    "sklearn-iris": Example(
        name="sklearn-iris",
        kind="iris",
        description="An iris-species classifier (scikit-learn LogisticRegression), CPU",
        framework="scikit-learn",
        weights_format="joblib",
        gpu="none",
        rootfs=RootfsSpec(
            packages=(*_BASE_DEBIAN, "python3-joblib", "python3-threadpoolctl"),
            wheels_lock=os.path.join(HERE, "sklearn-iris", "requirements.lock"),
        ),
        default_weights="layer",
        versions=("1", "2"),
        make_weights=iris_weights,
        imports=("numpy", "uvicorn", "prometheus_client", "joblib", "scipy.sparse", "sklearn"),
        file_types={"model.json": oci.WEIGHT_CONFIG_RAW},
        model_config={"architecture": "logistic-regression", "format": "joblib"},
    ),
    "minilm-embedding": Example(
        name="minilm-embedding",
        kind="minilm",
        description="all-MiniLM-L6-v2 sentence embeddings (384-d), GPU via CuPy when present",
        framework="numpy-bert",
        weights_format="safetensors",
        gpu="optional",
        rootfs=RootfsSpec(
            packages=_BASE_DEBIAN,
            wheels_lock=os.path.join(HERE, "minilm-embedding", "requirements.lock"),
        ),
        default_weights="none",
        versions=("1", "2"),
        make_weights=minilm_weights,
        imports=("numpy", "uvicorn", "prometheus_client", "tokenizers", "safetensors.numpy"),
        file_types=dict.fromkeys(
            ("config.json", "sentence_bert_config.json", "tokenizer.json", "model.json"),
            oci.WEIGHT_CONFIG_RAW,
        ),
        model_config={"architecture": "transformer", "format": "safetensors", "paramSize": "22.7m"},
        gpu_wheel="cupy",
    ),
}


# -- layers and the image ----------------------------------------------------------------


def _staged_tar(stage: str, out: str) -> None:
    """A layer tar of everything under ``stage``, modes normalised (644 files, 755 dirs)."""
    for directory, _, filenames in os.walk(stage):
        os.chmod(directory, 0o755)
        for name in filenames:
            os.chmod(os.path.join(directory, name), 0o644)
    tree.write_tar(stage, tree.scan(stage), out, epoch=EPOCH, extra_dirs=())


def _code_layer(work: str) -> str:
    stage = os.path.join(work, "code")
    shutil.copytree(
        SERVER_PACKAGE,
        os.path.join(stage, CODE_DIR, "model_server"),
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    out = os.path.join(work, "code.tar")
    _staged_tar(stage, out)
    return out


def _weights_layer(example: Example, weights_dir: str, work: str) -> str:
    stage = os.path.join(work, "weights-stage")
    shutil.copytree(weights_dir, os.path.join(stage, example.baked_path.lstrip("/")))
    out = os.path.join(work, "weights.tar")
    _staged_tar(stage, out)
    return out


def _extra_wheels_layer(example: Example, lock: str, cache_dir: str, work: str) -> str:
    stage = os.path.join(work, "extra-stage")
    files = wheels.fetch(lock, os.path.join(cache_dir, "wheels"))
    wheels.install(files, os.path.join(stage, example.rootfs.site_packages))
    out = os.path.join(work, "extra.tar")
    tree.write_tar(stage, tree.scan(stage), out, epoch=EPOCH, extra_dirs=())
    return out


def image_gpu(example: Example, extra_wheels_lock: str | None = None) -> str:
    """The gpu label: ``example.gpu`` only where the image holds the wheel the GPU path
    needs (CuPy for MiniLM, from ``--extra-wheels``), else ``none``: the numpy image given
    a GPU computes on the CPU, so it must not advertise one."""
    if not example.gpu_wheel:
        return example.gpu
    locks = [lock for lock in (example.rootfs.wheels_lock, extra_wheels_lock) if lock]
    names = [pin.name.lower() for lock in locks for pin in wheels.read_lock(lock)]
    return example.gpu if any(n.startswith(example.gpu_wheel) for n in names) else "none"


def _labels(
    example: Example,
    image_version: str,
    weights: WeightsMode,
    version: str,
    extra_wheels_lock: str | None = None,
) -> dict[str, str]:
    prefix = "io.model-agent.model."
    return {
        "org.opencontainers.image.title": example.name,
        "org.opencontainers.image.description": example.description,
        "org.opencontainers.image.version": image_version,
        "org.opencontainers.image.created": oci.iso8601(EPOCH),
        "org.opencontainers.image.base.name": f"debian:{example.rootfs.suite}",
        prefix + "name": example.name,
        prefix + "version": version if weights == "layer" else "",
        prefix + "framework": example.framework,
        prefix + "format": example.weights_format,
        prefix + "protocol": "kserve-v2",
        prefix + "http-port": str(HTTP_PORT),
        prefix + "metrics-port": str(METRICS_PORT),
        prefix + "metrics-path": "/metrics",
        prefix + "gpu": image_gpu(example, extra_wheels_lock),
        prefix + "weights": "layer" if weights == "layer" else "artifact",
        prefix + "weights-path": example.baked_path if weights == "layer" else example.mount_path,
        prefix + "mount-path": example.mount_path,
    }


def _runtime_config(example: Example, labels: Mapping[str, str]) -> dict[str, Any]:
    return {
        "User": NOBODY,
        "Env": [
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            f"PYTHONPATH=/{CODE_DIR}",
            "PYTHONUNBUFFERED=1",
            "PYTHONDONTWRITEBYTECODE=1",
            f"MODEL_KIND={example.kind}",
            f"MODEL_NAME={example.name}",
            f"MODEL_DIR={example.mount_path}",
            f"MODEL_FALLBACK_DIR={example.baked_path}",
            f"HTTP_PORT={HTTP_PORT}",
            f"METRICS_PORT={METRICS_PORT}",
        ],
        "Entrypoint": ["python3", "-m", "model_server"],
        "WorkingDir": f"/{CODE_DIR}",
        "ExposedPorts": {f"{HTTP_PORT}/tcp": {}, f"{METRICS_PORT}/tcp": {}},
        "StopSignal": "SIGTERM",
        "Labels": dict(labels),
    }


@dataclass(frozen=True)
class LayerInfo:
    name: str
    digest: str
    diff_id: str
    size: int  # compressed, as pulled
    unpacked: int  # the tar


@dataclass
class BuildResult:
    example: str
    image_layout: str
    image_ref: str  # the tag in the image layout
    image_digest: str
    layers: list[LayerInfo]
    artifact_layout: str
    #: version → (digest, total blob bytes) of each artifact built.
    artifacts: dict[str, tuple[str, int]]
    rootfs_built: tuple[str, ...]
    seconds: dict[str, float]
    packages: str = ""

    @property
    def image_size(self) -> int:
        return sum(layer.size for layer in self.layers)

    @property
    def unpacked_size(self) -> int:
        return sum(layer.unpacked for layer in self.layers)

    def summary(self) -> dict[str, Any]:
        return {
            "example": self.example,
            "image": {
                "layout": self.image_layout,
                "tag": self.image_ref,
                "digest": self.image_digest,
                "size": self.image_size,
                "unpacked": self.unpacked_size,
                "layers": [vars(layer) for layer in self.layers],
            },
            "artifacts": {
                v: {"layout": self.artifact_layout, "tag": f"v{v}", "digest": d, "size": s}
                for v, (d, s) in self.artifacts.items()
            },
            "rootfs_built": list(self.rootfs_built),
            "seconds": {k: round(v, 2) for k, v in self.seconds.items()},
        }


def build_example(
    name: str,
    out_dir: str,
    *,
    cache_dir: str = DEFAULT_CACHE,
    weights: WeightsMode | None = None,
    weights_version: str = "1",
    artifact_versions: Sequence[str] = (),
    image_tag: str = "1",
    extra_wheels_lock: str | None = None,
) -> BuildResult:
    """Build the example's image (and artifacts) into OCI layouts under ``out_dir``."""
    example = EXAMPLES[name]
    weights = weights or example.default_weights
    for version in (*artifact_versions, weights_version):
        if version not in example.versions:
            raise ValueError(f"{name} has versions {example.versions}, not {version!r}")
    seconds: dict[str, float] = {}
    started = time.monotonic()
    rootfs = build_rootfs(example.rootfs, cache_dir, EPOCH)
    seconds["rootfs"] = rootfs.seconds
    seconds.update({f"rootfs_{k}": v for k, v in rootfs.timings.items()})
    t0 = time.monotonic()
    statement = "; ".join(f"import {module}" for module in example.imports)
    shutil.rmtree(run_in_rootfs(rootfs, ["python3", "-c", statement], {}))
    seconds["import_check"] = time.monotonic() - t0
    image_layout = oci.Layout(os.path.join(out_dir, name))
    artifact_layout = oci.Layout(os.path.join(out_dir, f"{name}-model"))
    with tempfile.TemporaryDirectory(prefix="modelbuild-") as work:
        t0 = time.monotonic()
        weight_dirs: dict[str, str] = {}
        for version in sorted(
            {*artifact_versions, *([weights_version] if weights == "layer" else [])}
        ):
            weight_dirs[version] = os.path.join(work, f"weights-v{version}")
            example.make_weights(rootfs, version, weight_dirs[version], cache_dir)
        seconds["weights"] = time.monotonic() - t0
        t0 = time.monotonic()
        parts: list[tuple[str, str, bool, str]] = [  # (name, tar, gzip?, created_by)
            (
                "base",
                rootfs.base_tar,
                True,
                f"mmdebstrap --variant=essential {example.rootfs.suite} "
                f"+ {' '.join(example.rootfs.base_packages)}",
            ),
            (
                "deps",
                rootfs.deps_tar,
                True,
                f"Debian: {' '.join(example.rootfs.packages)}; PyPI wheels: "
                f"{os.path.basename(example.rootfs.wheels_lock or '-')}",
            ),
        ]
        if extra_wheels_lock:
            tar = _extra_wheels_layer(example, extra_wheels_lock, cache_dir, work)
            parts.append(("extra", tar, True, f"PyPI wheels: {extra_wheels_lock}"))
        parts.append(("code", _code_layer(work), True, f"model_server -> /{CODE_DIR}"))
        if weights == "layer":
            tar = _weights_layer(example, weight_dirs[weights_version], work)
            parts.append(
                ("weights", tar, False, f"weights v{weights_version} -> {example.baked_path}")
            )
        layers, infos = [], []
        for part, tar, compress, created_by in parts:
            if compress:
                layer = oci.gzip_layer(image_layout, tar, created_by, cache_dir)
            else:
                layer = oci.tar_layer(image_layout, tar, created_by)
            layers.append(layer)
            infos.append(
                LayerInfo(
                    part,
                    layer.descriptor.digest,
                    layer.diff_id,
                    layer.descriptor.size,
                    os.path.getsize(tar),
                )
            )
        labels = _labels(example, image_tag, weights, weights_version, extra_wheels_lock)
        manifest = oci.write_image(
            image_layout,
            layers,
            epoch=EPOCH,
            config=_runtime_config(example, labels),
            annotations={
                "org.opencontainers.image.title": example.name,
                "org.opencontainers.image.version": image_tag,
                "org.opencontainers.image.created": oci.iso8601(EPOCH),
            },
        )
        image_layout.tag(manifest, image_tag)
        seconds["image"] = time.monotonic() - t0
        t0 = time.monotonic()
        artifacts = {}
        for version in artifact_versions:
            directory = weight_dirs[version]
            files = [
                oci.ArtifactFile(
                    os.path.join(directory, file_name),
                    file_name,
                    example.file_types.get(file_name, oci.WEIGHT_RAW),
                )
                for file_name in sorted(os.listdir(directory))
            ]
            descriptor = oci.write_artifact(
                artifact_layout,
                files,
                epoch=EPOCH,
                name=example.name,
                version=version,
                model_config=example.model_config,
                description=example.description,
            )
            artifact_layout.tag(descriptor, f"v{version}")
            size = sum(os.path.getsize(f.path) for f in files)
            artifacts[version] = (descriptor.digest, size)
        seconds["artifacts"] = time.monotonic() - t0
    seconds["total"] = time.monotonic() - started
    return BuildResult(
        example=name,
        image_layout=image_layout.path,
        image_ref=image_tag,
        image_digest=manifest.digest,
        layers=infos,
        artifact_layout=artifact_layout.path,
        artifacts=artifacts,
        rootfs_built=rootfs.built,
        seconds=seconds,
        packages=rootfs.packages,
    )
