"""The minilm-embedding model: all-MiniLM-L6-v2 sentence embeddings behind the v2 protocol.

Input ``text``: BYTES, shape ``[N]`` (UTF-8 strings). Output ``embedding``: FP32
``[N, 384]``, unit length (cosine similarity is a dot product). A batch tokenizes every
request's texts together, pads them to the longest, and runs one forward pass.

Files (the model artifact's, or those baked into the image): ``config.json``,
``model.safetensors`` (fp32 or fp16), ``tokenizer.json``, ``model.json`` (the card) and
optionally ``sentence_bert_config.json`` (``max_seq_length``, 256 for this model).

Device: ``DEVICE=auto`` (the default) runs on CuPy when it imports and sees a GPU — one
that the runtime passed into the container — and on numpy otherwise; ``cpu`` and
``cuda`` force one (``cuda`` fails to load without a GPU). Must not import ``app``.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import numpy as np

from model_server.bert import BertConfig, BertEncoder, mean_pool_normalize
from model_server.model import read_card
from model_server.protocol import InferenceRequest, ProtocolError

__all__ = ["MiniLMModel", "select_array_module"]

log = logging.getLogger(__name__)
MAX_TEXT_CHARS = 100_000


def select_array_module(device: str) -> tuple[Any, str]:
    """(array module, device name) for ``device`` = auto | cpu | cuda."""
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"DEVICE must be auto, cpu or cuda, not {device!r}")
    if device == "cpu":
        return np, "cpu"
    try:
        import cupy

        count = int(cupy.cuda.runtime.getDeviceCount())
    except Exception as exc:  # not installed, no driver, no device: all mean "no GPU"
        if device == "cuda":
            raise RuntimeError(f"DEVICE=cuda but CuPy cannot use a GPU: {exc}") from exc
        if _gpu_passed_in():
            # The pod holds a GPU it will not use: say so loudly, it costs a GPU.
            log.warning(
                "a GPU is passed in but CuPy cannot use it (%s); running on the CPU "
                "(build the image with CuPy: the Dockerfile's WITH_CUPY=1)",
                exc,
            )
        else:
            log.info("no usable GPU (%s); running on the CPU", exc)
        return np, "cpu"
    if count == 0:
        if device == "cuda":
            raise RuntimeError("DEVICE=cuda but no GPU is visible")
        return np, "cpu"
    return cupy, f"cuda:{cupy.cuda.runtime.getDevice()}"


def _gpu_passed_in() -> bool:
    """Whether the container was given an NVIDIA GPU (its device node is there)."""
    try:
        return any(
            n[len("nvidia") :].isdigit() for n in os.listdir("/dev") if n.startswith("nvidia")
        )
    except OSError:
        return False


class MiniLMModel:
    platform = "numpy-bert"
    required_files = ("config.json", "model.safetensors", "tokenizer.json", "model.json")
    output_names = ("embedding",)

    def __init__(self, name: str = "minilm-embedding", device: str = "auto") -> None:
        self.name = name
        self.version: str | None = None
        self.requested_device = device
        self.device = "cpu"
        self.dimension = 384
        self._xp: Any = np
        self._encoder: BertEncoder | None = None
        self._tokenizer: Any = None

    def load(self, directory: str) -> None:
        from safetensors import safe_open
        from tokenizers import Tokenizer

        card = read_card(directory)
        with open(os.path.join(directory, "config.json")) as f:
            config = BertConfig.from_json(json.load(f))
        max_length = 256
        sbert = os.path.join(directory, "sentence_bert_config.json")
        if os.path.exists(sbert):
            with open(sbert) as f:
                max_length = int(json.load(f).get("max_seq_length", max_length))
        max_length = min(max_length, config.max_position_embeddings)
        tokenizer = Tokenizer.from_file(os.path.join(directory, "tokenizer.json"))
        tokenizer.enable_truncation(max_length)
        tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")  # to the batch's longest
        xp, device = select_array_module(self.requested_device)
        # safe_open maps the file and copies one tensor at a time: a multi-GB model peaks
        # at about its own size in memory, not twice that (load_file reads it all first).
        with safe_open(os.path.join(directory, "model.safetensors"), framework="np") as f:
            tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
        self._encoder = BertEncoder(tensors, config, xp)
        self._tokenizer = tokenizer
        self._xp = xp
        self.device = device
        self.dimension = config.hidden_size
        self.platform = "cupy-bert" if xp is not np else "numpy-bert"
        self.version = card["version"]

    def metadata(self) -> dict[str, Any]:
        return {
            "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
            "outputs": [{"name": "embedding", "datatype": "FP32", "shape": [-1, self.dimension]}],
        }

    def prepare(self, request: InferenceRequest) -> tuple[list[str], int]:
        if len(request.inputs) != 1:
            raise ProtocolError(f"expected one input, got {len(request.inputs)}")
        tensor = request.inputs[0]
        if tensor.datatype != "BYTES":
            raise ProtocolError(f"input '{tensor.name}': datatype must be BYTES")
        if len(tensor.shape) != 1 or tensor.shape[0] == 0:
            raise ProtocolError(
                f"input '{tensor.name}': shape must be [N] with N >= 1, got {list(tensor.shape)}"
            )
        texts: list[str] = list(tensor.data)
        if any(len(text) > MAX_TEXT_CHARS for text in texts):
            raise ProtocolError(f"input '{tensor.name}': a text is over {MAX_TEXT_CHARS} chars")
        return texts, len(texts)

    def embed(self, texts: list[str]) -> np.ndarray:
        """Unit-length embeddings of ``texts`` as a float32 [N, 384] numpy array."""
        assert self._encoder is not None, "load() first"
        encodings = self._tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        types = np.array([e.type_ids for e in encodings], dtype=np.int64)
        xp = self._xp
        hidden = self._encoder(xp.asarray(ids), xp.asarray(mask), xp.asarray(types))
        pooled = mean_pool_normalize(xp, hidden, xp.asarray(mask))
        result = pooled.get() if xp is not np else pooled
        return np.ascontiguousarray(result, dtype=np.float32)

    def run_batch(self, items: list[list[str]]) -> list[dict[str, Any]]:
        embeddings = self.embed([text for texts in items for text in texts])
        results, start = [], 0
        for texts in items:
            results.append({"embedding": embeddings[start : start + len(texts)]})
            start += len(texts)
        return results
