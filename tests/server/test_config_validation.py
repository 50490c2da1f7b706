"""Configuration checks: execution provider options are known, typed and in range before ONNX
Runtime sees them (a configuration in a file, or an override an admin request sends), and a bad
configuration file makes only its own model unavailable, with the reason."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

from maas_server import Settings, create_app
from maas_server.config import ConfigError, parse_config
from tests import models
from tests.server.apps import asgi_app, mlp_request


def cpu(**options: Any) -> dict[str, Any]:
    return {"execution_providers": [{"name": "CPUExecutionProvider", "options": options}]}


BAD_OVERRIDES: list[tuple[dict[str, Any], str]] = [
    (cpu(intra_op_num_threads="many"), "'intra_op_num_threads' of CPUExecutionProvider must be"),
    (cpu(intra_op_num_threads=10**9), "'intra_op_num_threads' of CPUExecutionProvider must be"),
    (cpu(inter_op_num_threads=-1), "'inter_op_num_threads'"),
    (cpu(intra_op_num_threads=True), "'intra_op_num_threads'"),
    (cpu(intra_op_num_threads=1.5), "'intra_op_num_threads'"),
    (cpu(**{"session.load_model_format": "ORT"}), "unknown option 'session.load_model_format'"),
    (
        {
            "execution_providers": [
                {"name": "CUDAExecutionProvider", "options": {"trt_engine_cache_path": "/tmp"}}
            ]
        },
        "unknown option 'trt_engine_cache_path' of CUDAExecutionProvider",
    ),
    (
        {
            "execution_providers": [
                {"name": "CUDAExecutionProvider", "options": {"arena_extend_strategy": "huge"}}
            ]
        },
        "'arena_extend_strategy' of CUDAExecutionProvider must be one of",
    ),
    (
        {"execution_providers": [{"name": "CUDAExecutionProvider", "options": {"device_id": "x"}}]},
        "'device_id'",
    ),
    (
        {"execution_providers": [{"name": "MyExecutionProvider", "options": {"a": 1}}]},
        "unknown option 'a' of MyExecutionProvider",
    ),
    ({"execution_providers": ["not a provider"]}, "execution_providers.0"),
    ({"device_ids": [2**40]}, "device_ids.0"),
]


@pytest.mark.parametrize(("data", "fragment"), BAD_OVERRIDES)
def test_unknown_or_ill_typed_provider_options_are_refused(
    data: dict[str, Any], fragment: str
) -> None:
    with pytest.raises(ConfigError, match="invalid configuration in test") as caught:
        parse_config(data, "test")
    assert fragment in str(caught.value)


def test_known_provider_options_are_checked_and_passed_on() -> None:
    config = parse_config(
        {
            "execution_providers": [
                {
                    "name": "CUDAExecutionProvider",
                    "options": {
                        "device_id": "1",
                        "gpu_mem_limit": 2**31,
                        "arena_extend_strategy": "kSameAsRequested",
                        "do_copy_in_default_stream": 1,
                    },
                },
                {"name": "CPUExecutionProvider", "options": {"intra_op_num_threads": 2}},
                "NoSuchExecutionProvider",
            ]
        },
        "test",
    )
    cuda, cpu_provider, other = config.providers()
    assert cuda.options == {
        "device_id": 1,
        "gpu_mem_limit": 2**31,
        "arena_extend_strategy": "kSameAsRequested",
        "do_copy_in_default_stream": True,
    }
    assert cpu_provider.options == {"intra_op_num_threads": 2}
    assert other.name == "NoSuchExecutionProvider" and other.options == {}


async def test_a_bad_override_on_load_is_a_400_naming_the_option(repository: Path) -> None:
    async with asgi_app(Settings(repository=repository)) as (_, client):
        for data, fragment in BAD_OVERRIDES[:6]:
            answer = await client.post(
                "/v2/repository/models/mlp/load",
                json={"parameters": {"config": json.dumps(data)}},
            )
            assert answer.status_code == 400, answer.text
            assert fragment in answer.json()["error"]
        good = cpu(intra_op_num_threads=1, inter_op_num_threads=1)
        answer = await client.post(
            "/v2/repository/models/mlp/load", json={"parameters": {"config": json.dumps(good)}}
        )
        assert answer.status_code == 200, answer.text
        infer = await client.post("/v2/models/mlp/infer", **mlp_request())
        assert infer.status_code == 200, infer.text


# --- one bad file, one model -----------------------------------------------------------------


def bad_files_repository(root: Path) -> Path:
    """``good``: an MLP; ``latin1``: a config.json that is not UTF-8; ``threads``: a provider
    option ONNX Runtime cannot take; ``yaml_latin1``: the same as ``latin1`` in YAML."""
    for name in ("good", "latin1", "threads", "yaml_latin1"):
        models.save(models.mlp_model(), root / name / "1" / "model.onnx")
    (root / "latin1" / "config.json").write_bytes(b'{"labels": "\xe9t\xe9.txt"}')
    (root / "yaml_latin1" / "config.yaml").write_bytes(b"labels: \xe9t\xe9.txt\n")
    (root / "threads" / "config.json").write_text(json.dumps(cpu(intra_op_num_threads="many")))
    return root


async def test_a_bad_config_file_makes_only_its_model_unavailable(tmp_path: Path) -> None:
    """At start (``model_control="none"`` loads every model in the lifespan), as a server does."""
    root = bad_files_repository(tmp_path)
    app = create_app(Settings(repository=root, strict_readiness=False))
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://maas.test"
        ) as client,
    ):
        index = {r["name"]: r for r in (await client.post("/v2/repository/index")).json()}
        assert index["good"]["state"] == "READY"
        assert index["latin1"]["state"] == "UNAVAILABLE"
        assert "cannot read config.json: not UTF-8" in index["latin1"]["reason"]
        assert "cannot read config.yaml: not UTF-8" in index["yaml_latin1"]["reason"]
        assert index["threads"]["state"] == "UNAVAILABLE"
        assert "'intra_op_num_threads' of CPUExecutionProvider" in index["threads"]["reason"]
        refused = await client.post("/v2/models/threads/infer", **mlp_request())
        assert refused.status_code == 503
        assert "'intra_op_num_threads'" in refused.json()["error"]
        assert (await client.post("/v2/models/good/infer", **mlp_request())).status_code == 200
