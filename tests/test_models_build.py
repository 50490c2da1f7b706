"""Fast checks that every builder in ``tests/models.py`` loads and runs in onnxruntime."""

from __future__ import annotations

import pathlib
import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto

try:  # tests/ as a package (rootdir on sys.path) or as a plain directory
    from tests import models
except ImportError:  # pragma: no cover - depends on the pytest import mode
    import models  # type: ignore[no-redef]

PROVIDERS = ["CPUExecutionProvider"]


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=PROVIDERS)


NUMPY_TYPES: dict[int, type] = {
    TensorProto.BOOL: np.bool_,
    TensorProto.UINT8: np.uint8,
    TensorProto.UINT16: np.uint16,
    TensorProto.UINT32: np.uint32,
    TensorProto.UINT64: np.uint64,
    TensorProto.INT8: np.int8,
    TensorProto.INT16: np.int16,
    TensorProto.INT32: np.int32,
    TensorProto.INT64: np.int64,
    TensorProto.FLOAT16: np.float16,
    TensorProto.FLOAT: np.float32,
    TensorProto.DOUBLE: np.float64,
    TensorProto.STRING: np.object_,
}


@pytest.mark.parametrize("elem_type", list(NUMPY_TYPES), ids=lambda t: TensorProto.DataType.Name(t))
def test_identity_every_type(elem_type: int) -> None:
    sess = _session(models.identity_model(elem_type, ["batch", 3]))
    if elem_type == TensorProto.STRING:
        x = np.array([["a", "bc", ""], ["é", "x y", "z"]], dtype=object)
    else:
        x = (
            np.arange(6).reshape(2, 3) % 2
            if elem_type == TensorProto.BOOL
            else np.arange(6).reshape(2, 3)
        ).astype(NUMPY_TYPES[elem_type])
    (y,) = sess.run(None, {"x": x})
    assert y.dtype == x.dtype
    np.testing.assert_array_equal(y, x)


def test_identity_bfloat16() -> None:
    sess = _session(models.identity_model(TensorProto.BFLOAT16, [None, 2]))
    assert sess.get_inputs()[0].type == "tensor(bfloat16)"
    # 1.0, -2.0, 0.5, 3.0 as bfloat16 bit patterns (upper half of the fp32 bits).
    bits = np.array([[1.0, -2.0], [0.5, 3.0]], dtype=np.float32).view(np.uint32) >> 16
    value = ort.OrtValue.ortvalue_from_numpy_with_onnx_type(
        bits.astype(np.uint16), TensorProto.BFLOAT16
    )
    try:
        out = sess.run_with_ort_values(["y"], {"x": value})
    except Exception as exc:  # loading is the contract; running is a bonus
        pytest.skip(f"bfloat16 run not supported here: {exc}")
    assert out[0].shape() == [2, 2]


def test_identity_scalar_and_dynamic_dims() -> None:
    sess = _session(models.identity_model(TensorProto.INT64, []))
    (y,) = sess.run(None, {"x": np.array(7, dtype=np.int64)})
    assert y.shape == () and y == 7
    sess = _session(models.identity_model(TensorProto.FLOAT, [None, "n", 2]))
    x = np.ones((0, 5, 2), dtype=np.float32)
    (y,) = sess.run(None, {"x": x})
    assert y.shape == (0, 5, 2)


@pytest.mark.parametrize("elem_type", [TensorProto.FLOAT, TensorProto.INT32, TensorProto.INT64])
def test_add_model(elem_type: int) -> None:
    sess = _session(models.add_model(elem_type))
    assert [i.name for i in sess.get_inputs()] == ["a", "b"]
    assert [o.name for o in sess.get_outputs()] == ["sum", "diff"]
    dtype = NUMPY_TYPES[elem_type]
    a = np.arange(12).reshape(3, 4).astype(dtype)
    b = (np.arange(12).reshape(3, 4) * 3 - 5).astype(dtype)
    s, d = sess.run(None, {"a": a, "b": b})
    np.testing.assert_array_equal(s, a + b)
    np.testing.assert_array_equal(d, a - b)


def test_mlp_model_matches_numpy() -> None:
    sess = _session(models.mlp_model())
    x = np.random.RandomState(1).rand(5, 64).astype(np.float32)
    (y,) = sess.run(None, {"input": x})
    (w0, w1), (b0, b1) = models.mlp_weights()
    expected = np.maximum(x @ w0 + b0, 0) @ w1 + b1
    assert y.shape == (5, 10)
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)
    # deterministic for a seed, different across seeds
    assert models.mlp_model().SerializeToString() == models.mlp_model().SerializeToString()
    assert models.mlp_model(seed=1) != models.mlp_model(seed=0)


def test_mlp_model_custom_sizes() -> None:
    sess = _session(models.mlp_model(in_features=3, hidden=5, out_features=2, seed=7))
    (y,) = sess.run(None, {"input": np.ones((1, 3), dtype=np.float32)})
    assert y.shape == (1, 2)


