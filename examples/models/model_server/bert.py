"""A BERT encoder forward pass on an array module: numpy on the CPU, CuPy on a GPU.

Owns the arithmetic of Hugging Face's ``BertModel`` (absolute position embeddings,
post-LayerNorm blocks, exact erf GELU) for inference, with weights from a safetensors
file, plus sentence-transformers' mean pooling and L2 normalisation. No torch: the
images stay a few hundred MB. Every function takes ``xp`` (``numpy`` or ``cupy``) and
keeps arrays on that module's device; weights of any float dtype (fp16 included) are
computed in float32.

Must not import ``app``, tokenizers or safetensors (the caller loads the tensors).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["BertConfig", "BertEncoder", "erf", "mean_pool_normalize"]


@dataclass(frozen=True)
class BertConfig:
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    layer_norm_eps: float = 1e-12
    max_position_embeddings: int = 512

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> BertConfig:
        if value.get("model_type", "bert") != "bert":
            raise ValueError(f"not a BERT config: model_type {value.get('model_type')!r}")
        if value.get("hidden_act", "gelu") != "gelu":
            raise ValueError(f"unsupported hidden_act {value.get('hidden_act')!r}")
        if value.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError("only absolute position embeddings are supported")
        return cls(
            hidden_size=int(value["hidden_size"]),
            num_hidden_layers=int(value["num_hidden_layers"]),
            num_attention_heads=int(value["num_attention_heads"]),
            intermediate_size=int(value["intermediate_size"]),
            layer_norm_eps=float(value.get("layer_norm_eps", 1e-12)),
            max_position_embeddings=int(value.get("max_position_embeddings", 512)),
        )


def erf(xp: Any, x: Any) -> Any:
    """erf(x), to float32 precision (numpy has no erf; CuPy's own one is used on a GPU).

    Abramowitz & Stegun 7.1.26 has an absolute error of 1.5e-7; with x > 0 folded.
    """
    if xp is not np:
        import cupyx.scipy.special  # only where CuPy is installed

        return cupyx.scipy.special.erf(x)
    sign = xp.sign(x)
    a = xp.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (
        0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429)))
    )
    return sign * (1.0 - poly * xp.exp(-a * a))


def _layer_norm(xp: Any, x: Any, weight: Any, bias: Any, eps: float) -> Any:
    mean = x.mean(axis=-1, keepdims=True)
    centered = x - mean
    variance = (centered * centered).mean(axis=-1, keepdims=True)
    return centered / xp.sqrt(variance + eps) * weight + bias


def _gelu(xp: Any, x: Any) -> Any:
    return 0.5 * x * (1.0 + erf(xp, x * (1.0 / math.sqrt(2.0))))


def _softmax(xp: Any, x: Any) -> Any:
    shifted = xp.exp(x - x.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


class BertEncoder:
    """``encoder(input_ids, attention_mask, token_type_ids)`` → last hidden state [B, L, H].

    ``tensors`` are the safetensors entries by their Hugging Face names (with or without a
    ``bert.`` prefix). Q, K and V are fused into one matrix per layer, so attention's input
    projection is one matmul; weights stay as stored ([out, in]) and are multiplied as
    ``x @ W.T`` (a transposed GEMM, no copy: a multi-GB model is held once).
    """

    def __init__(self, tensors: Mapping[str, np.ndarray], config: BertConfig, xp: Any = np):
        self.config = config
        self.xp = xp
        prefix = "bert." if "bert.embeddings.word_embeddings.weight" in tensors else ""

        def get(name: str) -> Any:
            key = prefix + name
            if key not in tensors:
                raise KeyError(f"weights lack tensor {key}")
            return xp.asarray(np.asarray(tensors[key], dtype=np.float32))

        self.word = get("embeddings.word_embeddings.weight")
        self.position = get("embeddings.position_embeddings.weight")
        self.token_type = get("embeddings.token_type_embeddings.weight")
        self.emb_norm = (get("embeddings.LayerNorm.weight"), get("embeddings.LayerNorm.bias"))
        if self.word.shape[1] != config.hidden_size:
            raise ValueError(f"word embeddings are {self.word.shape}, hidden size {config}")
        self.layers: list[dict[str, Any]] = []
        for i in range(config.num_hidden_layers):
            p = f"encoder.layer.{i}."
            qkv_w = xp.concatenate(
                [get(p + f"attention.self.{n}.weight") for n in ("query", "key", "value")]
            )
            qkv_b = xp.concatenate(
                [get(p + f"attention.self.{n}.bias") for n in ("query", "key", "value")]
            )
            self.layers.append(
                {
                    "qkv_w": qkv_w,
                    "qkv_b": qkv_b,
                    "out_w": get(p + "attention.output.dense.weight"),
                    "out_b": get(p + "attention.output.dense.bias"),
                    "norm1": (
                        get(p + "attention.output.LayerNorm.weight"),
                        get(p + "attention.output.LayerNorm.bias"),
                    ),
                    "in_w": get(p + "intermediate.dense.weight"),
                    "in_b": get(p + "intermediate.dense.bias"),
                    "ff_w": get(p + "output.dense.weight"),
                    "ff_b": get(p + "output.dense.bias"),
                    "norm2": (get(p + "output.LayerNorm.weight"), get(p + "output.LayerNorm.bias")),
                }
            )

    def __call__(self, input_ids: Any, attention_mask: Any, token_type_ids: Any = None) -> Any:
        xp, config = self.xp, self.config
        ids = xp.asarray(input_ids)
        batch, length = ids.shape
        if length > config.max_position_embeddings:
            raise ValueError(f"sequence of {length} tokens over {config.max_position_embeddings}")
        types = xp.zeros_like(ids) if token_type_ids is None else xp.asarray(token_type_ids)
        x = self.word[ids] + self.position[xp.arange(length)][None] + self.token_type[types]
        x = _layer_norm(xp, x, *self.emb_norm, config.layer_norm_eps)
        mask = xp.asarray(attention_mask, dtype=xp.float32)
        # Padded keys get the most negative float, as transformers' extended mask does.
        additive = ((1.0 - mask) * np.finfo(np.float32).min)[:, None, None, :]
        heads = config.num_attention_heads
        head_size = config.hidden_size // heads
        scale = 1.0 / math.sqrt(head_size)
        for layer in self.layers:
            qkv = x @ layer["qkv_w"].T + layer["qkv_b"]  # [B, L, 3H]
            qkv = qkv.reshape(batch, length, 3, heads, head_size).transpose(2, 0, 3, 1, 4)
            q, k, v = qkv[0], qkv[1], qkv[2]  # [B, heads, L, d]
            scores = (q @ k.transpose(0, 1, 3, 2)) * scale + additive
            context = _softmax(xp, scores) @ v  # [B, heads, L, d]
            context = context.transpose(0, 2, 1, 3).reshape(batch, length, config.hidden_size)
            attended = context @ layer["out_w"].T + layer["out_b"]
            weight, bias = layer["norm1"]
            x = _layer_norm(xp, attended + x, weight, bias, config.layer_norm_eps)
            hidden = _gelu(xp, x @ layer["in_w"].T + layer["in_b"])
            out = hidden @ layer["ff_w"].T + layer["ff_b"]
            weight, bias = layer["norm2"]
            x = _layer_norm(xp, out + x, weight, bias, config.layer_norm_eps)
        return x


def mean_pool_normalize(xp: Any, hidden: Any, attention_mask: Any) -> Any:
    """sentence-transformers' Pooling(mean) + Normalize: one unit vector per sequence."""
    mask = xp.asarray(attention_mask, dtype=xp.float32)[:, :, None]
    summed = (hidden * mask).sum(axis=1)
    counts = xp.maximum(mask.sum(axis=1), 1e-9)
    pooled = summed / counts
    norms = xp.maximum(xp.sqrt((pooled * pooled).sum(axis=1, keepdims=True)), 1e-12)
    return pooled / norms
