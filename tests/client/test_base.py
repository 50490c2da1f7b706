"""What the clients share without I/O: request bodies and headers, the status -> error factory,
the client's settings and their copies."""

from __future__ import annotations

import tracemalloc
from typing import Any

import httpx
import numpy as np
import orjson
import pytest

from maas_client import (
    APIConnectionError,
    APIResponseValidationError,
    APIStatusError,
    APITimeoutError,
    AsyncClient,
    Client,
    InputError,
    ModelNotFoundError,
    NotFoundError,
    ServiceUnavailableError,
)
from maas_client._answers import infer_call
from maas_client._body import BodyBuffer, BodyStream, known_length
from maas_client._exceptions import APIError, MaasError
from maas_client._options import clamp_timeout
from maas_client._plans import model_path, plan_load
from maas_client._status import connection_error, make_status_error
from maas_client.codec import HEADER_LENGTH
from maas_client.protocol import decode_request
from maas_client.types import ModelMetadata, TensorMetadata

META = ModelMetadata(
    name="m",
    inputs=[TensorMetadata(name="x", datatype="FP32", shape=[-1, -1])],
    outputs=[TensorMetadata(name="y", datatype="FP32", shape=[-1, -1])],
)


def infer_request(client: Client, x: Any, **kwargs: Any) -> httpx.Request:
    call = infer_call(
        "m",
        None,
        x,
        META,
        check=True,
        binary=kwargs.pop("binary", True),
        outputs=None,
        id=None,
        parameters=None,
    )
    pipeline = client._pipeline
    return pipeline.build_request(call.plan, pipeline.resolve(kwargs), None)


# --- bodies ------------------------------------------------------------------------------------


def test_large_tensors_are_streamed_from_their_own_memory() -> None:
    x = np.random.default_rng(0).standard_normal((16, 1 << 18)).astype(np.float32)  # 16 MiB
    tracemalloc.start()
    try:
        with Client("http://maas.test") as client:
            request = infer_request(client, x)
            _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < x.nbytes // 8  # encoding allocated nothing the size of the tensor
    stream = request.stream
    assert isinstance(stream, BodyStream)
    assert request.headers["content-length"] == str(stream.length)
    views = [np.frombuffer(c, dtype=np.uint8) for c in stream.chunks[1:]]
    assert all(np.shares_memory(v, x) for v in views)  # no copy: the array's own bytes
    assert max(len(c) for c in stream.chunks) <= 1 << 20
    body = b"".join(bytes(c) for c in stream)
    message, tensors = decode_request(body, int(request.headers[HEADER_LENGTH]))
    assert message.parameters == {"binary_data_output": True}
    np.testing.assert_array_equal(tensors["x"], x)


def test_non_contiguous_and_small_tensors() -> None:
    base = np.arange(24, dtype=np.float32).reshape(4, 6)
    with Client("http://maas.test") as client:
        request = infer_request(client, base[:, ::2])  # a strided view
        body = request.read()
        header = int(request.headers[HEADER_LENGTH])
        assert request.headers["content-type"] == "application/octet-stream"
        _, tensors = decode_request(body, header)
        np.testing.assert_array_equal(tensors["x"], base[:, ::2])

        as_json = infer_request(client, base, binary=False)
        assert HEADER_LENGTH not in as_json.headers
        assert as_json.headers["content-type"] == "application/json"
        sent = orjson.loads(as_json.read())
        assert sent["inputs"][0]["data"] == base.reshape(-1).tolist()
        assert "parameters" not in sent


def test_body_stream_iterates_again_for_retries() -> None:
    x = np.arange(10, dtype=np.int32)
    stream = BodyStream(b"{}", [x, b"\x01\x00\x00\x00a"])
    assert b"".join(stream) == b"".join(stream) == b"{}" + x.tobytes() + b"\x01\x00\x00\x00a"


# --- headers -----------------------------------------------------------------------------------


