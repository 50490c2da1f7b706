"""Bad input gets a clear 4xx with ``{"error": ...}``, never a 500 or a hang, and the server keeps
serving: after every case below the next good request still succeeds."""

from __future__ import annotations

import asyncio
import json
import logging
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from maas_client.codec import HEADER_LENGTH
from maas_client.protocol import TensorPayload, encode_request
from maas_server import Settings
from tests.conftest import start_server


@pytest.fixture(scope="module")
def http(server_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server_url, timeout=30) as client:
        yield client


def good_request(http: httpx.Client) -> None:
    body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.5] * 64}]}
    response = http.post("/v2/models/mlp/infer", json=body)
    assert response.status_code == 200, response.text


def mlp_input(shape: list[int], datatype: str = "FP32", data: Any = None) -> dict[str, Any]:
    count = int(np.prod(shape))
    return {
        "inputs": [
            {
                "name": "input",
                "shape": shape,
                "datatype": datatype,
                "data": [0] * count if data is None else data,
            }
        ]
    }


def assert_error(response: httpx.Response, status: int, *fragments: str) -> None:
    assert response.status_code == status, response.text
    message = response.json()["error"]
    for fragment in fragments:
        assert fragment in message, message


JSON_CASES: list[tuple[str, str, dict[str, Any], int, tuple[str, ...]]] = [
    ("wrong dtype", "mlp", mlp_input([1, 64], "FP64"), 400, ("'input'", "FP32", "FP64")),
    ("wrong rank", "mlp", mlp_input([64]), 400, ("'input'", "[-1, 64]", "[64]")),
    ("wrong dim", "mlp", mlp_input([1, 63]), 400, ("[-1, 64]", "[1, 63]")),
    ("over max batch", "mlp", mlp_input([65, 64]), 400, ("65", "max_batch_size 64")),
    (
        "unknown input",
        "mlp",
        {"inputs": [{"name": "nope", "shape": [1], "datatype": "FP32", "data": [1]}]},
        400,
        ("no input 'nope'", "'input'"),
    ),
    (
        "missing input",
        "add",
        {"inputs": [{"name": "a", "shape": [1, 4], "datatype": "FP32", "data": [1] * 4}]},
        400,
        ("needs input 'b'",),
    ),
    (
        "unknown output",
        "mlp",
        {**mlp_input([1, 64]), "outputs": [{"name": "zzz"}]},
        400,
        ("no output 'zzz'",),
    ),
    ("data count", "mlp", mlp_input([1, 64], data=[1, 2, 3]), 400, ("64 elements", "3")),
    ("ragged data", "mlp", mlp_input([2, 2], data=[[1, 2], [3]]), 400, ("'input'",)),
    (
        "negative dim",
        "mlp",
        mlp_input([1, 64], data=[0] * 64)
        | {"inputs": [{"name": "input", "shape": [-1, 64], "datatype": "FP32", "data": [0] * 64}]},
        400,
        ("invalid dimension",),
    ),
    (
        "overflowing shape",
        "mlp",
        {"inputs": [{"name": "input", "shape": [2**62, 2**62], "datatype": "FP32", "data": [0]}]},
        400,
        ("elements",),
    ),
    ("unknown datatype", "mlp", mlp_input([1, 64], "FP128"), 400, ("unknown datatype 'FP128'",)),
    ("strings for numbers", "mlp", mlp_input([1, 2], data=["a", "b"]), 400, ("FP32",)),
    (
        "int overflow",
        "identity_uint8",
        {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "UINT8", "data": [1, 2, 300]}]},
        400,
        ("outside [0, 255]",),
    ),
    (
        "fraction for int",
        "identity_int32",
        {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "INT32", "data": [1, 2.5, 3]}]},
        400,
        ("integers",),
    ),
    (
        "number for BYTES",
        "identity_bytes",
        {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "BYTES", "data": ["a", 1, "c"]}]},
        400,
        ("JSON string",),
    ),
    ("no inputs key", "mlp", {"outputs": []}, 400, ("inputs",)),
    (
        "shape not a list",
        "mlp",
        {"inputs": [{"name": "input", "shape": "1,64", "datatype": "FP32", "data": [0]}]},
        400,
        ("shape",),
    ),
    (
        "duplicate input",
        "add",
        {"inputs": [{"name": "a", "shape": [1, 4], "datatype": "FP32", "data": [1] * 4}] * 2},
        400,
        ("more than once",),
    ),
    (
        "bad classification",
        "mlp",
        {
            **mlp_input([1, 64]),
            "outputs": [{"name": "output", "parameters": {"classification": 0}}],
        },
        400,
        ("classification",),
    ),
]


@pytest.mark.parametrize(
    ("model", "body", "status", "fragments"),
    [case[1:] for case in JSON_CASES],
    ids=[case[0] for case in JSON_CASES],
)
def test_bad_json_requests(
    http: httpx.Client, model: str, body: dict[str, Any], status: int, fragments: tuple[str, ...]
) -> None:
    assert_error(http.post(f"/v2/models/{model}/infer", json=body), status, *fragments)
    good_request(http)


