"""The client against other V2 servers: answers shaped exactly as Triton and MLServer send them.

Triton (``http_server.cc``): ``GET /v2`` lists ``binary_tensor_data``; binary answers carry
``Inference-Header-Content-Length`` and ``Content-Type: application/octet-stream``; readiness
is 200 or 400 with an empty body; errors are ``{"error": ...}`` (an unknown model is a 400 in
most versions). MLServer (FastAPI): no binary extension, JSON tensors with ``content_type``
parameters, readiness 200 or 400 with an empty body, ``{"error": "Model x not found"}`` with 404,
and FastAPI's ``{"detail": "Not Found"}`` for endpoints it does not have.
"""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import respx

from maas_client import (
    BadRequestError,
    EndpointNotSupportedError,
    InputError,
    ModelNotFoundError,
    NotFoundError,
)
from maas_client.codec import HEADER_LENGTH
from maas_client.protocol import decode_request
from tests.client.conftest import AsyncClientFactory, ClientFactory

# --- Triton ------------------------------------------------------------------------------------

TRITON_SERVER = {
    "name": "triton",
    "version": "2.41.0",
    "extensions": [
        "classification",
        "sequence",
        "model_repository",
        "model_repository(unload_dependents)",
        "schedule_policy",
        "model_configuration",
        "system_shared_memory",
        "cuda_shared_memory",
        "binary_tensor_data",
        "parameters",
        "statistics",
        "trace",
        "logging",
    ],
}
TRITON_SIMPLE = {
    "name": "simple",
    "versions": ["1"],
    "platform": "tensorflow_graphdef",
    "inputs": [
        {"name": "INPUT0", "datatype": "INT32", "shape": [-1, 16]},
        {"name": "INPUT1", "datatype": "INT32", "shape": [-1, 16]},
    ],
    "outputs": [
        {"name": "OUTPUT0", "datatype": "INT32", "shape": [-1, 16]},
        {"name": "OUTPUT1", "datatype": "INT32", "shape": [-1, 16]},
    ],
}
TRITON_CONFIG = {
    "name": "simple",
    "platform": "tensorflow_graphdef",
    "backend": "tensorflow",
    "version_policy": {"latest": {"num_versions": 1}},
    "max_batch_size": 8,
    "input": [
        {
            "name": "INPUT0",
            "data_type": "TYPE_INT32",
            "format": "FORMAT_NONE",
            "dims": [16],
            "is_shape_tensor": False,
            "allow_ragged_batch": False,
            "optional": False,
        },
        {
            "name": "INPUT1",
            "data_type": "TYPE_INT32",
            "format": "FORMAT_NONE",
            "dims": [16],
            "is_shape_tensor": False,
            "allow_ragged_batch": False,
            "optional": False,
        },
    ],
    "output": [
        {"name": "OUTPUT0", "data_type": "TYPE_INT32", "dims": [16], "label_filename": ""},
        {"name": "OUTPUT1", "data_type": "TYPE_INT32", "dims": [16], "label_filename": ""},
    ],
    "instance_group": [{"name": "simple", "kind": "KIND_CPU", "count": 1}],
}
SEEN: list[dict[str, Any]] = []


