"""examples/fetch_embedding_model.py copies MiniLM out of its wheels into a repository that
serves it as it is: the embeddings equal the direct reference."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import openai

from maas_server import Settings
from tests.conftest import start_server
from tests.pipelines import reference_embeddings

SCRIPT = Path(__file__).resolve().parent.parent / "examples" / "fetch_embedding_model.py"


def test_fetch_then_serve(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--repository", str(tmp_path), "--name", "minilm"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "wrote" in done.stdout
    assert sorted(p.name for p in (tmp_path / "minilm" / "1").iterdir()) == [
        "model.onnx",
        "tokenizer.json",
    ]
    config = json.loads((tmp_path / "minilm" / "config.json").read_text())
    assert config["task"] == "embedding"
    server = start_server(Settings(repository=tmp_path))
    try:
        with openai.OpenAI(base_url=f"{server.url}/v1", api_key="-", max_retries=0) as client:
            texts = ["fetched from a wheel", "served as it is"]
            response = client.embeddings.create(model="minilm", input=texts)
    finally:
        server.stop()
    vectors = np.array([d.embedding for d in response.data], dtype=np.float32)
    reference = reference_embeddings(texts, max_length=256)
    assert ((vectors * reference).sum(axis=1) >= 0.9999).all()