@pytest.mark.parametrize(
    ("path", "status", "fragment"),
    [
        ("/v2/models/nothere", 404, "unknown model 'nothere'"),
        ("/v2/models/mlp/versions/7", 404, "no version 7"),
        ("/v2/models/mlp/versions/abc", 400, "versions are integers"),
        ("/v2/models/corrupt", 503, "cannot load"),
        ("/v2/models/badconfig/config", 503, "no_such_key"),
        ("/v2/models/.hidden/ready", 400, "invalid model name"),
        ("/v2/models/a%00b", 400, "invalid model name"),
        ("/v2/models/..%2F..%2Fetc/ready", 404, "Not Found"),
        ("/v2/nowhere", 404, "Not Found"),
    ],
)
def test_bad_model_paths(http: httpx.Client, path: str, status: int, fragment: str) -> None:
    assert_error(http.get(path), status, fragment)


def test_unknown_model_infer_is_404(http: httpx.Client) -> None:
    assert_error(http.post("/v2/models/ghost/infer", json=mlp_input([1, 64])), 404, "ghost")


def test_wrong_method_is_405_json(http: httpx.Client) -> None:
    response = http.get("/v2/models/mlp/infer")
    assert response.status_code == 405
    assert "error" in response.json()


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2, 3]", "malformed inference request"),
        (b"", "not valid JSON"),
        (b"\xff\xfe\x00", "not valid JSON"),
    ],
)
def test_malformed_json_body(http: httpx.Client, content: bytes, fragment: str) -> None:
    response = http.post("/v2/models/mlp/infer", content=content)
    assert_error(response, 400, fragment)
    good_request(http)


def binary_body(x: np.ndarray[Any, Any], datatype: str = "FP32") -> tuple[bytes, int]:
    body = encode_request([TensorPayload("input", x, datatype, binary=True)])
    assert body.header_length is not None
    return bytes(body.content), body.header_length


def test_truncated_binary_body(http: httpx.Client) -> None:
    content, length = binary_body(np.zeros((1, 64), np.float32))
    response = http.post(
        "/v2/models/mlp/infer", content=content[:-10], headers={HEADER_LENGTH: str(length)}
    )
    assert_error(response, 400, "binary_data_size is 256", "246")
    good_request(http)


def test_header_length_beyond_body(http: httpx.Client) -> None:
    content, _ = binary_body(np.zeros((1, 64), np.float32))
    response = http.post(
        "/v2/models/mlp/infer", content=content, headers={HEADER_LENGTH: str(len(content) + 1)}
    )
    assert_error(response, 400, HEADER_LENGTH)


@pytest.mark.parametrize("value", ["-5", "abc", "1e3"])
def test_invalid_header_length(http: httpx.Client, value: str) -> None:
    content, _ = binary_body(np.zeros((1, 64), np.float32))
    response = http.post("/v2/models/mlp/infer", content=content, headers={HEADER_LENGTH: value})
    assert_error(response, 400, HEADER_LENGTH)


def test_binary_size_disagrees_with_shape(http: httpx.Client) -> None:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [1, 64],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 128},
                }
            ]
        }
    ).encode()
    response = http.post(
        "/v2/models/mlp/infer",
        content=header + bytes(128),
        headers={HEADER_LENGTH: str(len(header))},
    )
    assert_error(response, 400, "needs 256 bytes, got 128")


def test_extra_bytes_after_binary_tensors(http: httpx.Client) -> None:
    content, length = binary_body(np.zeros((1, 64), np.float32))
    response = http.post(
        "/v2/models/mlp/infer", content=content + b"junk", headers={HEADER_LENGTH: str(length)}
    )
    assert_error(response, 400, "4 bytes of binary data beyond")


@pytest.mark.parametrize("size", [-1, "12", 1.5, True])
def test_invalid_binary_data_size(http: httpx.Client, size: Any) -> None:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [1, 64],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": size},
                }
            ]
        }
    ).encode()
    response = http.post(
        "/v2/models/mlp/infer",
        content=header + bytes(256),
        headers={HEADER_LENGTH: str(len(header))},
    )
    assert response.status_code == 400, response.text


def test_bytes_element_length_overruns(http: httpx.Client) -> None:
    payload = (1000).to_bytes(4, "little") + b"abc"
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [1, 1],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(payload)},
                }
            ]
        }
    ).encode()
    response = http.post(
        "/v2/models/identity_bytes/infer",
        content=header + payload,
        headers={HEADER_LENGTH: str(len(header))},
    )
    assert_error(response, 400, "declares 1000 bytes")