def triton_infer(request: httpx.Request) -> httpx.Response:
    """Triton's ``simple`` model (sum and difference), answering as Triton frames it."""
    body = request.read()
    header = request.headers.get(HEADER_LENGTH)
    length = int(header) if header is not None else None
    message, tensors = decode_request(body, length)
    SEEN.append(orjson.loads(body[:length] if length is not None else body))
    a, b = tensors["INPUT0"], tensors["INPUT1"]
    results = {"OUTPUT0": a + b, "OUTPUT1": a - b}
    binary_default = bool((message.parameters or {}).get("binary_data_output", False))
    wanted = message.outputs or []
    names = [o.name for o in wanted] or list(results)
    entries, pieces = [], []
    for name in names:
        spec = next((o for o in wanted if o.name == name), None)
        binary = (
            (spec.parameters or {}).get("binary_data", binary_default) if spec else (binary_default)
        )
        array = results[name].astype("<i4")
        entry: dict[str, Any] = {"name": name, "datatype": "INT32", "shape": list(array.shape)}
        if binary:
            entry["parameters"] = {"binary_data_size": array.nbytes}
            pieces.append(array.tobytes())
        else:
            entry["data"] = array.reshape(-1).tolist()
        entries.append(entry)
    text = orjson.dumps({"model_name": "simple", "model_version": "1", "outputs": entries})
    if not pieces:
        return httpx.Response(200, content=text, headers={"Content-Type": "application/json"})
    return httpx.Response(
        200,
        content=text + b"".join(pieces),
        headers={"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(text))},
    )


@pytest.fixture
def triton(router: respx.Router) -> respx.Router:
    SEEN.clear()
    router.get("/v2").respond(json=TRITON_SERVER)
    router.get("/v2/health/live").respond(200)
    router.get("/v2/health/ready").respond(200)
    router.get("/v2/models/simple").respond(json=TRITON_SIMPLE)
    router.get("/v2/models/simple/versions/1").respond(json=TRITON_SIMPLE)
    router.get("/v2/models/simple/ready").respond(200)
    router.get("/v2/models/loading/ready").respond(400)
    router.get("/v2/models/simple/config").respond(json=TRITON_CONFIG)
    router.post("/v2/models/simple/infer").mock(side_effect=triton_infer)
    router.post("/v2/models/simple/versions/1/infer").mock(side_effect=triton_infer)
    router.post("/v2/repository/index").respond(
        json=[
            {"name": "simple", "version": "1", "state": "READY"},
            {"name": "broken", "version": "1", "state": "UNAVAILABLE", "reason": "unable to load"},
        ]
    )
    router.post("/v2/repository/models/simple/load").respond(200)
    router.post("/v2/repository/models/simple/unload").respond(200)
    router.get("/v2/models/foo").respond(
        400, json={"error": "Request for unknown model: 'foo' is not found"}
    )
    return router


A = np.arange(32, dtype=np.int32).reshape(2, 16)
B = np.ones((2, 16), dtype=np.int32)


def test_triton_every_call(triton: respx.Router, routed_client: ClientFactory) -> None:
    client = routed_client()
    assert client.server.live() and client.server.ready()
    assert client.server.metadata().name == "triton"
    assert [(m.name, m.state) for m in client.models.list()] == [
        ("simple", "READY"),
        ("broken", "UNAVAILABLE"),
    ]
    assert client.models.ready("simple") is True
    assert client.models.ready("loading") is False  # Triton's 400 with an empty body
    config = client.models.config("simple")
    assert config.max_batch_size == 8 and config.input[0].dims == [16]
    assert config.backend == "tensorflow"
    assert config.model_extra is not None
    assert config.model_extra["version_policy"] == {"latest": {"num_versions": 1}}
    client.models.load("simple")
    client.models.unload("simple")
    with pytest.raises(BadRequestError, match="Request for unknown model: 'foo' is not found"):
        client.models.get("foo")


def test_triton_binary_inference(triton: respx.Router, routed_client: ClientFactory) -> None:
    client = routed_client()
    result = client.infer("simple", {"INPUT0": A, "INPUT1": B})
    np.testing.assert_array_equal(result["OUTPUT0"], A + B)
    np.testing.assert_array_equal(result["OUTPUT1"], A - B)
    assert result.model_version == "1" and result["OUTPUT0"].dtype == np.int32
    sent = SEEN[-1]
    assert sent["parameters"] == {"binary_data_output": True}
    assert all(
        "data" not in i and i["parameters"]["binary_data_size"] == 128 for i in sent["inputs"]
    )

    one = client.infer(
        "simple", {"INPUT0": A.tolist(), "INPUT1": B}, outputs=["OUTPUT1"], version=1
    )
    assert list(one) == ["OUTPUT1"]
    assert SEEN[-1]["outputs"] == [{"name": "OUTPUT1", "parameters": {"binary_data": True}}]
    with pytest.raises(InputError, match="INT32"):
        client.infer("simple", {"INPUT0": A + 0.5, "INPUT1": B})


async def test_triton_json_inference_async(
    triton: respx.Router, routed_async_client: AsyncClientFactory
) -> None:
    client = routed_async_client()
    result = await client.infer("simple", {"INPUT0": A, "INPUT1": B}, binary=False)
    np.testing.assert_array_equal(result["OUTPUT0"], A + B)
    sent = SEEN[-1]
    assert "parameters" not in sent
    assert sent["inputs"][0]["data"] == A.reshape(-1).tolist()
    assert await client.models.ready("loading") is False


# --- MLServer ----------------------------------------------------------------------------------

MLSERVER = {"name": "mlserver", "version": "1.6.1", "extensions": []}
IRIS = {
    "name": "iris",
    "versions": [],
    "platform": "",
    "inputs": [
        {
            "name": "predict",
            "datatype": "FP32",
            "shape": [-1, 4],
            "parameters": {"content_type": "np"},
        }
    ],
    "outputs": [
        {
            "name": "predict",
            "datatype": "INT64",
            "shape": [-1, 1],
            "parameters": {"content_type": "np"},
        }
    ],
    "parameters": {"content_type": "np"},
}


def mlserver_infer(request: httpx.Request) -> httpx.Response:
    assert HEADER_LENGTH not in request.headers
    body = orjson.loads(request.read())
    SEEN.append(body)
    rows = np.asarray(body["inputs"][0]["data"], dtype=np.float32).reshape(
        body["inputs"][0]["shape"]
    )
    labels = (rows.sum(axis=1) > 12).astype(np.int64)
    return httpx.Response(
        200,
        json={
            "model_name": "iris",
            "model_version": "v0.1.0",
            "id": body.get("id") or "9c3a5b0e-6a1b-4b84-9a0c-6f2f4b1b2a55",
            "parameters": {},
            "outputs": [
                {
                    "name": "predict",
                    "shape": [len(labels), 1],
                    "datatype": "INT64",
                    "parameters": {"content_type": "np"},
                    "data": labels.tolist(),
                }
            ],
        },
    )


@pytest.fixture
def mlserver(router: respx.Router) -> respx.Router:
    SEEN.clear()
    router.get("/v2").respond(json=MLSERVER)
    router.get("/v2/health/live").respond(200)
    router.get("/v2/health/ready").respond(400)
    router.get("/v2/models/iris").respond(json=IRIS)
    router.get("/v2/models/iris/ready").respond(200)
    router.get("/v2/models/iris/config").respond(404, json={"detail": "Not Found"})
    router.post("/v2/models/iris/infer").mock(side_effect=mlserver_infer)
    router.get("/v2/models/nope").respond(404, json={"error": "Model nope not found"})
    router.get("/v2/models/nope/config").respond(404, json={"detail": "Not Found"})
    router.post("/v2/repository/index").respond(
        json=[{"name": "iris", "version": "v0.1.0", "state": "READY", "reason": ""}]
    )
    router.post("/v2/repository/models/iris/load").respond(200)
    return router


IRIS_ROWS = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]])  # float64


