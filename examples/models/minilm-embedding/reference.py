"""Recompute ``tests/data/minilm_reference.json`` with sentence-transformers (torch).

    python3 -m venv /tmp/st && /tmp/st/bin/pip install torch==2.13.0 sentence-transformers
    HF_HUB_OFFLINE=1 /tmp/st/bin/python reference.py WEIGHTS_DIR OUT.json

``WEIGHTS_DIR``: minilm-embedding v1's files (``modelbuild.recipes.minilm_v1_weights``).
The committed file came from torch 2.13.0 (CPU) and sentence-transformers 6.2.0; the
numpy forward pass matches it to 2e-7. Not part of the test run (it needs torch).
"""

from __future__ import annotations

import json
import sys

from sentence_transformers import SentenceTransformer

TEXTS = [
    "A man is eating food.",
    "Hello world",
    "The quick brown fox jumps over the lazy dog near the riverbank at dawn.",
    "",
    "Kubernetes schedules pods onto nodes; the kubelet runs them through the CRI.",
]


def main(weights_dir: str, out: str) -> None:
    model = SentenceTransformer(weights_dir, device="cpu")
    embeddings = model.encode(TEXTS, batch_size=8, convert_to_numpy=True)
    rows = [[round(float(x), 7) for x in row] for row in embeddings]
    with open(out, "w") as f:
        json.dump({"texts": TEXTS, "embeddings": rows}, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