@pytest.mark.parametrize("rows", [2**40, 2**21])
def test_bytes_huge_shape_is_refused_without_allocating(http: httpx.Client, rows: int) -> None:
    """One element of data for a shape of ``rows`` x 3: refused before anything of the shape's
    size is allocated. The server runs in this process, so tracemalloc sees its allocations
    (numpy arrays and Python lists included); 2**21 x 3 elements would be a 48 MiB array of
    object pointers, well within the element limit, so allocating first would show."""
    payload = (3).to_bytes(4, "little") + b"abc"
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [rows, 3],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(payload)},
                }
            ]
        }
    ).encode()
    content = header + payload
    headers = {HEADER_LENGTH: str(len(header))}
    tracemalloc.start()
    try:
        response = http.post("/v2/models/identity_bytes/infer", content=content, headers=headers)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert_error(response, 400, "BYTES")
    assert peak < 4 * 2**20, f"{peak} bytes allocated while refusing the request"
    good_request(http)


def test_non_utf8_bytes_for_string_model(http: httpx.Client) -> None:
    text = np.array([b"\xff\xfeoops"], dtype=object)
    body = encode_request([TensorPayload("text", text, "BYTES", binary=True)])
    response = http.post(
        "/v2/models/strings/infer",
        content=bytes(body.content),
        headers={HEADER_LENGTH: str(body.header_length)},
    )
    assert_error(response, 400, "not valid UTF-8")
    good_request(http)


def test_raw_request_for_multi_input_model(http: httpx.Client) -> None:
    response = http.post("/v2/models/add/infer", content=bytes(32), headers={HEADER_LENGTH: "0"})
    assert_error(response, 400, "one input")


def test_raw_request_with_partial_row(http: httpx.Client) -> None:
    response = http.post("/v2/models/mlp/infer", content=bytes(100), headers={HEADER_LENGTH: "0"})
    assert_error(response, 400, "needs 256 bytes, got 100")


def test_repository_bad_bodies(http: httpx.Client) -> None:
    assert_error(http.post("/v2/repository/index", content=b"{oops"), 400, "not valid JSON")
    assert_error(http.post("/v2/repository/index", json={"ready": "yes"}), 400, "'ready'")
    assert_error(
        http.post("/v2/repository/models/mlp/load", json={"parameters": {"config": 5}}),
        400,
        "parameters.config",
    )
    assert_error(http.post("/v2/repository/models/ghost/load"), 404, "ghost")
    assert_error(http.post("/v2/repository/models/.x/load"), 400, "invalid model name")
    assert http.post("/v2/repository/models/..%2Fx/load").status_code == 404


def test_oversized_body_is_413(repository: Path) -> None:
    running = start_server(
        Settings(repository=repository, max_body_bytes=1000, strict_readiness=False)
    )
    try:
        with httpx.Client(base_url=running.url) as http:
            big = mlp_input([4, 64], data=[0.123456] * 256)
            assert_error(http.post("/v2/models/mlp/infer", json=big), 413, "1000 bytes")

            def chunks() -> Iterator[bytes]:
                yield b'{"inputs": ['
                for _ in range(100):
                    yield b" " * 100

            streamed = http.post("/v2/models/mlp/infer", content=chunks())
            assert_error(streamed, 413, "1000 bytes")
            small = mlp_input([1, 2], data=[1, 2])
            assert http.post("/v2/models/mlp/infer", json=small).status_code == 400
    finally:
        running.stop()


# --- a fault no route expected ------------------------------------------------------------------

SECRET = "/srv/secrets/db.conf: password=hunter2"


async def _explode(request: Any) -> Any:
    raise RuntimeError(f"cannot open {SECRET}")


@pytest.mark.parametrize("access_log", ["json", "off"])
async def test_unexpected_error_is_a_plain_500_with_the_request_id(
    repository: Path, access_log: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from asgi_lifespan import LifespanManager
    from starlette.routing import Route

    from maas_server import create_app

    settings = Settings(repository=repository, model_control="explicit", access_log=access_log)
    app = create_app(settings)
    app.router.routes.append(Route("/explode", _explode, methods=["GET"]))
    async with LifespanManager(app) as manager:
        await asyncio.to_thread(app.state.dataplane.repository.load, "mlp")
        transport = httpx.ASGITransport(app=manager.app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://maas.test") as client:
            with caplog.at_level(logging.ERROR, logger="maas_server"):
                answer = await client.get("/explode", headers={"X-Request-ID": "req-42"})
            assert answer.status_code == 500
            body = answer.json()
            assert body["error"] == "internal server error"
            assert "hunter2" not in answer.text and "RuntimeError" not in answer.text
            request_id = body["request_id"]
            assert answer.headers.get_list("x-request-id") == [request_id]
            if access_log == "json":
                assert request_id == "req-42"  # the access log's id for the request
            (record,) = [r for r in caplog.records if "unexpected error" in r.getMessage()]
            assert request_id in record.getMessage() and "GET /explode" in record.getMessage()
            assert record.exc_info is not None and SECRET in str(record.exc_info[1])
            # the next good request still works
            good = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32",
                                "data": [0.5] * 64}]}  # fmt: skip
            assert (await client.post("/v2/models/mlp/infer", json=good)).status_code == 200
