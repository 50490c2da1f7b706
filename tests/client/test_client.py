"""The clients against the real server: every call, sync and async side by side."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from maas_client import (
    APIConnectionError,
    AsyncClient,
    BadRequestError,
    Client,
    InferResult,
    Input,
    InputError,
    ModelNotFoundError,
    NotFoundError,
    Output,
    PayloadTooLargeError,
    RawResponse,
)
from maas_client._raw import CLIENT_CALLS, public_methods
from maas_client.codec import DATATYPES
from maas_client.types import ModelConfiguration, ModelMetadata, RepositoryModel, ServerMetadata
from tests import models
from tests.conftest import ELEMENT_TYPES, RunningServer


@pytest.fixture
def client(server_url: str) -> Iterator[Client]:
    with Client(server_url) as client:
        yield client


@pytest.fixture
async def aclient(server_url: str) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(server_url) as client:
        yield client


def mlp_reference(x: np.ndarray[Any, Any], seed: int = 0) -> np.ndarray[Any, Any]:
    (w0, w1), (b0, b1) = models.mlp_weights(seed=seed)
    result: np.ndarray[Any, Any] = np.maximum(x @ w0 + b0, 0) @ w1 + b1
    return result


X = np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)


# --- server -----------------------------------------------------------------------------------


def test_server_calls(client: Client) -> None:
    assert client.server.live() is True
    assert client.server.ready() is True
    metadata = client.server.metadata()
    assert isinstance(metadata, ServerMetadata)
    assert metadata.name == "maas"
    assert "binary_tensor_data" in metadata.extensions


async def test_server_calls_async(aclient: AsyncClient) -> None:
    assert await aclient.server.live() is True
    assert await aclient.server.ready() is True
    metadata = await aclient.server.metadata()
    assert metadata.name == "maas"


def test_openapi_document(client: Client) -> None:
    document = client.server.openapi()
    assert document["openapi"].startswith("3.")
    assert "/v2/models/{model}/infer" in document["paths"]
    assert "post" in document["paths"]["/v2/models/{model}/infer"]


async def test_openapi_document_async(aclient: AsyncClient) -> None:
    document = await aclient.server.openapi()
    assert "get" in document["paths"]["/v2/health/ready"]
    assert "/v2/repository/index" in document["paths"]


# --- models -----------------------------------------------------------------------------------


def test_model_calls(client: Client) -> None:
    index = client.models.list()
    assert all(isinstance(row, RepositoryModel) for row in index)
    states = {(row.name, row.version): row.state for row in index}
    assert states[("mlp", "1")] == "READY"
    assert states[("corrupt", "1")] == "UNAVAILABLE"
    ready_names = {row.name for row in client.models.list(ready=True)}
    assert "mlp" in ready_names and "corrupt" not in ready_names

    metadata = client.models.get("mlp")
    assert isinstance(metadata, ModelMetadata)
    assert [(t.name, t.datatype, t.shape) for t in metadata.inputs] == [("input", "FP32", [-1, 64])]
    assert client.models.ready("mlp") is True
    assert client.models.ready("corrupt") is False

    config = client.models.config("mlp")
    assert isinstance(config, ModelConfiguration)
    assert config.max_batch_size == 64
    assert [(t.name, t.data_type, t.dims) for t in config.input] == [("input", "TYPE_FP32", [64])]


async def test_model_calls_async(aclient: AsyncClient) -> None:
    names = {row.name for row in await aclient.models.list()}
    assert {"mlp", "add", "strings"} <= names
    metadata = await aclient.models.get("add")
    assert {t.name for t in metadata.inputs} == {"a", "b"}
    assert await aclient.models.ready("add") is True
    assert (await aclient.models.config("add")).max_batch_size == 8


def test_versions(client: Client) -> None:
    assert client.models.get("versioned").versions == ["2", "3"]
    assert client.models.ready("versioned", 2) is True
    for version in (2, "3"):
        result = client.infer("versioned", X, version=version)
        assert result.model_version == str(version)
        np.testing.assert_allclose(
            result["output"], mlp_reference(X, seed=int(version)), rtol=1e-5, atol=1e-5
        )
    assert client.infer("versioned", X).model_version == "3"  # the newest served
    with pytest.raises(ModelNotFoundError) as info:
        client.models.get("versioned", version=1)
    assert info.value.model == "versioned" and info.value.version == "1"
    assert "versions served: 2, 3" in info.value.error


async def test_versions_async(aclient: AsyncClient) -> None:
    result = await aclient.infer("versioned", X, version=2)
    assert result.model_version == "2"
    with pytest.raises(ModelNotFoundError):
        await aclient.infer("versioned", X, version=1, validate=False)


def test_load_and_unload(lifecycle_server: RunningServer) -> None:
    with Client(lifecycle_server.url) as client:
        assert client.models.ready("mlp") is False
        client.models.load("mlp")
        assert client.models.ready("mlp") is True
        np.testing.assert_allclose(
            client.infer("mlp", X)["output"], mlp_reference(X), rtol=1e-5, atol=1e-5
        )
        client.models.load("mlp", config={"max_batch_size": 2})
        assert client.models.config("mlp").max_batch_size == 2
        client.models.unload("mlp")
        assert client.models.ready("mlp") is False
        with pytest.raises(BadRequestError, match="failed to load"):
            client.models.load("mlp", config={"max_batch_size": -1})


async def test_load_and_unload_async(lifecycle_server: RunningServer) -> None:
    async with AsyncClient(lifecycle_server.url) as client:
        await client.models.load("identity")
        assert await client.models.ready("identity") is True
        result = await client.infer("identity", np.ones((2, 3), dtype=np.float32))
        assert result["y"].tolist() == [[1.0] * 3] * 2
        await client.models.unload("identity")
        assert await client.models.ready("identity") is False


# --- inference: every datatype, both encodings -------------------------------------------------


def _sample(datatype: str) -> np.ndarray[Any, Any]:
    if datatype == "BYTES":
        return np.array([["a", "bé", ""], ["x", "yy", "\u2603"]], dtype=object)
    if datatype == "BOOL":
        return np.array([[True, False, True], [False, False, True]])
    if datatype in ("FP16", "FP32", "FP64", "BF16"):
        return np.array([[0.5, -1.25, 3.0], [1e3, -0.0, 2.5]], dtype=np.float32)
    dtype = {"UINT": np.uint64, "INT": np.int64}[datatype.rstrip("0123456789")]
    return np.array([[0, 1, 2], [3, 4, 127]], dtype=dtype)


def _expected(datatype: str, sample: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    if datatype == "BYTES":
        return np.vectorize(lambda s: s.encode(), otypes=[object])(sample)
    return sample


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("datatype", list(ELEMENT_TYPES))
def test_every_datatype(client: Client, datatype: str, binary: bool) -> None:
    sample = _sample(datatype)
    result = client.infer(f"identity_{datatype.lower()}", sample, binary=binary)
    output = result["y"]
    assert result.response.outputs[0].datatype == datatype
    assert ("binary_data_size" in (result.response.outputs[0].parameters or {})) is binary
    expected = _expected(datatype, sample)
    if datatype == "BYTES":
        assert output.dtype == object
        assert output.tolist() == expected.tolist()
    else:
        assert output.dtype == (np.float32 if datatype == "BF16" else DATATYPES[datatype])
        np.testing.assert_array_equal(output, expected.astype(output.dtype))


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
async def test_every_datatype_async(aclient: AsyncClient, binary: bool) -> None:
    async def roundtrip(datatype: str) -> tuple[str, InferResult]:
        sample = _sample(datatype)
        return datatype, await aclient.infer(f"identity_{datatype.lower()}", sample, binary=binary)

    results = await asyncio.gather(*(roundtrip(d) for d in ELEMENT_TYPES))
    for datatype, result in results:
        expected = _expected(datatype, _sample(datatype))
        assert result["y"].tolist() == expected.astype(result["y"].dtype).tolist()


def test_binary_outputs_are_writable_numpy(client: Client) -> None:
    result = client.infer("mlp", X)
    output = result["output"]
    assert output.dtype == np.float32 and output.flags.writeable
    output += 1  # the caller owns the array
    np.testing.assert_allclose(output - 1, mlp_reference(X), rtol=1e-5, atol=1e-5)


def test_bf16_outputs_widen_to_float32(client: Client) -> None:
    values = np.array([[1.0, 1.00390625, -2.5]], dtype=np.float32)  # 1 + 2**-8 rounds to even
    result = client.infer("identity_bf16", values)
    assert result["y"].dtype == np.float32
    assert result["y"].tolist() == [[1.0, 1.0, -2.5]]


# --- inference: inputs, outputs and the result -------------------------------------------------


def test_inputs_forms_and_result(client: Client) -> None:
    a = np.arange(8, dtype=np.float32).reshape(2, 4)
    b = np.ones((2, 4), dtype=np.float32)
    by_mapping = client.infer("add", {"a": a, "b": b})
    by_list = client.infer("add", [Input("a", a), Input("b", b.tolist())])
    for result in (by_mapping, by_list):
        assert set(result) == {"sum", "diff"}
        np.testing.assert_array_equal(result["sum"], a + b)
        np.testing.assert_array_equal(result["diff"], a - b)
    bare_list = client.infer("mlp", X.tolist())  # float64 from a list, cast to FP32
    np.testing.assert_allclose(bare_list["output"], mlp_reference(X), rtol=1e-5, atol=1e-5)

    result = client.infer("add", {"a": a, "b": b}, outputs=["sum"], id="req-7", request_id="abc")
    assert list(result) == ["sum"]
    assert result.id == "req-7"
    assert result.request_id == "abc"
    assert result.model_name == "add" and result.model_version == "1"
    assert result.timing.attempts == 1 and 0 < result.timing.seconds < 10
    assert "outputs={sum: float32[2, 4]}" in repr(result)
    with pytest.raises(KeyError, match="'sum'"):
        result["diff"]


def test_scalar_strings_and_classification(client: Client) -> None:
    assert client.infer("scalar", 21.0)["y"].tolist() == 42.0
    result = client.infer("strings", ["hello", b"World"])
    assert result["upper"].tolist() == [b"HELLO", b"WORLD"]
    ranked = client.infer("mlp", X[:1], outputs=[Output("output", classification=2)])
    top = ranked["output"]
    assert top.dtype == object and top.shape == (1, 2)
    best = int(np.argmax(mlp_reference(X[:1])))
    assert top[0, 0].decode().split(":")[1] == str(best)


def test_json_per_output_and_request_parameters(client: Client) -> None:
    a = np.ones((1, 4), dtype=np.float32)
    result = client.infer(
        "add",
        {"a": a, "b": a},
        outputs=[Output("sum", binary=False), Output("diff")],
        parameters={"priority": 1},
    )
    params = {o.name: o.parameters or {} for o in result.response.outputs}
    assert "binary_data_size" not in params["sum"]
    assert "binary_data_size" in params["diff"]
    assert result["sum"].tolist() == [[2.0] * 4]


def test_raw_response(client: Client) -> None:
    raw = client.with_raw_response.infer("mlp", X, request_id="raw-1")
    assert isinstance(raw, RawResponse)
    assert raw.status_code == 200
    assert raw.headers["inference-header-content-length"].isdigit()
    assert raw.request_id == "raw-1" and raw.attempts == 1
    assert raw.http_response.request.headers["x-request-id"] == "raw-1"
    np.testing.assert_allclose(raw.parse()["output"], mlp_reference(X), rtol=1e-5, atol=1e-5)
    metadata = client.with_raw_response.models.get("mlp")
    assert metadata.parse().name == "mlp"
    assert metadata.http_response.json()["name"] == "mlp"
    assert client.with_raw_response.server.live().parse() is True


async def test_raw_response_async(aclient: AsyncClient) -> None:
    raw = await aclient.with_raw_response.infer("mlp", X)
    assert raw.status_code == 200
    assert raw.parse()["output"].shape == (3, 10)
    index = await aclient.with_raw_response.models.list()
    assert isinstance(index.http_response.json(), list)


@pytest.mark.parametrize("cls", [Client, AsyncClient])
def test_raw_variants_expose_every_public_method(cls: type[Client] | type[AsyncClient]) -> None:
    client = cls("http://maas.test")
    raw = client.with_raw_response
    for resource in ("server", "models"):
        methods = public_methods(type(getattr(client, resource)))
        assert methods  # the mirror is built from these: a new call has its raw variant
        for name in methods:
            assert callable(getattr(getattr(raw, resource), name)), (resource, name)
    # the client's own calls: each sends one request (mirrored) or says why it has no raw form
    no_single_answer = {
        "classify",  # many requests, chunked like infer_batched
        "close",
        "embed",  # many requests, chunked like infer_batched
        "generate_stream",
        "infer_batched",
        "local",
        "train",
        "with_options",
    }
    assert set(public_methods(cls)) == set(CLIENT_CALLS) | no_single_answer
    for name in CLIENT_CALLS:
        assert callable(getattr(raw, name))
    assert callable(raw.server.openapi) and callable(raw.generate)  # the two that had drifted


def test_raw_openapi(client: Client) -> None:
    raw = client.with_raw_response.server.openapi()
    assert raw.status_code == 200 and raw.parse()["openapi"].startswith("3.")


async def test_raw_openapi_async(aclient: AsyncClient) -> None:
    raw = await aclient.with_raw_response.server.openapi()
    assert raw.status_code == 200 and "paths" in raw.parse()


def test_with_options_shares_the_pool(client: Client) -> None:
    client.infer("mlp", X)
    copy = client.with_options(timeout=5.0, max_retries=0, headers={"X-Team": "vision"})
    assert copy.timeout == httpx.Timeout(5.0) and copy.max_retries == 0
    assert client.max_retries == 2 and client.timeout != copy.timeout
    assert copy._pipeline.transport is client._pipeline.transport  # one connection pool
    assert copy._state is client._state  # one metadata cache
    raw = copy.with_raw_response.infer("mlp", X)
    assert raw.http_response.request.headers["x-team"] == "vision"
    copy.close()  # a copy does not own the pool: the original still works
    assert client.infer("mlp", X)["output"].shape == (3, 10)


def test_injected_http_client(server_url: str) -> None:
    seen: list[httpx.Request] = []
    with httpx.Client(
        headers={"X-From": "injected"}, event_hooks={"request": [seen.append]}
    ) as http:
        client = Client(server_url, http_client=http)
        assert client.infer("mlp", X)["output"].shape == (3, 10)
        client.close()
        assert not http.is_closed  # the caller owns what it injected
    assert seen and all(r.headers["x-from"] == "injected" for r in seen)
    assert all(r.headers["accept-encoding"] == "identity" for r in seen)


async def test_injected_async_http_client(server_url: str) -> None:
    async with httpx.AsyncClient() as http:
        client = AsyncClient(server_url, http_client=http)
        assert (await client.infer("mlp", X))["output"].shape == (3, 10)


async def test_sync_and_async_agree(client: Client, aclient: AsyncClient) -> None:
    sync_result = client.infer("mlp", X)
    async_results = await asyncio.gather(*(aclient.infer("mlp", X[i : i + 1]) for i in range(3)))
    stacked = np.concatenate([r["output"] for r in async_results])
    np.testing.assert_allclose(stacked, sync_result["output"], rtol=1e-6, atol=1e-6)


# --- errors from the server --------------------------------------------------------------------


def test_errors_carry_the_servers_message(client: Client) -> None:
    with pytest.raises(ModelNotFoundError) as missing:
        client.infer("no_such_model", X)
    err = missing.value
    assert isinstance(err, NotFoundError) and err.status_code == 404
    assert err.error == "unknown model 'no_such_model': no such folder in the repository"
    assert err.body == {"error": err.error} and err.attempts == 1
    assert err.request_id and err.response.request.headers["x-request-id"] == err.request_id
    assert str(err).startswith("404 Not Found: unknown model")

    with pytest.raises(BadRequestError) as bad:
        client.infer("mlp", np.ones((2, 63), dtype=np.float32), validate=False)
    assert "expected shape [-1, 64], got [2, 63]" in bad.value.error
    assert bad.value.attempts == 1  # a 400 is never retried

    with pytest.raises(InputError, match=r"expects shape \[-1, 64\], got \[2, 63\]"):
        client.infer("mlp", np.ones((2, 63), dtype=np.float32))


async def test_errors_async(aclient: AsyncClient) -> None:
    with pytest.raises(ModelNotFoundError, match="unknown model 'nope'"):
        await aclient.models.get("nope")
    with pytest.raises(BadRequestError, match="invalid model version"):
        await aclient.models.ready("mlp", version="x1")


def test_payload_too_large(lifecycle_server: RunningServer) -> None:
    with Client(lifecycle_server.url) as client:
        client.models.load("identity")
        big = np.zeros((1000, 3), dtype=np.float32)
        with pytest.raises(PayloadTooLargeError) as info:
            client.infer("identity", big)
        assert info.value.status_code == 413
        assert "exceeds the server's limit of 4096 bytes" in info.value.error


def test_connection_refused_is_a_connection_error() -> None:
    with (
        Client("http://127.0.0.1:9", max_retries=0) as client,
        pytest.raises(APIConnectionError) as info,
    ):
        client.server.live()
    assert info.value.sent is False and info.value.attempts == 1


async def test_connection_refused_async() -> None:
    async with AsyncClient("http://127.0.0.1:9", max_retries=0) as client:
        with pytest.raises(APIConnectionError):
            await client.server.live()
