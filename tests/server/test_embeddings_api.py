"""``POST /v1/embeddings`` with the ``openai`` package, unchanged, against the real MiniLM model:
embeddings equal the reference computed directly with tokenizers + onnxruntime + numpy, both
encodings, token inputs, ``dimensions``, usage, ``/v1/models``, API keys and OpenAI's error
shape."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
from tokenizers import Tokenizer

from maas_server import Settings
from tests.conftest import RunningServer
from tests.pipelines import minilm_tokenizer_path, reference_embeddings
from tests.server.apps import asgi_app

TEXTS = [
    "Embeddings place similar sentences close together.",
    "A dog runs in the park.",
    "Ein Hund läuft im Park. 🐕",
]


@pytest.fixture(scope="module")
def url(pipeline_server: RunningServer) -> str:
    return pipeline_server.url


@pytest.fixture
def client(url: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{url}/v1", api_key="not-checked", max_retries=0) as client:
        yield client


def _tokens(texts: list[str]) -> int:
    tokenizer = Tokenizer.from_file(str(minilm_tokenizer_path()))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return sum(len(tokenizer.encode(t).ids) for t in texts)


def _matrix(response: openai.types.CreateEmbeddingResponse) -> np.ndarray:
    assert [d.index for d in response.data] == list(range(len(response.data)))
    return np.array([d.embedding for d in response.data], dtype=np.float32)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_embeddings_equal_the_reference(client: openai.OpenAI) -> None:
    response = client.embeddings.create(model="minilm", input=TEXTS)  # base64 on the wire
    vectors = _matrix(response)
    assert vectors.shape == (3, 384)
    assert (_cosines(vectors, reference_embeddings(TEXTS)) >= 0.9999).all()
    assert response.model == "minilm"
    assert response.object == "list"
    assert response.usage.prompt_tokens == _tokens(TEXTS)
    assert response.usage.total_tokens == response.usage.prompt_tokens


def test_float_and_base64_encodings_agree(client: openai.OpenAI, url: str) -> None:
    floats = _matrix(
        client.embeddings.create(model="minilm", input=TEXTS[0], encoding_format="float")
    )
    raw = httpx.post(
        f"{url}/v1/embeddings",
        json={"model": "minilm", "input": TEXTS[0], "encoding_format": "base64"},
    ).json()
    decoded = np.frombuffer(base64.b64decode(raw["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_array_equal(floats[0], decoded)
    assert float(floats[0] @ reference_embeddings(TEXTS[:1])[0]) >= 0.9999


def test_token_inputs(client: openai.OpenAI) -> None:
    tokenizer = Tokenizer.from_file(str(minilm_tokenizer_path()))
    tokenizer.no_padding()
    ids = [tokenizer.encode(t).ids for t in TEXTS[:2]]  # with [CLS] and [SEP]
    many = _matrix(client.embeddings.create(model="minilm", input=ids))
    assert (_cosines(many, reference_embeddings(TEXTS[:2])) >= 0.9999).all()
    one = client.embeddings.create(model="minilm", input=ids[0])
    assert len(one.data) == 1
    assert float(_matrix(one)[0] @ many[0]) >= 0.9999
    assert one.usage.prompt_tokens == len(ids[0])


def test_dimensions_where_the_model_allows_them(client: openai.OpenAI) -> None:
    full = _matrix(client.embeddings.create(model="minilm_short", input=TEXTS[:2]))
    short = _matrix(client.embeddings.create(model="minilm_short", input=TEXTS[:2], dimensions=64))
    assert short.shape == (2, 64)
    np.testing.assert_allclose(np.linalg.norm(short, axis=1), 1.0, rtol=1e-5)
    expected = full[:, :64] / np.linalg.norm(full[:, :64], axis=1, keepdims=True)
    np.testing.assert_allclose(short, expected, atol=1e-6)
    with pytest.raises(openai.BadRequestError, match="dimensions"):
        client.embeddings.create(model="minilm", input="x", dimensions=64)
    with pytest.raises(openai.BadRequestError, match="from 1 to 384"):
        client.embeddings.create(model="minilm_short", input="x", dimensions=500)


def test_models_lists_embedding_models(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert {"minilm", "minilm_short"} <= set(ids)
    assert "ppocr_dir" not in ids and "sentiment" not in ids
    assert client.models.retrieve("minilm").id == "minilm"


def test_errors_in_openai_shape(client: openai.OpenAI, url: str) -> None:
    with pytest.raises(openai.BadRequestError, match="empty") as caught:
        client.embeddings.create(model="minilm", input=[])
    assert caught.value.code is None
    answer = httpx.post(f"{url}/v1/embeddings", json={"model": "minilm", "input": []})
    error = answer.json()["error"]
    assert error["type"] == "invalid_request_error" and "input" in error["message"]
    with pytest.raises(openai.BadRequestError, match="not an embedding model"):
        client.embeddings.create(model="sentiment", input="x")
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="no_such_model", input="x")
    with pytest.raises(openai.BadRequestError, match="at most 16"):
        client.embeddings.create(model="minilm_short", input="word " * 40)
    with pytest.raises(openai.BadRequestError, match="at most 16"):
        client.embeddings.create(model="minilm_short", input=[list(range(1000, 1040))])
    with pytest.raises(openai.BadRequestError, match="element 1 holds no token ids"):
        client.embeddings.create(model="minilm", input=[[101, 102], []])
    with pytest.raises(openai.BadRequestError, match="outside the model's vocabulary"):
        client.embeddings.create(model="minilm", input=[[101, 30522, 102]])
    with pytest.raises(openai.BadRequestError, match="at most 2048"):
        client.embeddings.create(model="minilm", input=["x"] * 2049)
    answer = httpx.post(
        f"{url}/v1/embeddings", json={"model": "minilm", "input": "x", "encoding_format": "int8"}
    )
    assert answer.status_code == 400
    assert "encoding_format" in answer.json()["error"]["message"]


async def test_works_with_api_keys(pipeline_repository: Path) -> None:
    settings = Settings(repository=pipeline_repository, admin_api_key="secret-key")
    async with asgi_app(settings, ["minilm"]) as (_, http):
        good = openai.AsyncOpenAI(
            base_url="http://maas.test/v1", api_key="secret-key", http_client=http
        )
        response = await good.embeddings.create(model="minilm", input=TEXTS[:1])
        assert float(_matrix(response)[0] @ reference_embeddings(TEXTS[:1])[0]) >= 0.9999
        bad = openai.AsyncOpenAI(
            base_url="http://maas.test/v1", api_key="wrong", http_client=http, max_retries=0
        )
        with pytest.raises(openai.AuthenticationError):
            await bad.embeddings.create(model="minilm", input="x")