def test_mlserver_every_call(mlserver: respx.Router, routed_client: ClientFactory) -> None:
    client = routed_client()
    assert client.server.live() is True
    assert client.server.ready() is False  # MLServer's 400 with an empty body
    assert client.server.metadata().extensions == []
    assert client.models.list()[0].version == "v0.1.0"
    assert client.models.ready("iris") is True
    assert client.models.get("iris").inputs[0].parameters == {"content_type": "np"}
    client.models.load("iris")
    with pytest.raises(ModelNotFoundError) as info:
        client.models.get("nope")
    assert info.value.error == "Model nope not found"
    with pytest.raises(NotFoundError) as missing:
        client.models.config("iris")
    assert missing.value.error == "Not Found"


def test_mlserver_has_no_config_endpoint(
    mlserver: respx.Router, routed_client: ClientFactory
) -> None:
    client = routed_client()
    with pytest.raises(EndpointNotSupportedError) as info:
        client.models.config("iris")  # iris exists: it is the endpoint that is missing
    error = info.value
    assert isinstance(error, NotFoundError) and not isinstance(error, ModelNotFoundError)
    assert error.endpoint == "config" and error.model == "iris" and error.status_code == 404
    assert "no config endpoint" in str(error) and "'iris' exists" in str(error)
    assert "no config endpoint" in error.hint
    with pytest.raises(ModelNotFoundError) as missing:
        client.models.config("nope")  # a model the server does not know stays that
    assert not isinstance(missing.value, EndpointNotSupportedError)
    assert client.models.get("iris").name == "iris"  # a good request still works


async def test_mlserver_has_no_config_endpoint_async(
    mlserver: respx.Router, routed_async_client: AsyncClientFactory
) -> None:
    client = routed_async_client()
    with pytest.raises(EndpointNotSupportedError):
        await client.models.config("iris")
    with pytest.raises(ModelNotFoundError):
        await client.models.config("nope")
    assert (await client.models.get("iris")).name == "iris"


def test_infer_batched_without_config_says_what_is_unknown(
    mlserver: respx.Router, routed_client: ClientFactory
) -> None:
    client = routed_client()
    rows = np.tile(IRIS_ROWS, (3, 1))
    with pytest.raises(InputError) as info:
        client.infer_batched("iris", rows, progress=False)
    message = str(info.value)
    assert "declares no batch dimension" not in message  # it may well have one: [-1, 4]
    assert "unknown" in message and "no configuration endpoint" in message
    assert "batch_size=" in message and "[-1, 4]" in message
    result = client.infer_batched("iris", rows, batch_size=2, progress=False)
    assert result["predict"].shape == (6, 1) and len(result.chunks) == 3


def test_mlserver_json_inference(mlserver: respx.Router, routed_client: ClientFactory) -> None:
    client = routed_client()
    result = client.infer("iris", IRIS_ROWS, id="abc")
    assert result["predict"].tolist() == [[0], [1]]
    assert result.model_version == "v0.1.0" and result.id == "abc"
    sent = SEEN[-1]
    (entry,) = sent["inputs"]
    assert {k: entry[k] for k in ("name", "datatype", "shape")} == {
        "name": "predict",
        "datatype": "FP32",  # float64 rows were cast, as the metadata asks
        "shape": [2, 4],
    }
    np.testing.assert_array_equal(
        np.asarray(entry["data"], dtype=np.float32), IRIS_ROWS.astype(np.float32).reshape(-1)
    )
    assert "parameters" not in sent and "outputs" not in sent


async def test_mlserver_async(
    mlserver: respx.Router, routed_async_client: AsyncClientFactory
) -> None:
    client = routed_async_client()
    assert await client.server.ready() is False
    result = await client.infer("iris", IRIS_ROWS[:1])
    assert result["predict"].tolist() == [[0]]


def test_server_without_metadata_endpoint_gets_json(
    router: respx.Router, routed_client: ClientFactory
) -> None:
    router.get("/v2").respond(404, json={"detail": "Not Found"})
    router.get("/v2/models/iris").respond(json=IRIS)
    router.post("/v2/models/iris/infer").mock(side_effect=mlserver_infer)
    assert routed_client().infer("iris", IRIS_ROWS)["predict"].shape == (2, 1)