def test_default_headers_and_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MAAS_API_KEY", raising=False)
    with Client("http://maas.test/prefix/", api_key="sk-secret", headers={"X-Team": "a"}) as c:
        request = infer_request(c, np.ones((1, 2), np.float32), request_id="r1")
        assert str(request.url) == "http://maas.test/prefix/v2/models/m/infer"
        headers = request.headers
        assert headers["authorization"] == "Bearer sk-secret"
        assert headers["accept-encoding"] == "identity"
        assert headers["x-request-id"] == "r1"
        assert headers["x-team"] == "a"
        assert headers["user-agent"].startswith("maas-client/")
        assert headers["host"] == "maas.test"
        assert "sk-secret" not in repr(c)
        extra = c._pipeline.build_request(
            plan_load("m", None),
            c._pipeline.resolve({"extra_headers": {"X-Team": "b", "Accept-Encoding": "gzip"}}),
            None,
        )
        assert extra.headers["x-team"] == "b" and extra.headers["accept-encoding"] == "gzip"
        assert len(extra.headers["x-request-id"]) == 32


def test_injected_client_headers_come_under_ours() -> None:
    http = httpx.Client(headers={"X-Tenant": "t1", "Accept-Encoding": "br"})
    with Client("http://maas.test", http_client=http) as client:
        pipeline = client._pipeline
        request = pipeline.build_request(plan_load("m", None), pipeline.resolve({}), None)
    assert request.headers["x-tenant"] == "t1"
    assert request.headers["accept-encoding"] == "identity"
    http.close()


def test_model_paths_are_escaped() -> None:
    assert model_path("a/b", None) == "/v2/models/a%2Fb"
    assert model_path("m", 3, "/infer") == "/v2/models/m/versions/3/infer"
    assert model_path("m", "", "/ready") == "/v2/models/m/ready"
    assert model_path("m", "../x") == "/v2/models/m/versions/..%2Fx"
    with pytest.raises(InputError):
        model_path("", None)


def test_load_body() -> None:
    assert orjson.loads(plan_load("m", None).content or b"") == {}
    body = orjson.loads(plan_load("m", {"max_batch_size": 2}).content or b"")
    assert orjson.loads(body["parameters"]["config"]) == {"max_batch_size": 2}
    assert plan_load("m", '{"a": 1}').idempotent is False


def test_clamp_timeout() -> None:
    clamped = clamp_timeout(httpx.Timeout(10.0, connect=0.1), 0.5)
    assert clamped.as_dict() == {"connect": 0.1, "read": 0.5, "write": 0.5, "pool": 0.5}
    assert clamp_timeout(httpx.Timeout(None), 2.0).read == 2.0


# --- errors ------------------------------------------------------------------------------------


def _response(status: int, content: bytes, **headers: str) -> httpx.Response:
    request = httpx.Request("GET", "http://maas.test/v2/models/m")
    return httpx.Response(status, content=content, headers=headers, request=request)


def test_status_error_factory() -> None:
    body = b'{"error": "model busy"}'
    err = make_status_error(
        _response(503, body), body, request_id="rid", attempts=3, model="m", version="2"
    )
    assert type(err) is ServiceUnavailableError
    assert (err.status_code, err.error, err.body) == (503, "model busy", {"error": "model busy"})
    assert (err.request_id, err.attempts) == ("rid", 3)
    assert str(err) == "503 Service Unavailable: model busy (after 3 attempts)"
    assert isinstance(err, APIStatusError) and isinstance(err, APIError)
    assert isinstance(err, MaasError)

    missing = make_status_error(_response(404, b""), b"", request_id=None, attempts=1, model="m")
    assert type(missing) is ModelNotFoundError and missing.model == "m"
    assert missing.error == "Not Found"
    plain = make_status_error(_response(404, b"no"), b"no", request_id=None, attempts=1)
    assert type(plain) is NotFoundError and plain.error == "no" and plain.body == "no"

    detail = b'{"detail": [{"loc": ["body"], "msg": "bad"}]}'
    unprocessable = make_status_error(_response(422, detail), detail, request_id=None, attempts=1)
    assert "bad" in unprocessable.error
    teapot = make_status_error(_response(418, b"{}"), b"{}", request_id=None, attempts=1)
    assert type(teapot) is APIStatusError


def test_answers_that_do_not_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v2":
            return httpx.Response(200, content=b"<html>")
        return httpx.Response(200, json={"unexpected": True})

    http = httpx.Client(transport=httpx.MockTransport(handler))
    with Client("http://maas.test", http_client=http, max_retries=0) as client:
        with pytest.raises(APIResponseValidationError, match="not JSON"):
            client.server.metadata()
        with pytest.raises(APIResponseValidationError, match="not a valid ModelMetadata"):
            client.models.get("m")
        with pytest.raises(APIResponseValidationError, match="not a JSON list"):
            client.models.list()


# --- settings ----------------------------------------------------------------------------------


