"""The example model server's parts on their own: v2 messages, the batcher, erf, weights dirs."""

from __future__ import annotations

import asyncio
import json
import math
import os
import threading
import time
from typing import Any

import numpy as np
import pytest

from model_server.batching import BatcherStopped, DynamicBatcher, QueueFull
from model_server.bert import erf
from model_server.model import WeightsNotFound, resolve_model_dir
from model_server.protocol import ProtocolError, parse_request, response_body


def _body(*inputs: dict[str, Any], **extra: object) -> bytes:
    return json.dumps({"inputs": list(inputs), **extra}).encode()


# -- protocol ----------------------------------------------------------------------------


def test_parse_nested_and_flat_data_alike() -> None:
    nested = parse_request(
        _body({"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [[1, 2.5], [3, 4]]}),
    )
    flat = parse_request(
        _body({"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [1, 2.5, 3, 4]}),
    )
    for request in (nested, flat):
        tensor = request.input("x")
        assert tensor.data.dtype == np.float32
        assert tensor.data.tolist() == [[1.0, 2.5], [3.0, 4.0]]


def test_parse_keeps_id_outputs_parameters_and_bytes() -> None:
    request = parse_request(
        _body(
            {"name": "text", "datatype": "BYTES", "shape": [2], "data": ["a", "b"]},
            id="req-1",
            outputs=[{"name": "embedding"}],
            parameters={"k": 1},
        )
    )
    assert request.id == "req-1"
    assert request.outputs == ("embedding",)
    assert request.parameters == {"k": 1}
    assert request.input("text").data == ["a", "b"]
    with pytest.raises(ProtocolError, match="input 'other' is missing"):
        request.input("other")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b"{}", "'inputs' must be a non-empty list"),
        (json.dumps({"inputs": []}).encode(), "non-empty list"),
        (json.dumps({"inputs": [1]}).encode(), r"inputs\[0\] must be an object"),
        (_body({"datatype": "FP32", "shape": [1], "data": [1]}), "'name' must be"),
        (_body({"name": "x", "datatype": "FLOAT", "shape": [1], "data": [1]}), "unknown datatype"),
        (_body({"name": "x", "datatype": "FP32", "shape": [-1], "data": [1]}), "non-negative"),
        (_body({"name": "x", "datatype": "FP32", "shape": "1", "data": [1]}), "'shape' must be"),
        (_body({"name": "x", "datatype": "FP32", "shape": [1]}), "'data' is missing"),
        (_body({"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [1, 2, 3]}), "needs 4"),
        (_body({"name": "x", "datatype": "FP32", "shape": [1], "data": ["1"]}), "finite numbers"),
        (_body({"name": "x", "datatype": "INT64", "shape": [1], "data": [1.5]}), "integers"),
        (_body({"name": "x", "datatype": "INT64", "shape": [1], "data": [True]}), "integers"),
        (_body({"name": "x", "datatype": "BOOL", "shape": [1], "data": [1]}), "booleans"),
        (_body({"name": "x", "datatype": "BYTES", "shape": [1], "data": [1]}), "strings"),
        (_body({"name": "x", "datatype": "UINT8", "shape": [1], "data": [-1]}), "does not fit"),
        (b'{"inputs": [{"name": "x", "datatype": "FP64", "shape": [1], "data": [NaN]}]}', "finite"),
        (
            _body(
                {"name": "x", "datatype": "FP32", "shape": [1], "data": [1]},
                {"name": "x", "datatype": "FP32", "shape": [1], "data": [1]},
            ),
            "unique",
        ),
        (
            _body({"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}, outputs=["y"]),
            r"outputs\[0\]",
        ),
        (_body({"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}, id=5), "'id'"),
    ],
)
def test_bad_requests_are_400_with_a_reason(body: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message) as caught:
        parse_request(body)
    assert caught.value.status == 400


def test_response_body_is_v2_shaped() -> None:
    outputs = {"a": np.array([[1, 2]], dtype=np.int64), "b": ["x"]}
    body = json.loads(response_body("m", "3", "id-9", outputs))
    assert body == {
        "model_name": "m",
        "model_version": "3",
        "id": "id-9",
        "outputs": [
            {"name": "a", "datatype": "INT64", "shape": [1, 2], "data": [1, 2]},
            {"name": "b", "datatype": "BYTES", "shape": [1], "data": ["x"]},
        ],
    }
    only_b = json.loads(response_body("m", None, None, outputs, wanted=("b",)))
    assert [o["name"] for o in only_b["outputs"]] == ["b"]
    assert "model_version" not in only_b and "id" not in only_b


# -- batcher -----------------------------------------------------------------------------


class Recorder:
    """run_batch for tests: doubles each item, records batches, optionally slow or failing."""

    def __init__(self, delay: float = 0.0, fail: bool = False) -> None:
        self.batches: list[list[int]] = []
        self.delay = delay
        self.fail = fail
        self.threads: set[int] = set()

    def __call__(self, items: list[int]) -> list[int]:
        self.threads.add(threading.get_ident())
        self.batches.append(list(items))
        time.sleep(self.delay)
        if self.fail:
            raise ValueError("model exploded")
        return [2 * item for item in items]


async def test_concurrent_requests_share_one_batch_in_a_worker_thread() -> None:
    recorder = Recorder()
    lengths: list[int] = []
    sizes: list[int] = []
    batcher: DynamicBatcher[int, int] = DynamicBatcher(
        recorder, max_batch_size=32, max_wait_s=0.05, on_queue_length=lengths.append,
        on_batch=sizes.append,
    )  # fmt: skip
    batcher.start()
    try:
        results = await asyncio.gather(*(batcher.submit(i) for i in range(5)))
    finally:
        await batcher.stop()
    assert results == [0, 2, 4, 6, 8]
    assert recorder.batches == [[0, 1, 2, 3, 4]]
    assert sizes == [5]
    assert max(lengths) >= 4 and lengths[-1] == 0
    assert threading.get_ident() not in recorder.threads  # the loop never ran the model


async def test_batches_close_at_max_size_and_an_oversized_item_runs_alone() -> None:
    recorder = Recorder()
    batcher: DynamicBatcher[int, int] = DynamicBatcher(recorder, max_batch_size=4, max_wait_s=0.02)
    batcher.start()
    try:
        await asyncio.gather(*(batcher.submit(i) for i in range(10)))
        assert [len(b) for b in recorder.batches] == [4, 4, 2]
        recorder.batches.clear()
        await asyncio.gather(batcher.submit(100, rows=10), batcher.submit(1), batcher.submit(2))
        assert recorder.batches == [[100], [1, 2]]
    finally:
        await batcher.stop()


async def test_a_lone_request_waits_at_most_max_wait() -> None:
    recorder = Recorder()
    for wait, low, high in ((0.0, 0.0, 0.1), (0.2, 0.18, 1.0)):
        batcher: DynamicBatcher[int, int] = DynamicBatcher(recorder, max_wait_s=wait)
        batcher.start()
        started = time.monotonic()
        try:
            assert await batcher.submit(21) == 42
        finally:
            await batcher.stop()
        assert low <= time.monotonic() - started < high


async def test_requests_arriving_while_the_model_is_busy_form_the_next_batch() -> None:
    recorder = Recorder(delay=0.2)
    batcher: DynamicBatcher[int, int] = DynamicBatcher(recorder, max_wait_s=0.0)
    batcher.start()
    try:
        first = asyncio.ensure_future(batcher.submit(0))
        await asyncio.sleep(0.05)  # the model is now busy with [0]
        rest = [asyncio.ensure_future(batcher.submit(i)) for i in range(1, 6)]
        await asyncio.gather(first, *rest)
    finally:
        await batcher.stop()
    assert recorder.batches == [[0], [1, 2, 3, 4, 5]]


async def test_a_failing_batch_fails_its_requests_and_the_batcher_goes_on() -> None:
    recorder = Recorder(fail=True)
    batcher: DynamicBatcher[int, int] = DynamicBatcher(recorder, max_wait_s=0.02)
    batcher.start()
    try:
        results = await asyncio.gather(batcher.submit(1), batcher.submit(2), return_exceptions=True)
        assert all(isinstance(r, ValueError) for r in results)
        recorder.fail = False
        assert await batcher.submit(3) == 6
    finally:
        await batcher.stop()


async def test_a_wrong_number_of_results_is_an_error_not_a_mixup() -> None:
    batcher: DynamicBatcher[int, int] = DynamicBatcher(lambda items: [1], max_wait_s=0.02)
    batcher.start()
    try:
        results = await asyncio.gather(batcher.submit(1), batcher.submit(2), return_exceptions=True)
    finally:
        await batcher.stop()
    assert all(isinstance(r, RuntimeError) and "2 items" in str(r) for r in results)


async def test_cancelled_callers_are_skipped_and_a_full_queue_refuses() -> None:
    recorder = Recorder(delay=0.1)
    batcher: DynamicBatcher[int, int] = DynamicBatcher(recorder, max_wait_s=0.0, max_queue=2)
    batcher.start()
    try:
        busy = asyncio.ensure_future(batcher.submit(0))
        await asyncio.sleep(0.03)
        cancelled = asyncio.ensure_future(batcher.submit(1))
        kept = asyncio.ensure_future(batcher.submit(2))
        await asyncio.sleep(0)
        with pytest.raises(QueueFull):
            await batcher.submit(3)
        cancelled.cancel()
        assert await kept == 4 and await busy == 0
    finally:
        await batcher.stop()
    assert recorder.batches == [[0], [2]]


async def test_stop_fails_the_waiting_requests() -> None:
    recorder = Recorder(delay=0.2)
    batcher: DynamicBatcher[int, int] = DynamicBatcher(recorder, max_wait_s=0.0)
    batcher.start()
    busy = asyncio.ensure_future(batcher.submit(0))
    await asyncio.sleep(0.05)
    waiting = asyncio.ensure_future(batcher.submit(1))
    await asyncio.sleep(0)
    await batcher.stop()
    for request in (busy, waiting):  # the one in the model and the one in the queue
        with pytest.raises(BatcherStopped):
            await request
    with pytest.raises(BatcherStopped):
        await batcher.submit(2)


def test_batcher_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="max_batch_size"):
        DynamicBatcher(Recorder(), max_batch_size=0)
    with pytest.raises(ValueError, match="max_wait_s"):
        DynamicBatcher(Recorder(), max_wait_s=-1)


# -- the BERT arithmetic and the weights directory ---------------------------------------


def test_erf_matches_the_standard_library_to_float32_precision() -> None:
    xs = np.linspace(-6, 6, 20001, dtype=np.float64)
    approx = erf(np, xs)
    exact = np.array([math.erf(x) for x in xs])
    assert np.abs(approx - exact).max() < 2e-7


def _weights(directory: str, *names: str) -> str:
    os.makedirs(directory, exist_ok=True)
    for name in names:
        with open(os.path.join(directory, name), "w") as f:
            f.write("{}")
    return directory


def test_model_dir_prefers_the_mounted_volume_then_falls_back(tmp_path, caplog) -> None:
    mounted = _weights(str(tmp_path / "models"), "model.joblib", "model.json")
    baked = _weights(str(tmp_path / "baked"), "model.joblib", "model.json")
    env = {"MODEL_DIR": mounted, "MODEL_FALLBACK_DIR": baked}
    required = ("model.joblib", "model.json")
    assert resolve_model_dir("m", required, env) == mounted
    os.unlink(os.path.join(mounted, "model.joblib"))
    assert resolve_model_dir("m", required, env) == baked
    assert "lacks model.joblib" in caplog.text
    os.unlink(os.path.join(baked, "model.json"))
    with pytest.raises(
        WeightsNotFound, match=r"models lacks model.joblib; .*baked lacks model.json"
    ):
        resolve_model_dir("m", required, env)


def test_model_dir_defaults_name_the_image_volume_and_the_baked_layer() -> None:
    with pytest.raises(WeightsNotFound) as caught:
        resolve_model_dir("sklearn-iris", ("model.json",), {})
    assert "/models/sklearn-iris lacks" in str(caught.value)
    assert "/opt/model/sklearn-iris lacks" in str(caught.value)
