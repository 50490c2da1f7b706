"""Interoperability: the unchanged ``tritonclient.http`` from PyPI against a real maas server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from maas_server import Settings
from tests.conftest import RunningServer, start_server


@pytest.fixture(scope="module")
def triton(server_url: str) -> Iterator[httpclient.InferenceServerClient]:
    client = httpclient.InferenceServerClient(url=server_url.removeprefix("http://"))
    yield client
    client.close()


def test_health_and_metadata(triton: httpclient.InferenceServerClient) -> None:
    assert triton.is_server_live()
    assert triton.is_server_ready()
    meta = triton.get_server_metadata()
    assert meta["name"] == "maas"
    assert "binary_tensor_data" in meta["extensions"]
    model = triton.get_model_metadata("mlp")
    assert model["inputs"][0] == {"name": "input", "datatype": "FP32", "shape": [-1, 64]}
    assert triton.is_model_ready("mlp")
    assert not triton.is_model_ready("corrupt")
    config = triton.get_model_config("mlp")
    assert config["max_batch_size"] == 64


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_infer_matches_onnxruntime(
    triton: httpclient.InferenceServerClient, repository: Path, binary: bool
) -> None:
    x = np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    out = httpclient.InferRequestedOutput("output", binary_data=binary)
    result = triton.infer("mlp", [inp], outputs=[out], request_id="t-1")
    session = ort.InferenceSession(
        str(repository / "mlp" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    np.testing.assert_allclose(
        result.as_numpy("output"), session.run(None, {"input": x})[0], rtol=1e-6
    )
    response = result.get_response()
    assert response["id"] == "t-1"
    assert response["model_name"] == "mlp"


def test_multi_input_and_compressed_request(triton: httpclient.InferenceServerClient) -> None:
    a = np.arange(8, dtype=np.float32).reshape(2, 4)
    b = np.full((2, 4), 2, dtype=np.float32)
    inputs = []
    for name, value in (("a", a), ("b", b)):
        tensor = httpclient.InferInput(name, list(value.shape), "FP32")
        tensor.set_data_from_numpy(value, binary_data=True)
        inputs.append(tensor)
    for algorithm in (None, "gzip", "deflate"):
        result = triton.infer("add", inputs, request_compression_algorithm=algorithm)
        np.testing.assert_array_equal(result.as_numpy("sum"), a + b)
        np.testing.assert_array_equal(result.as_numpy("diff"), a - b)


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_bytes_tensors(triton: httpclient.InferenceServerClient, binary: bool) -> None:
    text = np.array([b"hello", "wörld".encode(), b"maas"], dtype=np.object_)
    inp = httpclient.InferInput("text", [3], "BYTES")
    inp.set_data_from_numpy(text, binary_data=binary)
    result = triton.infer(
        "strings", [inp], outputs=[httpclient.InferRequestedOutput("same", binary_data=binary)]
    )
    same = result.as_numpy("same")
    assert [v if isinstance(v, bytes) else v.encode() for v in same] == list(text)


def test_classification(triton: httpclient.InferenceServerClient) -> None:
    image = np.random.default_rng(1).random((1, 3, 48, 192), dtype=np.float32)
    meta = triton.get_model_metadata("ppocr_cls")
    output_name = meta["outputs"][0]["name"]
    inp = httpclient.InferInput("x", list(image.shape), "FP32")
    inp.set_data_from_numpy(image)
    result = triton.infer(
        "ppocr_cls", [inp], outputs=[httpclient.InferRequestedOutput(output_name, class_count=2)]
    )
    rows = result.as_numpy(output_name)
    assert rows.shape == (1, 2)
    labels = {entry.decode().split(":")[2] for entry in rows[0]}
    assert labels == {"0", "180"}


def test_errors_surface_as_exceptions(triton: httpclient.InferenceServerClient) -> None:
    inp = httpclient.InferInput("input", [1, 63], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 63), np.float32))
    with pytest.raises(InferenceServerException, match=r"expected shape \[-1, 64\]"):
        triton.infer("mlp", [inp])
    with pytest.raises(InferenceServerException, match="unknown model"):
        triton.get_model_metadata("nope")


@pytest.fixture
def explicit_server(repository: Path) -> Iterator[RunningServer]:
    running = start_server(Settings(repository=repository, model_control="explicit"))
    yield running
    running.stop()


def test_repository_calls(explicit_server: RunningServer) -> None:
    client = httpclient.InferenceServerClient(url=explicit_server.url.removeprefix("http://"))
    try:
        index = {row["name"]: row for row in client.get_model_repository_index()}
        assert index["mlp"]["state"] == "UNAVAILABLE"
        assert not client.is_model_ready("mlp")
        client.load_model("mlp", config=json.dumps({"max_batch_size": 16}))
        assert client.is_model_ready("mlp")
        assert client.get_model_config("mlp")["max_batch_size"] == 16
        client.unload_model("mlp")
        assert not client.is_model_ready("mlp")
        with pytest.raises(InferenceServerException, match="corrupt"):
            client.load_model("corrupt")
    finally:
        client.close()
