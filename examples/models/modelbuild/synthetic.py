"""A multi-GB model artifact of random weights that the minilm server really loads and runs.

For ``bench/coldstart.py``: the cold start of a big model is pulling its bytes, reading
them into memory and the first forward pass, so the artifact is a real (if untrained)
BERT — MiniLM's tokenizer and vocabulary, with as many layers of width ``hidden_size``
as make about ``total_bytes`` of float32 weights in one ``model.safetensors``. The
embeddings it gives are meaningless; every step the server takes is the real one.

Random data does not compress, like real weights, so neither pull path gets an easy ride.
The safetensors file is written in chunks: the process never holds the weights. Needs
numpy (the test virtualenv has it). Must not import ``rootfs`` or ``push``.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelbuild import oci

__all__ = ["SyntheticModel", "write_random_bert_artifact"]

VOCAB = 30522
POSITIONS = 512
CHUNK_FLOATS = 1 << 22  # 16 MiB per write


@dataclass(frozen=True)
class SyntheticModel:
    layout: str
    tag: str
    digest: str
    weights_bytes: int  # model.safetensors
    total_bytes: int  # every blob of the artifact
    config: dict[str, Any]


def _tensors(hidden: int, layers: int) -> Iterator[tuple[str, tuple[int, ...], str]]:
    """(name, shape, init) in file order; init: normal | ones | zeros."""
    yield "embeddings.word_embeddings.weight", (VOCAB, hidden), "normal"
    yield "embeddings.position_embeddings.weight", (POSITIONS, hidden), "normal"
    yield "embeddings.token_type_embeddings.weight", (2, hidden), "normal"
    yield "embeddings.LayerNorm.weight", (hidden,), "ones"
    yield "embeddings.LayerNorm.bias", (hidden,), "zeros"
    inner = 4 * hidden
    for i in range(layers):
        p = f"encoder.layer.{i}."
        for n in ("query", "key", "value"):
            yield p + f"attention.self.{n}.weight", (hidden, hidden), "normal"
            yield p + f"attention.self.{n}.bias", (hidden,), "zeros"
        yield p + "attention.output.dense.weight", (hidden, hidden), "normal"
        yield p + "attention.output.dense.bias", (hidden,), "zeros"
        yield p + "attention.output.LayerNorm.weight", (hidden,), "ones"
        yield p + "attention.output.LayerNorm.bias", (hidden,), "zeros"
        yield p + "intermediate.dense.weight", (inner, hidden), "normal"
        yield p + "intermediate.dense.bias", (inner,), "zeros"
        yield p + "output.dense.weight", (hidden, inner), "normal"
        yield p + "output.dense.bias", (hidden,), "zeros"
        yield p + "output.LayerNorm.weight", (hidden,), "ones"
        yield p + "output.LayerNorm.bias", (hidden,), "zeros"


def _layers_for(total_bytes: int, hidden: int) -> int:
    embeddings = (VOCAB + POSITIONS + 2) * hidden * 4
    per_layer = (12 * hidden * hidden + 13 * hidden) * 4
    return max(1, round((total_bytes - embeddings) / per_layer))


def _write_safetensors(path: str, hidden: int, layers: int, seed: int) -> int:
    header: dict[str, object] = {"__metadata__": {"format": "np", "synthetic": "random"}}
    offset = 0
    entries = list(_tensors(hidden, layers))
    for name, shape, _ in entries:
        size = int(np.prod(shape)) * 4
        header[name] = {
            "dtype": "F32",
            "shape": list(shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    header_bytes += b" " * (-len(header_bytes) % 8)
    rng = np.random.default_rng(seed)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header_bytes)))
        f.write(header_bytes)
        for _, shape, init in entries:
            count = int(np.prod(shape))
            while count:
                n = min(count, CHUNK_FLOATS)
                if init == "normal":
                    chunk = rng.standard_normal(n, dtype=np.float32) * np.float32(0.02)
                else:
                    chunk = np.full(n, 1.0 if init == "ones" else 0.0, dtype=np.float32)
                f.write(chunk.tobytes())
                count -= n
    return os.path.getsize(path)


def write_random_bert_artifact(
    layout_dir: str,
    tokenizer_json: str,
    *,
    total_bytes: int = 2_500_000_000,
    hidden_size: int = 1024,
    tag: str = "v1",
    version: str = "1",
    seed: int = 0,
    epoch: int = 1_700_000_000,
    name: str = "minilm-embedding",
) -> SyntheticModel:
    """A ModelPack artifact the minilm server serves, of about ``total_bytes`` of weights.

    ``tokenizer_json``: MiniLM's (e.g. from the minilm-embedding v1 weights). The server
    must be started with ``MODEL_NAME`` = ``name``. A new ``seed`` makes new weights.
    """
    layout = oci.Layout(layout_dir)
    work = os.path.join(layout.path, ".synthetic")
    os.makedirs(work, exist_ok=True)
    layers = _layers_for(total_bytes, hidden_size)
    heads = max(1, hidden_size // 64)
    config = {
        "model_type": "bert",
        "hidden_act": "gelu",
        "hidden_size": hidden_size,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "intermediate_size": 4 * hidden_size,
        "max_position_embeddings": POSITIONS,
        "type_vocab_size": 2,
        "vocab_size": VOCAB,
        "layer_norm_eps": 1e-12,
    }
    files = {
        "config.json": json.dumps(config, indent=2).encode(),
        "sentence_bert_config.json": json.dumps({"max_seq_length": 256}).encode(),
        "model.json": json.dumps(
            {"name": name, "version": version, "synthetic": True, "seed": seed}
        ).encode(),
    }
    for file_name, data in files.items():
        with open(os.path.join(work, file_name), "wb") as f:
            f.write(data)
    weights = os.path.join(work, "model.safetensors")
    weights_bytes = _write_safetensors(weights, hidden_size, layers, seed)
    artifact_files = [
        oci.ArtifactFile(os.path.join(work, "config.json"), "config.json", oci.WEIGHT_CONFIG_RAW),
        oci.ArtifactFile(os.path.join(work, "model.json"), "model.json", oci.WEIGHT_CONFIG_RAW),
        oci.ArtifactFile(weights, "model.safetensors", oci.WEIGHT_RAW),
        oci.ArtifactFile(
            os.path.join(work, "sentence_bert_config.json"),
            "sentence_bert_config.json",
            oci.WEIGHT_CONFIG_RAW,
        ),
        oci.ArtifactFile(tokenizer_json, "tokenizer.json", oci.WEIGHT_CONFIG_RAW),
    ]
    descriptor = oci.write_artifact(
        layout,
        artifact_files,
        epoch=epoch,
        name=name,
        version=version,
        model_config={"architecture": "transformer", "format": "safetensors", "precision": "fp32"},
        description=f"random BERT weights ({layers} layers x {hidden_size}), for benchmarks",
    )
    layout.tag(descriptor, tag)
    total = sum(os.path.getsize(f.path) for f in artifact_files)
    for file_name in (*files, "model.safetensors"):  # the blobs are hard links or copies
        os.unlink(os.path.join(work, file_name))
    os.rmdir(work)
    return SyntheticModel(layout.path, tag, descriptor.digest, weights_bytes, total, config)
