"""Python hooks (pre.py, post.py) of pipeline models: run only with allow_model_code, refused
with a clear reason otherwise."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from maas_client.codec import HEADER_LENGTH
from maas_client.protocol import TensorPayload, encode_request
from maas_server import Settings
from tests.conftest import ppocr_cls_path
from tests.pipelines import (
    minilm_path,
    minilm_tokenizer_path,
    ppocr_reference,
    reference_embeddings,
    text_classifier_model,
    text_image,
)
from tests.server.apps import asgi_app

POST_CLS = """
import numpy as np

def postprocess(outputs, inputs):
    hidden = outputs["last_hidden_state"]
    return hidden[:, 0, :] * 2.0  # the [CLS] token, not normalised
"""

PRE_CHARS = """
import numpy as np

def preprocess(texts):
    width = max(len(t) for t in texts)
    ids = np.zeros((len(texts), width), dtype=np.int64)
    mask = np.zeros((len(texts), width), dtype=np.int64)
    for row, text in enumerate(texts):
        ids[row, : len(text)] = [ord(c) % 30522 for c in text]
        mask[row, : len(text)] = 1
    return {"input_ids": ids, "attention_mask": mask}
"""


@pytest.fixture
def hooked(tmp_path: Path) -> Path:
    """``cls_embed``: MiniLM with a post.py ([CLS] pooling); ``chars``: a text classifier with
    a pre.py (character codes as token ids) and no tokenizer."""
    version = tmp_path / "cls_embed" / "1"
    version.mkdir(parents=True)
    shutil.copyfile(minilm_path(), version / "model.onnx")
    shutil.copyfile(minilm_tokenizer_path(), version / "tokenizer.json")
    (version / "post.py").write_text(POST_CLS)
    (tmp_path / "cls_embed" / "config.json").write_text(json.dumps({"task": "embedding"}))
    version = tmp_path / "chars" / "1"
    version.mkdir(parents=True)
    (version / "model.onnx").write_bytes(text_classifier_model(30522, 2))
    (version / "pre.py").write_text(PRE_CHARS)
    (tmp_path / "chars" / "config.json").write_text(
        json.dumps({"task": "text-classification", "labels": ["no", "yes"]})
    )
    return tmp_path


def _texts(*texts: str) -> dict[str, object]:
    return {
        "inputs": [
            {"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": list(texts)}
        ]
    }


async def test_hooks_run_when_allowed(hooked: Path) -> None:
    settings = Settings(repository=hooked, allow_model_code=True)
    async with asgi_app(settings, ["cls_embed", "chars"]) as (_, client):
        answer = await client.post("/v2/models/cls_embed/infer", json=_texts("hello world"))
        assert answer.status_code == 200, answer.text
        (output,) = answer.json()["outputs"]
        vector = np.array(output["data"], dtype=np.float32)
        answer = await client.post(
            "/v2/models/chars/infer", json={**_texts("abc", "hello"), "parameters": {"top_k": 2}}
        )
        assert answer.status_code == 200, answer.text
        outputs = {o["name"]: o for o in answer.json()["outputs"]}
    # [CLS] pooling (not the default mean pooling) from the post hook
    session = ort.InferenceSession(str(minilm_path()))
    ids = np.array([[101, 7592, 2088, 102]], dtype=np.int64)
    (hidden,) = session.run(
        None, {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": 0 * ids}
    )
    np.testing.assert_allclose(vector, hidden[0, 0] * 2.0, rtol=1e-4, atol=1e-4)
    assert float(vector @ reference_embeddings(["hello world"])[0]) < 0.99 * np.linalg.norm(vector)
    # character codes as token ids from the pre hook
    direct = ort.InferenceSession(text_classifier_model(30522, 2))
    codes = np.array([[ord(c) for c in "abc"]], dtype=np.int64)
    (logits,) = direct.run(None, {"input_ids": codes, "attention_mask": np.ones_like(codes)})
    probabilities = np.exp(logits[0]) / np.exp(logits[0]).sum()
    order = np.argsort(-probabilities)
    assert outputs["label"]["data"][:2] == [["no", "yes"][i] for i in order]
    np.testing.assert_allclose(outputs["score"]["data"][:2], probabilities[order], rtol=1e-5)


async def test_hooks_are_refused_unless_allowed(hooked: Path) -> None:
    async with asgi_app(Settings(repository=hooked), []) as (app, client):
        repository = app.state.dataplane.repository
        for name, hook in (("cls_embed", "post.py"), ("chars", "pre.py")):
            record = await asyncio.to_thread(repository.load, name)
            assert record.state == "UNAVAILABLE"
            assert hook in record.reason and "--allow-model-code" in record.reason
        answer = await client.post("/v2/models/cls_embed/infer", json=_texts("x"))
        assert answer.status_code == 503


async def test_a_hook_that_fails_to_import_is_a_load_error(hooked: Path) -> None:
    (hooked / "chars" / "1" / "pre.py").write_text("import no_such_module_here\n")
    async with asgi_app(Settings(repository=hooked, allow_model_code=True), []) as (app, _):
        record = await asyncio.to_thread(app.state.dataplane.repository.load, "chars")
    assert record.state == "UNAVAILABLE"
    assert "pre.py failed to import" in record.reason and "no_such_module_here" in record.reason


PRE_IMAGE = """
import io
import math

