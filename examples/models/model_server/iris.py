"""The sklearn-iris model: a fitted scikit-learn pipeline behind the v2 protocol.

Input ``input-0``: FP32/FP64/INT rows of the four iris features, shape ``[N, 4]``.
Outputs: ``predict`` (INT64 class index, ``[N]``), ``label`` (BYTES class name, ``[N]``)
and ``probabilities`` (FP32, ``[N, 3]``). A batch stacks every request's rows into one
``predict_proba`` call.

``model.joblib`` is a pickle: loading it runs code from the weights, so mount only
artifacts you trust (as with any scikit-learn server). Must not import ``app``.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from model_server.model import read_card
from model_server.protocol import InferenceRequest, ProtocolError

__all__ = ["IrisModel"]

_NUMERIC = {"FP16", "FP32", "FP64", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16"}


class IrisModel:
    platform = "scikit-learn"
    required_files = ("model.joblib", "model.json")
    output_names = ("predict", "label", "probabilities")

    def __init__(self, name: str = "sklearn-iris") -> None:
        self.name = name
        self.version: str | None = None
        self.device = "cpu"
        self._estimator: Any = None
        self._features = 4
        self._classes: list[str] = []

    def load(self, directory: str) -> None:
        import joblib  # the image's scikit-learn stack; imported only by this model

        card = read_card(directory)
        estimator = joblib.load(os.path.join(directory, "model.joblib"))
        self._features = len(card.get("feature_names") or []) or int(estimator.n_features_in_)
        self._classes = [str(c) for c in card.get("class_names") or estimator.classes_]
        self._estimator = estimator
        self.version = card["version"]

    def metadata(self) -> dict[str, Any]:
        classes = len(self._classes) or 3
        return {
            "inputs": [{"name": "input-0", "datatype": "FP32", "shape": [-1, self._features]}],
            "outputs": [
                {"name": "predict", "datatype": "INT64", "shape": [-1]},
                {"name": "label", "datatype": "BYTES", "shape": [-1]},
                {"name": "probabilities", "datatype": "FP32", "shape": [-1, classes]},
            ],
        }

    def prepare(self, request: InferenceRequest) -> tuple[np.ndarray, int]:
        if len(request.inputs) != 1:
            raise ProtocolError(f"expected one input, got {len(request.inputs)}")
        tensor = request.inputs[0]
        if tensor.datatype not in _NUMERIC:
            raise ProtocolError(f"input '{tensor.name}': datatype must be numeric (FP32)")
        rows = np.asarray(tensor.data, dtype=np.float64)
        if rows.ndim == 1:
            rows = rows.reshape(1, -1)
        if rows.ndim != 2 or rows.shape[1] != self._features or rows.shape[0] == 0:
            raise ProtocolError(
                f"input '{tensor.name}': shape must be [N, {self._features}] with N >= 1, "
                f"got {list(tensor.shape)}"
            )
        return rows, rows.shape[0]

    def run_batch(self, items: list[np.ndarray]) -> list[dict[str, Any]]:
        stacked = np.concatenate(items)
        probabilities = self._estimator.predict_proba(stacked).astype(np.float32)
        classes = probabilities.argmax(axis=1)
        results = []
        start = 0
        for rows in items:
            end = start + rows.shape[0]
            results.append(
                {
                    "predict": classes[start:end].astype(np.int64),
                    "label": [self._classes[i] for i in classes[start:end]],
                    "probabilities": probabilities[start:end],
                }
            )
            start = end
        return results