def test_dense_stack_model_matches_numpy() -> None:
    sess = _session(models.dense_stack_model())
    x = np.random.RandomState(2).standard_normal((2, 1024)).astype(np.float32)
    (y,) = sess.run(None, {"input": x})
    weights, biases = models.dense_stack_weights()
    h = x
    for i, (w, b) in enumerate(zip(weights, biases, strict=True)):
        h = h @ w + b
        if i < len(weights) - 1:
            h = np.maximum(h, 0)
    assert y.shape == (2, 1024)
    assert np.isfinite(y).all()
    # activations neither explode nor vanish through the stack
    assert 0.1 < np.abs(y).mean() / np.abs(x).mean() < 10
    np.testing.assert_allclose(y, h, rtol=1e-3, atol=1e-3)


def test_string_model() -> None:
    sess = _session(models.string_model())
    text = np.array(["hello", "World 42", "MiXeD"], dtype=object)
    upper, same = sess.run(None, {"text": text})
    assert upper.tolist() == ["HELLO", "WORLD 42", "MIXED"]
    assert same.tolist() == text.tolist()
    (one,) = sess.run(["upper"], {"text": np.array(["a"], dtype=object)})
    assert one.tolist() == ["A"]


def test_slow_model_single_row() -> None:
    model = models.slow_model(0.05)
    layers = models.slow_layers(0.05)
    assert len(model.graph.node) == layers
    assert len(model.graph.initializer) == 1  # one shared weight keeps the file small
    assert models.slow_layers(0.5) > models.slow_layers(0.05) >= 1
    sess = _session(model)
    x = np.random.RandomState(3).rand(1, 1024).astype(np.float32)
    (y,) = sess.run(None, {"x": x})
    h = models.hadamard(1024)
    expected = x if layers % 2 == 0 else x @ h
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)


def test_hadamard_orthonormal() -> None:
    h = models.hadamard(16)
    np.testing.assert_allclose(h @ h, np.eye(16), atol=1e-6)
    with pytest.raises(ValueError):
        models.hadamard(12)


def test_scalar_model() -> None:
    sess = _session(models.scalar_model())
    assert sess.get_inputs()[0].shape == []
    (y,) = sess.run(None, {"x": np.array(1.5, dtype=np.float32)})
    assert y.shape == ()
    assert y == np.float32(3.0)


def test_corrupt_model_refused(tmp_path: pathlib.Path) -> None:
    data = models.corrupt_model_bytes()
    assert len(data) > 100
    with pytest.raises(Exception):  # noqa: B017 - onnxruntime raises its own error types
        ort.InferenceSession(data, providers=PROVIDERS)
    path = tmp_path / "bad.onnx"
    path.write_bytes(data)
    with pytest.raises(Exception):  # noqa: B017
        ort.InferenceSession(str(path), providers=PROVIDERS)


def test_save_roundtrip(tmp_path: pathlib.Path) -> None:
    target = tmp_path / "repo" / "m" / "1" / "model.onnx"
    returned = models.save(models.scalar_model(), target)
    assert returned == target and target.is_file()
    loaded = onnx.load(str(target))
    onnx.checker.check_model(loaded)
    sess = ort.InferenceSession(str(target), providers=PROVIDERS)
    (y,) = sess.run(None, {"x": np.array(-4.0, dtype=np.float32)})
    assert y == np.float32(-8.0)


# --- the bundled text-generation model (examples/build_tiny_lm.py) ----------------------------

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"
TINY_GPT = EXAMPLES / "model_repository" / "tiny_gpt"
MIT_START = "Permission is hereby"


def _byte_decoder() -> dict[str, int]:
    """The byte-level BPE alphabet (GPT-2's ``bytes_to_unicode``), character -> byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


def _greedy(session: ort.InferenceSession, prompt: list[int], steps: int) -> list[int]:
    """Greedy decoding without the KV cache (the whole sequence again at every step)."""
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


@pytest.mark.parametrize(
    "prompt", [MIT_START, "Licensed under the Apache License", "Redistribution and use"]
)
def test_bundled_tiny_gpt_continues_the_license_texts(prompt: str) -> None:
    """The bundled decoder is trained on its corpus: greedy output is valid UTF-8 made of the
    corpus's words (random weights gave bytes such as 'Wex\\ufffdow purposes modifORromcl')."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(TINY_GPT / "tokenizer.json"))
    session = _session(onnx.load(str(TINY_GPT / "1" / "model.onnx")))
    ids = _greedy(session, tokenizer.encode(prompt).ids, 32)
    assert 0 not in ids  # no end of text this early
    pieces = [tokenizer.id_to_token(i) for i in ids]
    byte_of = _byte_decoder()
    text = bytes(byte_of[c] for piece in pieces for c in piece).decode("utf-8")  # strict
    assert text == tokenizer.decode(ids)
    corpus = "\n".join(p.read_text() for p in sorted((EXAMPLES / "tiny_lm_corpus").glob("*.txt")))
    vocabulary = set(re.findall(r"[A-Za-z]+", corpus))
    words = re.findall(r"[A-Za-z]+", text)
    assert len(words) >= 12, text
    assert set(words) <= vocabulary, (text, set(words) - vocabulary)
    if prompt == MIT_START:  # word for word, as the MIT license goes on
        assert text.startswith(" granted, free of charge, to any person obtaining a copy\nof this")
