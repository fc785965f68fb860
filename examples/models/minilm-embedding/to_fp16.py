"""Write a copy of a safetensors file with every float32 tensor stored as float16.

    python3 to_fp16.py IN.safetensors OUT.safetensors

Makes version 2 of the minilm-embedding model artifact: the same network in half the
bytes (the server computes in float32 either way; embeddings move by ~1e-3). The build
runs it with the image's own numpy and safetensors, in a chroot of the image's rootfs.
"""

from __future__ import annotations

import sys

import numpy as np
from safetensors.numpy import load_file, save_file


def main(source: str, target: str) -> None:
    tensors = load_file(source)
    converted = {
        name: value.astype(np.float16) if value.dtype == np.float32 else value
        for name, value in tensors.items()
    }
    save_file(converted, target, metadata={"format": "np", "converted_from": "float32"})


if __name__ == "__main__":
    main(*sys.argv[1:3])
