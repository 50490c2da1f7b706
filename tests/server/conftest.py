"""Fixtures for the text-generation tests: a repository built around the committed ``tiny_gpt``
(examples/model_repository/tiny_gpt, made by examples/build_tiny_lm.py), a real uvicorn server
over it, and a reference decoder that runs onnxruntime directly, without the KV cache.

Models in ``generation_repository``:

- ``tiny_gpt``: the example as it is (greedy by default, 32 new tokens, context 256);
- ``tiny_gpt_eos``: the same, with an ``eos_token_id`` that greedy decoding of ``EOS_PROMPT``
  reaches at its 6th new token;
- ``tiny_gpt_iobinding``: the same, run through IO binding (on the CPU provider);
- ``tiny_gpt_serial``: the graph with ``input_ids`` fixed to batch 1, so that sequences are
  stepped one after the other instead of batched;
- ``tiny_gpt_pairs``: at most 2 sequences at once (``max_batch_size: 2``), the others wait;
- ``tiny_gpt_spare``: a copy for tests that unload and reload it;
- ``tiny_gpt_stats``: a copy whose statistics only tests/server/test_generation_stats.py's
  known sequence touches;
- ``no_tokenizer``: a text-generation model without its tokenizer.json;
- ``not_a_decoder``: an MLP configured as a text-generation model;
- ``mlp``: an ordinary inference model.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from tokenizers import Tokenizer

from maas_server import Settings, default_repository
from maas_server.generation import GenerationEngine, GenerationService
from tests import models
from tests.conftest import RunningServer, start_server

TINY_GPT = default_repository() / "tiny_gpt"
EOS_PROMPT = "Licensed under the Apache License"
EOS_AFTER = 6


def tiny_session() -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(
        str(TINY_GPT / "1" / "model.onnx"), options, providers=["CPUExecutionProvider"]
    )


def reference_greedy(session: ort.InferenceSession, prompt: list[int], steps: int) -> list[int]:
    """Greedy decoding without a KV cache: the whole sequence runs again at every step."""
    past = {
        i.name: np.zeros((1, i.shape[1], 0, i.shape[3]), np.float32)
        for i in session.get_inputs()
        if i.name.startswith("past_key_values.")
    }
    tokens = list(prompt)
    for _ in range(steps):
        ids = np.array([tokens], dtype=np.int64)
        feeds = {
            "input_ids": ids,
            "attention_mask": np.ones_like(ids),
            "position_ids": np.arange(len(tokens), dtype=np.int64)[None, :],
            **past,
        }
        (logits,) = session.run(["logits"], feeds)
        tokens.append(int(logits[0, -1].argmax()))
    return tokens[len(prompt) :]


def _copy_model(
    root: Path, name: str, config: dict[str, Any], model: onnx.ModelProto | None
) -> None:
    target = root / name
    (target / "1").mkdir(parents=True)
    for filename in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(TINY_GPT / filename, target / filename)
    if model is None:
        shutil.copy(TINY_GPT / "1" / "model.onnx", target / "1" / "model.onnx")
    else:
        onnx.save(model, str(target / "1" / "model.onnx"))
    (target / "config.json").write_text(json.dumps(config))


def build_generation_repository(root: Path) -> Path:
    base = json.loads((TINY_GPT / "config.json").read_text())
    tokenizer = Tokenizer.from_file(str(TINY_GPT / "tokenizer.json"))
    prompt = tokenizer.encode(EOS_PROMPT).ids
    eos = reference_greedy(tiny_session(), prompt, EOS_AFTER)[-1]
    _copy_model(root, "tiny_gpt", base, None)
    _copy_model(
        root,
        "tiny_gpt_eos",
        {**base, "generation": {**base["generation"], "eos_token_id": [eos, 0]}},
        None,
    )
    _copy_model(
        root,
        "tiny_gpt_iobinding",
        {**base, "generation": {**base["generation"], "io_binding": True}},
        None,
    )
    fixed = onnx.load(str(TINY_GPT / "1" / "model.onnx"))
    for graph_input in fixed.graph.input:
        if graph_input.name == "input_ids":
            graph_input.type.tensor_type.shape.dim[0].dim_value = 1
    _copy_model(root, "tiny_gpt_serial", base, fixed)
    _copy_model(
        root,
        "tiny_gpt_pairs",
        {**base, "generation": {**base["generation"], "max_batch_size": 2}},
        None,
    )
    _copy_model(root, "tiny_gpt_spare", base, None)
    _copy_model(root, "tiny_gpt_stats", base, None)
    _copy_model(root, "no_tokenizer", base, None)
    (root / "no_tokenizer" / "tokenizer.json").unlink()
    models.save(models.mlp_model(), root / "mlp" / "1" / "model.onnx")
    _copy_model(root, "not_a_decoder", base, models.mlp_model())
    return root


@pytest.fixture(scope="session")
def generation_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_generation_repository(tmp_path_factory.mktemp("generation_repository"))


@pytest.fixture(scope="session")
def generation_server(generation_repository: Path) -> Iterator[RunningServer]:
    running = start_server(Settings(repository=generation_repository, strict_readiness=False))
    yield running
    running.stop()


@pytest.fixture(scope="session")
def generation_url(generation_server: RunningServer) -> str:
    return generation_server.url


@pytest.fixture(scope="session")
def generation_service(generation_server: RunningServer) -> GenerationService:
    service: GenerationService = generation_server.server.config.app.state.generation
    return service


@pytest.fixture(scope="session")
def reference_session() -> ort.InferenceSession:
    return tiny_session()


@pytest.fixture(scope="session")
def tokenizer() -> Tokenizer:
    return Tokenizer.from_file(str(TINY_GPT / "tokenizer.json"))


def engine_of(service: GenerationService, url: str, model: str) -> GenerationEngine:
    """The engine of the version of ``model`` a running server serves now (a request makes
    the server create it first, so that here it is only looked up)."""
    answer = httpx.post(
        f"{url}/v2/models/{model}/generate", json={"text_input": "a", "max_tokens": 1}
    )
    assert answer.status_code == 200, answer.text
    return service.engine(model, None)
