"""The Open Inference Protocol (KServe v2) REST messages: requests in, responses out.

Owns parsing and validating an inference request body into numpy arrays (or lists of
strings for ``BYTES``), and writing responses and the v2 error body ``{"error": msg}``.
Nothing here knows a model, the batcher or HTTP; it must not import ``app``.

Spec: https://github.com/kserve/open-inference-protocol (REST, "Inference" section).
Tensor data may be given flat or nested row-major; either way its element count must
equal the product of ``shape``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "DATATYPES",
    "InferenceRequest",
    "ProtocolError",
    "Tensor",
    "datatype_of",
    "error_body",
    "parse_request",
    "response_body",
]

#: v2 tensor datatypes and the numpy dtype each is held in (``BYTES``: a list of str).
DATATYPES: Mapping[str, Any] = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
    "BYTES": None,
}
_INTEGER = {"UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64"}
_FLOAT = {"FP16", "FP32", "FP64"}


class ProtocolError(Exception):
    """A request the server refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass(frozen=True)
class Tensor:
    """One named input tensor: ``data`` is an ndarray of ``shape``, or a flat list of str."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: Any
    parameters: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class InferenceRequest:
    id: str | None
    inputs: tuple[Tensor, ...]
    #: Output names the client asked for; empty means every output.
    outputs: tuple[str, ...] = ()
    parameters: Mapping[str, Any] = field(default_factory=dict)

    def input(self, name: str) -> Tensor:
        for tensor in self.inputs:
            if tensor.name == name:
                return tensor
        raise ProtocolError(f"input '{name}' is missing")


def _flatten(data: Any, out: list[Any]) -> None:
    if isinstance(data, list):
        for item in data:
            _flatten(item, out)
    else:
        out.append(data)


def _shape(value: Any, where: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(
        isinstance(dim, int) and not isinstance(dim, bool) and dim >= 0 for dim in value
    ):
        raise ProtocolError(f"{where}: 'shape' must be a list of non-negative integers")
    return tuple(value)


def _check_elements(values: list[Any], datatype: str, where: str) -> None:
    if datatype == "BOOL":
        ok = all(isinstance(v, bool) for v in values)
        expected = "booleans"
    elif datatype in _INTEGER:
        ok = all(isinstance(v, int) and not isinstance(v, bool) for v in values)
        expected = "integers"
    elif datatype in _FLOAT:
        ok = all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            for v in values
        )
        expected = "finite numbers"
    else:  # BYTES
        ok = all(isinstance(v, str) for v in values)
        expected = "strings"
    if not ok:
        raise ProtocolError(f"{where}: {datatype} data must be {expected}")


def _tensor(value: Any, index: int) -> Tensor:
    if not isinstance(value, dict):
        raise ProtocolError(f"inputs[{index}] must be an object")
    name = value.get("name")
    if not isinstance(name, str) or not name:
        raise ProtocolError(f"inputs[{index}]: 'name' must be a non-empty string")
    where = f"input '{name}'"
    datatype = value.get("datatype")
    if not isinstance(datatype, str) or datatype not in DATATYPES:
        raise ProtocolError(f"{where}: unknown datatype {datatype!r}")
    shape = _shape(value.get("shape"), where)
    if "data" not in value:
        raise ProtocolError(f"{where}: 'data' is missing (binary tensor data is not supported)")
    flat: list[Any] = []
    _flatten(value["data"], flat)
    expected = math.prod(shape)
    if len(flat) != expected:
        raise ProtocolError(
            f"{where}: shape {list(shape)} needs {expected} elements, data has {len(flat)}"
        )
    _check_elements(flat, datatype, where)
    parameters = value.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise ProtocolError(f"{where}: 'parameters' must be an object")
    if datatype == "BYTES":
        return Tensor(name, datatype, shape, flat, parameters)
    try:
        array = np.asarray(flat, dtype=DATATYPES[datatype]).reshape(shape)
    except OverflowError:
        raise ProtocolError(f"{where}: a value does not fit {datatype}") from None
    return Tensor(name, datatype, shape, array, parameters)


def parse_request(body: bytes) -> InferenceRequest:
    """The request in ``body``, validated; every problem is a ``ProtocolError`` (400)."""
    try:
        value = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"request body is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ProtocolError("request body must be a JSON object")
    request_id = value.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise ProtocolError("'id' must be a string")
    inputs = value.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise ProtocolError("'inputs' must be a non-empty list")
    tensors = tuple(_tensor(item, i) for i, item in enumerate(inputs))
    names = [tensor.name for tensor in tensors]
    if len(set(names)) != len(names):
        raise ProtocolError("input names must be unique")
    outputs: list[str] = []
    for i, item in enumerate(value.get("outputs") or []):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise ProtocolError(f"outputs[{i}] must be an object with a string 'name'")
        outputs.append(item["name"])
    parameters = value.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise ProtocolError("'parameters' must be an object")
    return InferenceRequest(request_id, tensors, tuple(outputs), parameters)


def datatype_of(array: Any) -> str:
    """The v2 datatype of an output array (a list of str is ``BYTES``)."""
    if isinstance(array, list):
        return "BYTES"
    for name, dtype in DATATYPES.items():
        if dtype is not None and array.dtype == dtype:
            return name
    raise TypeError(f"no v2 datatype for {array.dtype}")


def _output(name: str, value: Any) -> dict[str, Any]:
    if isinstance(value, list):
        return {"name": name, "datatype": "BYTES", "shape": [len(value)], "data": value}
    return {
        "name": name,
        "datatype": datatype_of(value),
        "shape": list(value.shape),
        "data": value.reshape(-1).tolist(),
    }


def response_body(
    model_name: str,
    model_version: str | None,
    request_id: str | None,
    outputs: Mapping[str, Any],
    wanted: Sequence[str] = (),
) -> bytes:
    """An inference response with ``outputs`` (all, or the ``wanted`` names in that order)."""
    names: Iterable[str] = wanted or outputs.keys()
    body: dict[str, Any] = {"model_name": model_name}
    if model_version is not None:
        body["model_version"] = model_version
    if request_id is not None:
        body["id"] = request_id
    body["outputs"] = [_output(name, outputs[name]) for name in names]
    return json.dumps(body, separators=(",", ":")).encode()


def error_body(message: str) -> bytes:
    return json.dumps({"error": message}).encode()