import numpy as np
from PIL import Image

def preprocess(images):
    batch = []
    for data in images:
        image = Image.open(io.BytesIO(data)).convert("RGB")
        width = min(192, math.ceil(48 * image.width / image.height))
        pixels = np.asarray(image.resize((width, 48), Image.Resampling.BILINEAR), np.float32)
        padded = np.zeros((3, 48, 192), dtype=np.float32)
        padded[:, :, :width] = (pixels.transpose(2, 0, 1) / 255 - 0.5) / 0.5
        batch.append(padded)
    return {"x": np.stack(batch)}
"""


async def test_an_image_pre_hook(tmp_path: Path) -> None:
    version = tmp_path / "direction" / "1"
    version.mkdir(parents=True)
    shutil.copyfile(ppocr_cls_path(), version / "model.onnx")
    (version / "pre.py").write_text(PRE_IMAGE)
    config = {"task": "image-classification", "labels": ["0", "180"]}
    (tmp_path / "direction" / "config.json").write_text(
        json.dumps({**config, "pipeline": {"outputs": {"activation": "none"}}})
    )
    images = [text_image("Turn me around", rotate=True), text_image("Upright")]
    array = np.empty(2, dtype=object)
    array[:] = images
    body = encode_request([TensorPayload("image", array, "BYTES", True)])
    async with asgi_app(Settings(repository=tmp_path, allow_model_code=True), ["direction"]) as (
        _,
        client,
    ):
        answer = await client.post(
            "/v2/models/direction/infer",
            content=bytes(body.content),
            headers={HEADER_LENGTH: str(body.header_length)},
        )
    assert answer.status_code == 200, answer.text
    outputs = {o["name"]: o["data"] for o in answer.json()["outputs"]}
    reference = ppocr_reference(images)
    assert outputs["label"] == ["180", "0", "0", "180"]
    expected = [reference[0, 1], reference[0, 0], reference[1, 0], reference[1, 1]]
    np.testing.assert_allclose(outputs["score"], expected, atol=1e-5)


def test_maas_serve_allow_model_code_flag(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import uvicorn
    from typer.main import get_command

    import maas_server
    from maas_cli._app import app

    seen: list[Settings] = []

    class Served(Exception):
        pass

    def fake_run(server: uvicorn.Server, sockets: object = None) -> None:
        raise Served

    monkeypatch.setattr(maas_server, "create_app", lambda settings: seen.append(settings))
    monkeypatch.setattr(uvicorn.Server, "run", fake_run)
    monkeypatch.delenv("MAAS_SERVER_ALLOW_MODEL_CODE", raising=False)
    for args, env, allowed in (
        ([], None, False),
        (["--allow-model-code"], None, True),
        ([], "1", True),
    ):
        if env is not None:
            monkeypatch.setenv("MAAS_SERVER_ALLOW_MODEL_CODE", env)
        with pytest.raises(Served):
            get_command(app).main(
                ["serve", str(tmp_path), *args], prog_name="maas", standalone_mode=False
            )
        assert seen[-1].allow_model_code is allowed
