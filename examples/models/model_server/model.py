"""What the HTTP side needs from a model, and where a model's files are found.

A ``Model`` loads its files from one directory, describes its tensors for the v2
metadata endpoint, turns one validated request into a batch item (raising
``ProtocolError`` for inputs it cannot take), and runs a whole batch of items at once.

The directory: ``MODEL_DIR`` (default ``/models/<name>``, where the Kubernetes manifests
mount the model artifact as an image volume) if it holds the model's files, else
``MODEL_FALLBACK_DIR`` (default ``/opt/model/<name>``: weights baked into the image as
their own layer). Must not import ``app``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from model_server.protocol import InferenceRequest

__all__ = ["Model", "ModelCard", "WeightsNotFound", "read_card", "resolve_model_dir"]

log = logging.getLogger(__name__)
CARD = "model.json"


class WeightsNotFound(Exception):
    pass


class Model(Protocol):
    name: str
    platform: str
    #: Set by ``load``: the version from the model card, and "cpu" or "cuda:N".
    version: str | None
    device: str

    @property
    def output_names(self) -> Sequence[str]: ...

    def load(self, directory: str) -> None: ...

    def metadata(self) -> dict[str, Any]:
        """``inputs`` and ``outputs``: lists of {name, datatype, shape} (-1: any size)."""
        ...

    def prepare(self, request: InferenceRequest) -> tuple[Any, int]:
        """The batch item for ``request`` and how many rows it adds to a batch."""
        ...

    def run_batch(self, items: list[Any]) -> list[dict[str, Any]]:
        """One output mapping (name → ndarray or list of str) per item, in order."""
        ...


ModelCard = Mapping[str, Any]


def read_card(directory: str) -> dict[str, Any]:
    """``model.json`` of a weights directory: at least ``name`` and ``version``."""
    with open(os.path.join(directory, CARD)) as f:
        card: dict[str, Any] = json.load(f)
    for key in ("name", "version"):
        if not isinstance(card.get(key), str):
            raise ValueError(f"{directory}/{CARD}: '{key}' must be a string")
    return card


def resolve_model_dir(
    name: str, required: Sequence[str], environ: Mapping[str, str] | None = None
) -> str:
    """The first of MODEL_DIR and MODEL_FALLBACK_DIR that holds every ``required`` file."""
    env = os.environ if environ is None else environ
    candidates = [
        env.get("MODEL_DIR") or f"/models/{name}",
        env.get("MODEL_FALLBACK_DIR") or f"/opt/model/{name}",
    ]
    problems: list[str] = []
    for directory in candidates:
        missing = [f for f in required if not os.path.isfile(os.path.join(directory, f))]
        if not missing:
            if directory != candidates[0]:
                log.warning("%s; using the weights baked into the image", problems[0])
            return directory
        problems.append(f"{directory} lacks {', '.join(missing)}")
    raise WeightsNotFound(f"no weights for model {name}: " + "; ".join(problems))
