"""Every endpoint of the protocol, over real HTTP, against real ONNX models.

Outputs are compared with a direct onnxruntime run of the same model file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from maas_client.codec import HEADER_LENGTH, float32_to_bf16_bits
from maas_client.protocol import TensorPayload, decode_response, encode_request
from tests.conftest import ELEMENT_TYPES


@pytest.fixture(scope="module")
def http(server_url: str) -> Any:
    with httpx.Client(base_url=server_url, timeout=30) as client:
        yield client


def post_infer(
    http: httpx.Client,
    model: str,
    inputs: list[TensorPayload],
    outputs: list[dict[str, Any]] | None = None,
    version: str | None = None,
    **kwargs: Any,
) -> tuple[httpx.Response, dict[str, np.ndarray[Any, Any]]]:
    body = encode_request(inputs, outputs=outputs, **kwargs)
    headers = {}
    if body.header_length is not None:
        headers[HEADER_LENGTH] = str(body.header_length)
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
    response = http.post(path, content=bytes(body.content), headers=headers)
    if response.status_code != 200:
        return response, {}
    length = response.headers.get(HEADER_LENGTH)
    _, tensors = decode_response(response.content, int(length) if length else None)
    return response, tensors


def sample(datatype: str, shape: tuple[int, ...], seed: int = 0) -> np.ndarray[Any, Any]:
    """A wire array of ``datatype`` with extreme and ordinary values."""
    rng = np.random.default_rng(seed)
    if datatype == "BOOL":
        return rng.random(shape) > 0.5
    if datatype == "BYTES":
        words = ["", "maas", "héllo wörld", "日本語", "x" * 100, "tab\tnew\nline"]
        out = np.empty(shape, dtype=object)
        for i in range(out.size):
            out.flat[i] = words[i % len(words)].encode()
        return out
    if datatype == "BF16":
        return float32_to_bf16_bits(rng.standard_normal(shape).astype(np.float32) * 100)
    from maas_client.codec import DATATYPES

    dtype = DATATYPES[datatype]
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        values = rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
        values.flat[0] = info.min
        values.flat[-1] = info.max
        return values
    return (rng.standard_normal(shape) * 1000).astype(dtype)


def test_server_metadata(http: httpx.Client) -> None:
    body = http.get("/v2").json()
    assert body["name"] == "maas"
    assert {"binary_tensor_data", "model_repository", "model_configuration"} <= set(
        body["extensions"]
    )


def test_health(http: httpx.Client) -> None:
    assert http.get("/v2/health/live").status_code == 200
    # The session server runs with strict_readiness off: the repository holds broken models.
    assert http.get("/v2/health/ready").status_code == 200


def test_model_metadata_derived_from_graph(http: httpx.Client) -> None:
    meta = http.get("/v2/models/add").json()
    assert meta["name"] == "add"
    assert meta["versions"] == ["1"]
    assert meta["platform"] == "onnx_onnxv1"
    assert meta["inputs"] == [
        {"name": "a", "datatype": "FP32", "shape": [-1, 4]},
        {"name": "b", "datatype": "FP32", "shape": [-1, 4]},
    ]
    assert [o["name"] for o in meta["outputs"]] == ["sum", "diff"]
    assert meta["parameters"]["providers"] == ["CPUExecutionProvider"]


def test_scalar_metadata_has_empty_shape(http: httpx.Client) -> None:
    meta = http.get("/v2/models/scalar").json()
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": []}]


def test_model_ready_and_version_routes(http: httpx.Client) -> None:
    assert http.get("/v2/models/mlp/ready").status_code == 200
    assert http.get("/v2/models/mlp/versions/1/ready").status_code == 200
    assert http.get("/v2/models/versioned").json()["versions"] == ["2", "3"]
    assert http.get("/v2/models/versioned/versions/2").status_code == 200
    missing = http.get("/v2/models/versioned/versions/1")
    assert missing.status_code == 404
    assert "no version 1" in missing.json()["error"]
    assert http.get("/v2/models/corrupt/ready").status_code == 503
    assert http.get("/v2/models/nothere/ready").status_code == 404


def test_model_config_in_triton_shape(http: httpx.Client) -> None:
    config = http.get("/v2/models/mlp/config").json()
    assert config["max_batch_size"] == 64
    assert config["input"] == [{"name": "input", "data_type": "TYPE_FP32", "dims": [64]}]
    assert config["instance_group"][0]["kind"] == "KIND_CPU"
    assert config["execution_providers"]["active"] == ["CPUExecutionProvider"]
    assert config["version_policy"] == {"latest": {"num_versions": 1}}


@pytest.mark.parametrize("datatype", list(ELEMENT_TYPES))
@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_every_datatype_round_trips(http: httpx.Client, datatype: str, binary: bool) -> None:
    data = sample(datatype, (2, 3))
    response, outputs = post_infer(
        http,
        f"identity_{datatype.lower()}",
        [TensorPayload("x", data, datatype, binary=binary)],
        outputs=[{"name": "y", "parameters": {"binary_data": binary}}],
    )
    assert response.status_code == 200, response.text
    assert (HEADER_LENGTH.lower() in response.headers) == binary
    out = outputs["y"]
    assert out.shape == (2, 3)
    if datatype == "BYTES":
        assert out.tolist() == data.tolist()
    else:
        np.testing.assert_array_equal(out, data)


def test_nested_json_data_is_accepted(http: httpx.Client) -> None:
    body = {
        "inputs": [
            {
                "name": "a",
                "shape": [2, 4],
                "datatype": "FP32",
                "data": [[1, 2, 3, 4], [5, 6, 7, 8]],
            },
            {"name": "b", "shape": [2, 4], "datatype": "FP32", "data": [1] * 8},
        ]
    }
    response = http.post("/v2/models/add/infer", json=body)
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    assert outputs["sum"]["data"] == [2, 3, 4, 5, 6, 7, 8, 9]
    assert outputs["sum"]["shape"] == [2, 4]


def test_outputs_subset_id_echo_and_parameters(http: httpx.Client) -> None:
    a = np.arange(8, dtype=np.float32).reshape(2, 4)
    b = np.ones((2, 4), dtype=np.float32)
    response, outputs = post_infer(
        http,
        "add",
        [TensorPayload("a", a, "FP32"), TensorPayload("b", b, "FP32")],
        outputs=[{"name": "diff"}],
        request_id="req-42",
        parameters={"custom": "kept", "priority": 0},
    )
    assert response.status_code == 200, response.text
    header = response.json()
    assert header["id"] == "req-42"
    assert header["model_name"] == "add"
    assert header["model_version"] == "1"
    assert list(outputs) == ["diff"]
    np.testing.assert_array_equal(outputs["diff"], a - b)


def test_binary_data_output_makes_every_output_binary(http: httpx.Client) -> None:
    a = np.ones((1, 4), dtype=np.float32)
    response, outputs = post_infer(
        http,
        "add",
        [TensorPayload("a", a, "FP32", binary=True), TensorPayload("b", a, "FP32", binary=True)],
        outputs=[{"name": "sum"}, {"name": "diff", "parameters": {"binary_data": False}}],
        parameters={"binary_data_output": True},
    )
    assert response.status_code == 200
    length = int(response.headers[HEADER_LENGTH])
    import json

    header = json.loads(response.content[:length])
    by_name = {o["name"]: o for o in header["outputs"]}
    assert by_name["sum"]["parameters"] == {"binary_data_size": 16}
    assert by_name["diff"]["data"] == [0, 0, 0, 0]
    np.testing.assert_array_equal(outputs["sum"], a + a)


def test_mlp_matches_direct_onnxruntime(http: httpx.Client, repository: Path) -> None:
    session = ort.InferenceSession(
        str(repository / "mlp" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    x = np.random.default_rng(1).standard_normal((5, 64)).astype(np.float32)
    (expected,) = session.run(None, {"input": x})
    response, outputs = post_infer(
        http,
        "mlp",
        [TensorPayload("input", x, "FP32", binary=True)],
        parameters={"binary_data_output": True},
    )
    assert response.status_code == 200
    np.testing.assert_array_equal(outputs["output"], expected)


def test_versions_serve_their_own_weights(http: httpx.Client, repository: Path) -> None:
    x = np.random.default_rng(2).standard_normal((1, 64)).astype(np.float32)
    results = {}
    for version in ("2", "3"):
        session = ort.InferenceSession(
            str(repository / "versioned" / version / "model.onnx"),
            providers=["CPUExecutionProvider"],
        )
        response, outputs = post_infer(
            http, "versioned", [TensorPayload("input", x, "FP32")], version=version
        )
        assert response.json()["model_version"] == version
        np.testing.assert_allclose(outputs["output"], session.run(None, {"input": x})[0], rtol=1e-6)
        results[version] = outputs["output"]
    assert not np.allclose(results["2"], results["3"])
    latest, outputs = post_infer(http, "versioned", [TensorPayload("input", x, "FP32")])
    assert latest.json()["model_version"] == "3"


def test_pretrained_ppocr_classifier_matches_onnxruntime(http: httpx.Client) -> None:
    from tests.conftest import ppocr_cls_path

    session = ort.InferenceSession(str(ppocr_cls_path()), providers=["CPUExecutionProvider"])
    output_name = session.get_outputs()[0].name
    image = np.random.default_rng(3).random((2, 3, 48, 192), dtype=np.float32)
    (expected,) = session.run(None, {"x": image})
    response, outputs = post_infer(
        http,
        "ppocr_cls",
        [TensorPayload("x", image, "FP32", binary=True)],
        outputs=[{"name": output_name, "parameters": {"binary_data": True}}],
    )
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(outputs[output_name], expected, rtol=1e-5, atol=1e-6)


def test_classification_extension_uses_labels(http: httpx.Client) -> None:
    from tests.conftest import ppocr_cls_path

    session = ort.InferenceSession(str(ppocr_cls_path()), providers=["CPUExecutionProvider"])
    output_name = session.get_outputs()[0].name
    image = np.random.default_rng(4).random((1, 3, 48, 192), dtype=np.float32)
    (scores,) = session.run(None, {"x": image})
    response, outputs = post_infer(
        http,
        "ppocr_cls",
        [TensorPayload("x", image, "FP32")],
        outputs=[{"name": output_name, "parameters": {"classification": 1}}],
    )
    assert response.status_code == 200, response.text
    best = int(np.argmax(scores[0]))
    value, index, label = outputs[output_name][0, 0].decode().split(":")
    assert int(index) == best
    assert label == ["0", "180"][best]
    assert float(value) == pytest.approx(float(scores[0, best]), abs=1e-6)


def test_string_model_runs_on_text(http: httpx.Client) -> None:
    text = np.array([b"hello", b"maas"], dtype=object)
    response, outputs = post_infer(http, "strings", [TensorPayload("text", text, "BYTES", True)])
    assert response.status_code == 200, response.text
    assert outputs["upper"].tolist() == [b"HELLO", b"MAAS"]


def test_scalar_tensor(http: httpx.Client) -> None:
    response, outputs = post_infer(
        http, "scalar", [TensorPayload("x", np.array(1.5, dtype=np.float32), "FP32")]
    )
    assert response.status_code == 200, response.text
    assert outputs["y"].shape == ()
    assert float(outputs["y"]) == 3.0


def test_raw_binary_request(http: httpx.Client, repository: Path) -> None:
    x = np.random.default_rng(5).standard_normal((1, 64)).astype(np.float32)
    response = http.post("/v2/models/mlp/infer", content=x.tobytes(), headers={HEADER_LENGTH: "0"})
    assert response.status_code == 200, response.text
    _, outputs = decode_response(response.content, int(response.headers[HEADER_LENGTH]))
    session = ort.InferenceSession(
        str(repository / "mlp" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    np.testing.assert_array_equal(outputs["output"], session.run(None, {"input": x})[0])


def test_repository_index(http: httpx.Client) -> None:
    rows = http.post("/v2/repository/index").json()
    by_name = {(r["name"], r.get("version")): r for r in rows}
    assert by_name[("mlp", "1")]["state"] == "READY"
    assert by_name[("corrupt", "1")]["state"] == "UNAVAILABLE"
    assert "cannot load" in by_name[("corrupt", "1")]["reason"]
    assert by_name[("badconfig", None)]["state"] == "UNAVAILABLE"
    assert "no_such_key" in by_name[("badconfig", None)]["reason"]
    ready = http.post("/v2/repository/index", json={"ready": True}).json()
    assert ready and all(r["state"] == "READY" for r in ready)
    assert not any(r["name"] == "corrupt" for r in ready)


# --- one JSON body reader -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "status"),
    [
        # every field optional: an empty body is {}
        ("/v2/repository/index", 200),
        ("/v2/repository/models/mlp/load", 200),  # a reload, as with {}
        # a body is required: an empty body is a 400 that says so
        ("/v2/models/mlp/infer", 400),
    ],
)
def test_empty_body_is_an_empty_object_only_where_every_field_is_optional(
    http: httpx.Client, path: str, status: int
) -> None:
    for empty in (b"", b"  "):
        answer = http.post(path, content=empty)
        assert answer.status_code == status, answer.text
        if status == 400:
            assert "request body is empty" in answer.json()["error"]


def test_empty_body_where_one_is_required_is_a_clear_400(generation_url: str) -> None:
    for path in (
        "/v2/models/tiny_gpt/generate",
        "/v2/models/tiny_gpt/generate_stream",
        "/v1/completions",
        "/v1/chat/completions",
    ):
        answer = httpx.post(f"{generation_url}{path}", content=b"")
        assert answer.status_code == 400, (path, answer.text)
        error = answer.json()["error"]
        message = error["message"] if isinstance(error, dict) else error
        assert "request body is empty" in message, (path, message)
    # the same routes with a body still work
    good = httpx.post(
        f"{generation_url}/v2/models/tiny_gpt/generate",
        json={"text_input": "Copyright", "max_tokens": 2},
        timeout=30,
    )
    assert good.status_code == 200, good.text
    assert good.json()["completion_tokens"] == 2
