"""Statistics, Prometheus metrics, the access log and the OpenAPI document, checked against known
sequences of requests."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest
import tritonclient.http as triton_http
from prometheus_client.parser import text_string_to_metric_families

from maas_server import Settings, create_app
from maas_server.access_log import ACCESS_LOGGER
from maas_server.keys_file import add_key
from maas_server.metrics import TRITON_COUNTERS
from maas_server.openapi import route_operations
from maas_server.stats import LATENCY_BUCKETS_S
from tests.server.apps import asgi_app, bearer, mlp_request

TRITON_METRICS = [*TRITON_COUNTERS, "nv_inference_pending_request_count"]


def parse_metrics(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """``{sample name: {sorted labels: value}}`` from Prometheus text, read by prometheus_client's
    parser (which names counter samples ``*_total``; Triton's keep the names they are sent with,
    which :func:`test_metrics_after_a_known_sequence` checks in the text itself)."""
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name = sample.name
            if family.name in TRITON_COUNTERS:
                name = name.removesuffix("_total")
            labels = tuple(sorted(sample.labels.items()))
            samples.setdefault(name, {})[labels] = sample.value
    return samples


def model_labels(model: str, version: str = "1", **extra: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted({"model": model, "version": version, **extra}.items()))


async def run_known_sequence(client: httpx.AsyncClient) -> None:
    """3 successful mlp requests of 1, 2 and 4 rows; a body that cannot be decoded (refused
    before it reaches the model: no model statistic counts it); a request naming an input the
    model lacks (one failure, reason ``invalid_request``)."""
    for rows in (1, 2, 4):
        answer = await client.post("/v2/models/mlp/infer", **mlp_request(rows))
        assert answer.status_code == 200, answer.text
    bad = mlp_request()
    bad["content"] = bad["content"].replace(b'"shape":[1,64]', b'"shape":[1,63]')
    bad["content"] = bad["content"][:-4]
    assert (await client.post("/v2/models/mlp/infer", **bad)).status_code == 400
    wrong_input = {
        "inputs": [{"name": "nope", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]
    }
    assert (await client.post("/v2/models/mlp/infer", json=wrong_input)).status_code == 400


async def load_batching_mlp(client: httpx.AsyncClient) -> None:
    """Reload ``mlp`` with dynamic batching (no delay, so these sequential requests run alone)."""
    config = {"max_batch_size": 64, "dynamic_batching": {}}
    body = {"parameters": {"config": json.dumps(config)}}
    answer = await client.post("/v2/repository/models/mlp/load", json=body)
    assert answer.status_code == 200, answer.text


async def test_statistics_after_a_known_sequence(repository: Path) -> None:
    async with asgi_app(Settings(repository=repository), models=("mlp", "add")) as (_, client):
        await load_batching_mlp(client)
        empty = (await client.get("/v2/models/mlp/stats")).json()["model_stats"][0]
        assert empty["inference_count"] == 0 and empty["execution_count"] == 0
        await run_known_sequence(client)
        answer = await client.get("/v2/models/mlp/stats")
        assert answer.status_code == 200
        (stats,) = answer.json()["model_stats"]
        assert stats["name"] == "mlp" and stats["version"] == "1"
        assert stats["inference_count"] == 7
        assert stats["execution_count"] == 3
        assert stats["last_inference"] > 0
        inference = stats["inference_stats"]
        assert inference["success"]["count"] == 3
        assert inference["fail"]["count"] == 1
        for phase in ("queue", "compute_input", "compute_infer", "compute_output"):
            assert inference[phase]["count"] == 3
        assert inference["success"]["ns"] >= inference["compute_infer"]["ns"] > 0
        assert [b["batch_size"] for b in stats["batch_stats"]] == [1, 2, 4]
        assert all(b["compute_infer"]["count"] == 1 for b in stats["batch_stats"])

        by_version = (await client.get("/v2/models/mlp/versions/1/stats")).json()
        assert by_version["model_stats"] == [stats]
        every = (await client.get("/v2/models/stats")).json()["model_stats"]
        assert [s["name"] for s in every] == ["add", "mlp"]
        assert every[1] == stats
        assert every[0]["inference_count"] == 0


async def test_statistics_errors(repository: Path) -> None:
    async with asgi_app(Settings(repository=repository), models=("versioned",)) as (_, client):
        assert (await client.get("/v2/models/nosuchmodel/stats")).status_code == 404
        versions = (await client.get("/v2/models/versioned/stats")).json()["model_stats"]
        assert [s["version"] for s in versions] == ["2", "3"]
        assert (await client.get("/v2/models/versioned/versions/1/stats")).status_code == 404
        assert (await client.get("/v2/models/versioned/versions/x/stats")).status_code == 400
        # A model of the repository that is not loaded has no statistics yet.
        assert (await client.get("/v2/models/mlp/stats")).json() == {"model_stats": []}
        extensions = (await client.get("/v2")).json()["extensions"]
        assert "statistics" in extensions


def test_tritonclient_reads_the_statistics(server_url: str) -> None:
    client = triton_http.InferenceServerClient(server_url.removeprefix("http://"))
    try:
        stats = client.get_inference_statistics("mlp")
        assert stats["model_stats"][0]["name"] == "mlp"
        assert "success" in stats["model_stats"][0]["inference_stats"]
        every = client.get_inference_statistics()
        assert {"mlp", "add"} <= {s["name"] for s in every["model_stats"]}
    finally:
        client.close()


async def test_metrics_after_a_known_sequence(repository: Path) -> None:
    async with asgi_app(Settings(repository=repository, max_body_bytes=4096)) as (_, client):
        await load_batching_mlp(client)
        await run_known_sequence(client)
        too_big = await client.post("/v2/models/mlp/infer", content=b"x" * 5000)
        assert too_big.status_code == 413
        stats = (await client.get("/v2/models/mlp/stats")).json()["model_stats"][0]
        answer = await client.get("/metrics")
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
        text = answer.text
        metrics = parse_metrics(text)

    labels = model_labels("mlp")
    # Triton's names, exactly: no _total suffix on the samples or the HELP/TYPE lines.
    for name in TRITON_METRICS:
        assert f"\n# TYPE {name} " in text
        assert name in metrics, name
    assert "nv_inference_request_success_total" not in text
    assert '\nnv_inference_count{model="mlp",version="1"} 7.0\n' in text
    assert "# TYPE nv_inference_request_success counter" in text
    assert "# TYPE nv_inference_pending_request_count gauge" in text
    inference = stats["inference_stats"]
    assert metrics["nv_inference_request_success"][labels] == 3
    assert metrics["nv_inference_request_failure"][labels] == 1
    assert metrics["nv_inference_count"][labels] == 7
    assert metrics["nv_inference_exec_count"][labels] == 3
    assert metrics["nv_inference_pending_request_count"][labels] == 0
    expected_us = {
        "nv_inference_request_duration_us": inference["success"]["ns"] // 1000,
        "nv_inference_queue_duration_us": inference["queue"]["ns"] // 1000,
        "nv_inference_compute_input_duration_us": inference["compute_input"]["ns"] // 1000,
        "nv_inference_compute_infer_duration_us": inference["compute_infer"]["ns"] // 1000,
        "nv_inference_compute_output_duration_us": inference["compute_output"]["ns"] // 1000,
    }
    for name, value in expected_us.items():
        assert metrics[name][labels] == value, name

    # The latency histogram counts the successful requests; its sum is their total time.
    histogram = "maas_inference_request_duration_seconds"
    assert metrics[f"{histogram}_count"][labels] == 3
    assert metrics[f"{histogram}_sum"][labels] == pytest.approx(inference["success"]["ns"] / 1e9)
    buckets = [
        metrics[f"{histogram}_bucket"][model_labels("mlp", le=le)]
        for le in [*(str(b) for b in LATENCY_BUCKETS_S), "+Inf"]
    ]
    assert buckets == sorted(buckets) and buckets[-1] == 3

    rejected = metrics["maas_inference_rejected_total"]
    assert rejected[model_labels("mlp", reason="invalid_request")] == 1
    server_rejected = metrics["maas_rejected_requests_total"]
    assert server_rejected[(("reason", "payload_too_large"),)] == 1


async def test_metrics_count_refusals_by_reason(repository: Path, tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    reader, _ = add_key(path, "reader", ["read"], rate=1.0, burst=1)
    settings = Settings(repository=repository, api_keys_file=path, max_header_bytes=2000)
    async with asgi_app(settings) as (_, client):
        headers = bearer(reader)
        assert (await client.get("/v2")).status_code == 401
        assert (await client.get("/v2", headers=bearer("wrong"))).status_code == 401
        assert (await client.post("/v2/models/mlp/infer", headers=headers)).status_code == 403
        assert (await client.get("/v2", headers={"X-Big": "x" * 3000})).status_code == 431
        assert (await client.get("/metrics", headers=headers)).status_code == 200  # spends it
        assert (await client.get("/metrics", headers=headers)).status_code == 429
        admin = Settings(repository=repository, admin_api_key="admin-key")
    async with asgi_app(admin) as (_, admin_client):
        text = (await admin_client.get("/metrics", headers=bearer("admin-key"))).text
    assert "maas_rejected_requests_total" not in parse_metrics(text)  # a new app starts at zero

    async with asgi_app(settings) as (app, client):
        app.state.keys.reload(force=True)
        for _ in range(2):
            await client.get("/v2")
        text = (await client.get("/metrics", headers=bearer(reader))).text
    assert parse_metrics(text)["maas_rejected_requests_total"] == {
        (("reason", "unauthenticated"),): 2
    }


async def test_metrics_on_a_separate_port(repository: Path) -> None:
    settings = Settings(repository=repository, metrics_port=0)
    async with asgi_app(settings) as (app, client):
        assert (await client.get("/metrics")).status_code == 404
        await load_batching_mlp(client)
        await run_known_sequence(client)
        port = app.state.metrics_server.port
        async with httpx.AsyncClient() as scraper:
            answer = await scraper.get(f"http://127.0.0.1:{port}/metrics")
            assert answer.status_code == 200
            assert parse_metrics(answer.text)["nv_inference_count"][model_labels("mlp")] == 7
            assert (await scraper.get(f"http://127.0.0.1:{port}/other")).status_code == 404


# --- the access log ----------------------------------------------------------------------------


async def test_access_log_text(repository: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings(repository=repository, admin_api_key="the-admin-key", access_log="text")
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    async with asgi_app(settings) as (_, client):
        request = mlp_request()
        request["headers"].update(bearer("the-admin-key", **{"X-Request-ID": "req-42"}))
        answer = await client.post("/v2/models/mlp/versions/1/infer", **request)
        assert answer.status_code == 200
        assert answer.headers["x-request-id"] == "req-42"
        refused = await client.get("/v2/models/mlp", headers={"X-Request-ID": "bad id\nforged"})
        assert refused.status_code == 401
        made = refused.headers["x-request-id"]
        assert len(made) == 24 and made.isalnum()
    lines = [r.getMessage() for r in caplog.records if r.name == ACCESS_LOGGER]
    assert len(lines) == 2
    ok, denied = lines
    assert '"POST /v2/models/mlp/versions/1/infer HTTP/1.1" 200' in ok
    assert f"in={len(request['content'])}" in ok
    assert f"out={len(answer.content)}" in ok
    assert "id=req-42 key=admin model=mlp version=1" in ok
    assert "the-admin-key" not in "\n".join(lines)
    assert '"GET /v2/models/mlp HTTP/1.1" 401' in denied
    assert f"id={made} key=- model=mlp version=-" in denied
    assert "\n" not in denied


async def test_access_log_json(repository: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings(repository=repository, access_log="json")
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    async with asgi_app(settings) as (_, client):
        answer = await client.post("/v2/models/mlp/infer", **mlp_request())
        missing = await client.get("/v2/models/nosuch")
    records = [r for r in caplog.records if r.name == ACCESS_LOGGER]
    first, second = (json.loads(r.getMessage()) for r in records)
    assert first["request_id"] == answer.headers["x-request-id"]
    assert first["method"] == "POST" and first["path"] == "/v2/models/mlp/infer"
    assert first["status"] == 200 and first["model"] == "mlp" and first["version"] is None
    assert first["bytes_out"] == len(answer.content) and first["duration_ms"] > 0
    assert first["key"] is None
    assert second["status"] == 404 and second["model"] == "nosuch"
    assert second["request_id"] == missing.headers["x-request-id"]


async def test_access_log_off_by_default(
    repository: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    async with asgi_app(Settings(repository=repository)) as (_, client):
        answer = await client.get("/v2")
    assert "x-request-id" not in answer.headers
    assert not [r for r in caplog.records if r.name == ACCESS_LOGGER]


# --- the OpenAPI document -----------------------------------------------------------------------


def test_openapi_document_covers_every_route(repository: Path) -> None:
    for settings in (
        Settings(repository=repository),
        Settings(repository=repository, metrics_port=0, admin_api_key="k"),
    ):
        app = create_app(settings)
        routes = {(path, method) for path, method, _ in route_operations(app.routes)}
        from maas_server.openapi import build_openapi

        document = build_openapi(app.routes, settings)
        documented = {
            (path, method.upper())
            for path, operations in document["paths"].items()
            for method in operations
        }
        assert documented == routes
        assert ("/metrics", "GET") in routes if settings.metrics_port is None else True


async def test_openapi_endpoint(repository: Path) -> None:
    async with asgi_app(Settings(repository=repository)) as (_, client):
        answer = await client.get("/v2/openapi.json")
        assert answer.status_code == 200
        document = answer.json()
    assert document["openapi"].startswith("3.")
    paths = document["paths"]
    infer = paths["/v2/models/{model}/infer"]["post"]
    assert infer["parameters"] == [
        {"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}
    ]
    request_schema = infer["requestBody"]["content"]["application/json"]["schema"]
    assert request_schema == {"$ref": "#/components/schemas/InferenceRequest"}
    assert "application/octet-stream" in infer["requestBody"]["content"]
    schemas = document["components"]["schemas"]
    for name in ("InferenceRequest", "InferenceResponse", "ModelMetadata", "RequestInput"):
        assert name in schemas, name
    assert "security" not in document
    refs = _refs(document)
    assert refs and all(ref.removeprefix("#/components/schemas/") in schemas for ref in refs)
    operation_ids = [op["operationId"] for ops in paths.values() for op in ops.values()]
    assert len(operation_ids) == len(set(operation_ids))


async def test_openapi_declares_bearer_auth_when_keys_are_on(repository: Path) -> None:
    settings = Settings(repository=repository, admin_api_key="k")
    async with asgi_app(settings) as (_, client):
        document = (await client.get("/v2/openapi.json", headers=bearer("k"))).json()
    assert document["security"] == [{"apiKey": []}]
    assert document["components"]["securitySchemes"]["apiKey"]["scheme"] == "bearer"
    assert document["paths"]["/v2/health/live"]["get"]["security"] == []


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for value in node.values() for r in _refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in _refs(value)]
    return []