def test_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAAS_BASE_URL", "http://from-env:9000/")
    monkeypatch.setenv("MAAS_API_KEY", "env-key")
    monkeypatch.setenv("MAAS_TIMEOUT", "12.5")
    monkeypatch.setenv("MAAS_MAX_RETRIES", "5")
    with Client() as client:
        assert client.base_url == "http://from-env:9000"
        assert client.api_key == "env-key"
        assert client.timeout == httpx.Timeout(12.5, connect=5.0)
        assert client.max_retries == 5
    with Client("http://explicit", api_key="k", timeout=3, max_retries=0) as client:
        assert (client.base_url, client.api_key, client.max_retries) == ("http://explicit", "k", 0)
        assert client.timeout == httpx.Timeout(3)
    monkeypatch.setenv("MAAS_MAX_RETRIES", "many")
    with pytest.raises(ValueError, match="MAAS_MAX_RETRIES='many'"):
        Client()


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MAAS_BASE_URL", "MAAS_API_KEY", "MAAS_TIMEOUT", "MAAS_MAX_RETRIES"):
        monkeypatch.delenv(name, raising=False)
    with Client() as client:
        assert client.base_url == "http://127.0.0.1:8000"
        assert client.api_key is None and client.max_retries == 2
        assert client.timeout == httpx.Timeout(60.0, connect=5.0)
    with pytest.raises(ValueError, match="http:// or https://"):
        Client("127.0.0.1:8000")
    with pytest.raises(ValueError, match="must not be negative"):
        Client("http://x", max_retries=-1)
    injected = httpx.Client(timeout=httpx.Timeout(2.0))
    assert Client("http://x", http_client=injected).timeout == httpx.Timeout(2.0)
    injected.close()


async def test_with_options_async(monkeypatch: pytest.MonkeyPatch) -> None:
    async with AsyncClient("http://maas.test", max_retries=1) as client:
        copy = client.with_options(
            max_retries=4, deadline=2.0, binary=False, validate=False, api_key="new"
        )
        assert (copy.max_retries, copy.deadline, copy.binary, copy.validate) == (
            4,
            2.0,
            False,
            False,
        )
        assert copy._default_headers["Authorization"] == "Bearer new"
        assert client.max_retries == 1 and "Authorization" not in client._default_headers
        assert copy.server._pipeline is copy._pipeline and copy.models._pipeline is copy._pipeline
        elsewhere = client.with_options(base_url="http://other")
        assert elsewhere._state is not client._state  # what it learns is about another server
        await copy.close()
        assert (
            not client._pipeline.closed and copy._pipeline.transport is client._pipeline.transport
        )


# --- one table of transport errors, bounded answer buffers -------------------------------------


@pytest.mark.parametrize(
    ("exc", "cls", "sent"),
    [
        (httpx.ConnectError("refused"), APIConnectionError, False),
        (httpx.ConnectTimeout("slow connect"), APITimeoutError, False),
        (httpx.PoolTimeout("pool full"), APITimeoutError, False),
        (httpx.ReadTimeout("slow answer"), APITimeoutError, True),
        (httpx.WriteTimeout("slow body"), APITimeoutError, True),
        (httpx.RemoteProtocolError("reset"), APIConnectionError, True),
        (httpx.ReadError("broken"), APIConnectionError, True),
    ],
)
def test_transport_errors_map_through_one_table(
    exc: httpx.TransportError, cls: type[APIConnectionError], sent: bool
) -> None:
    request = httpx.Request("POST", "http://maas.test/v2/models/m/infer")
    error = connection_error(exc, request, request_id="r", attempts=2)
    assert type(error) is cls and error.sent is sent
    assert error.request is request and error.request_id == "r" and error.attempts == 2
    assert "POST http://maas.test/v2/models/m/infer" in str(error)


def test_answer_buffer_is_not_sized_from_an_absurd_content_length() -> None:
    buffer = BodyBuffer(1 << 50)  # a server announcing a petabyte
    buffer.add(b"abc")
    buffer.add(b"def")
    assert buffer.result() == bytearray(b"abcdef")
    assert known_length(httpx.Response(200, headers=[(b"content-length", "²".encode())])) is None
    assert known_length(httpx.Response(200, headers={"content-length": "9" * 5000})) is None
    whole = bytearray(b"xyz")
    exact = BodyBuffer(3)
    exact.add(whole)
    assert exact.result() is whole  # a body read whole is taken as it is
