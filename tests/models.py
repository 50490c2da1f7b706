"""Builders for the small ONNX models used by the test suite.

Every builder is a pure function returning an ``onnx.ModelProto`` with opset 17
and IR version 8 (so onnxruntime 1.32 loads it), already validated with
``onnx.checker.check_model``.  Nothing here touches the disk except :func:`save`.
"""

from __future__ import annotations

import math
import pathlib
from collections.abc import Sequence

import numpy as np
import onnx
from onnx import ModelProto, TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8

#: Measured once (not at build time): wall seconds one ``[256, 1024] x [1024, 1024]``
#: FP32 MatMul layer takes in onnxruntime 1.32 CPU with default session options (2 intra-op
#: threads) on the 2-core dev box: 33 layers ran in 0.125 s and 167 layers in 0.53 s
#: (3.2-3.8 ms/layer, about 170 GFLOP/s).  Other hardware scales the run time accordingly.
SLOW_SECONDS_PER_LAYER = 0.0032

#: Batch size that :func:`slow_model` is calibrated for.
SLOW_MODEL_BATCH = 256

#: Feature width of :func:`slow_model`.
SLOW_MODEL_WIDTH = 1024

Dim = int | str | None


def _finish(graph: onnx.GraphProto) -> ModelProto:
    """Wrap ``graph`` in a model with the project's opset / IR version and check it."""
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name="maas-tests",
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def _dense_layers(
    input_name: str,
    output_name: str,
    weights: Sequence[np.ndarray],
    biases: Sequence[np.ndarray],
    prefix: str,
) -> tuple[list[onnx.NodeProto], list[TensorProto]]:
    """Return MatMul + Add (+ Relu between layers) nodes and their initializers."""
    nodes: list[onnx.NodeProto] = []
    inits: list[TensorProto] = []
    prev = input_name
    last = len(weights) - 1
    for i, (w, b) in enumerate(zip(weights, biases, strict=True)):
        w_name, b_name = f"{prefix}W{i}", f"{prefix}B{i}"
        inits.append(numpy_helper.from_array(np.asarray(w, dtype=np.float32), w_name))
        inits.append(numpy_helper.from_array(np.asarray(b, dtype=np.float32), b_name))
        mm, added = f"{prefix}mm{i}", f"{prefix}add{i}"
        nodes.append(helper.make_node("MatMul", [prev, w_name], [mm]))
        if i == last:
            nodes.append(helper.make_node("Add", [mm, b_name], [output_name]))
        else:
            nodes.append(helper.make_node("Add", [mm, b_name], [added]))
            relu = f"{prefix}relu{i}"
            nodes.append(helper.make_node("Relu", [added], [relu]))
            prev = relu
    return nodes, inits


def identity_model(elem_type: int, shape: list[Dim]) -> ModelProto:
    """Identity model: input ``x`` -> output ``y`` of ``elem_type`` and ``shape``.

    ``shape`` entries may be ints (fixed), strings (named dynamic dims) or None
    (anonymous dynamic dims); ``[]`` is a scalar.  Works in onnxruntime for BOOL,
    (U)INT8/16/32/64, FLOAT16, FLOAT, DOUBLE, BFLOAT16 and STRING.  BFLOAT16
    cannot be fed from numpy directly: use
    ``OrtValue.ortvalue_from_numpy_with_onnx_type(uint16_bits, TensorProto.BFLOAT16)``
    with ``run_with_ort_values``.
    """
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        f"identity_{TensorProto.DataType.Name(elem_type).lower()}",
        [helper.make_tensor_value_info("x", elem_type, shape)],
        [helper.make_tensor_value_info("y", elem_type, shape)],
    )
    return _finish(graph)


def add_model(elem_type: int = TensorProto.FLOAT) -> ModelProto:
    """Two inputs ``a``, ``b`` of shape ``["batch", 4]``; outputs ``sum`` = a + b, ``diff`` = a - b.

    ``elem_type`` must be a numeric type supported by onnxruntime's Add/Sub
    (FLOAT, DOUBLE, INT32, INT64, FLOAT16, ...).
    """
    shape: list[Dim] = ["batch", 4]
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["a", "b"], ["sum"]),
            helper.make_node("Sub", ["a", "b"], ["diff"]),
        ],
        "add_sub",
        [
            helper.make_tensor_value_info("a", elem_type, shape),
            helper.make_tensor_value_info("b", elem_type, shape),
        ],
        [
            helper.make_tensor_value_info("sum", elem_type, shape),
            helper.make_tensor_value_info("diff", elem_type, shape),
        ],
    )
    return _finish(graph)


def mlp_weights(
    in_features: int = 64, hidden: int = 128, out_features: int = 10, seed: int = 0
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Weights and biases (FP32) used by :func:`mlp_model`, for numpy reference checks."""
    rng = np.random.RandomState(seed)
    w0 = (rng.standard_normal((in_features, hidden)) / math.sqrt(in_features)).astype(np.float32)
    b0 = (rng.standard_normal(hidden) * 0.1).astype(np.float32)
    w1 = (rng.standard_normal((hidden, out_features)) / math.sqrt(hidden)).astype(np.float32)
    b1 = (rng.standard_normal(out_features) * 0.1).astype(np.float32)
    return [w0, w1], [b0, b1]


def mlp_model(
    in_features: int = 64, hidden: int = 128, out_features: int = 10, seed: int = 0
) -> ModelProto:
    """Dynamic-batch MLP with random weights (``np.random.RandomState(seed)``).

    Input ``input`` FP32 ``["batch", in_features]``, output ``output`` FP32
    ``["batch", out_features]``: ``relu(x @ W0 + b0) @ W1 + b1`` with the arrays
    returned by :func:`mlp_weights`.
    """
    weights, biases = mlp_weights(in_features, hidden, out_features, seed)
    nodes, inits = _dense_layers("input", "output", weights, biases, "mlp_")
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", in_features])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", out_features])],
        inits,
    )
    return _finish(graph)


def dense_stack_weights(
    width: int = 1024, depth: int = 4, seed: int = 0
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Weights and biases (FP32) used by :func:`dense_stack_model` (He-scaled, zero bias)."""
    rng = np.random.RandomState(seed)
    scale = math.sqrt(2.0 / width)
    weights = [
        (rng.standard_normal((width, width)) * scale).astype(np.float32) for _ in range(depth)
    ]
    biases = [np.zeros(width, dtype=np.float32) for _ in range(depth)]
    return weights, biases


def dense_stack_model(width: int = 1024, depth: int = 4, seed: int = 0) -> ModelProto:
    """Compute-bound stack of ``depth`` dense ``width x width`` layers with Relu between.

    Input ``input`` FP32 ``["batch", width]``, output ``output`` FP32
    ``["batch", width]``.  Weights are He-scaled (std ``sqrt(2/width)``) so the
    activation magnitude stays roughly constant through the stack; biases are
    zero.  The default model holds 4 x 4 MiB of weights.
    """
    weights, biases = dense_stack_weights(width, depth, seed)
    nodes, inits = _dense_layers("input", "output", weights, biases, "dense_")
    graph = helper.make_graph(
        nodes,
        "dense_stack",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", width])],
        inits,
    )
    return _finish(graph)


def string_model(locale: str = "C") -> ModelProto:
    """BYTES/string model: input ``text`` STRING ``["batch"]`` (1-D).

    Outputs ``upper`` (STRING ``["batch"]``, ``StringNormalizer`` with
    ``case_change_action="UPPER"``) and ``same`` (Identity of the input).

    onnxruntime limitations: StringNormalizer only accepts ``[C]`` or ``[1, C]``
    with ``C > 0``, so an empty batch (0 strings) is rejected at run time.  The
    ``locale`` attribute must name a locale installed on the host: the ONNX
    default (``en_US``) is often missing and then the session refuses to load.
    The default ``"C"`` always exists but upper-cases ASCII only
    (``"héllo"`` -> ``"HéLLO"``); ``"C.UTF-8"`` (where installed) also maps
    non-ASCII letters.
    """
    graph = helper.make_graph(
        [
            helper.make_node(
                "StringNormalizer",
                ["text"],
                ["upper"],
                case_change_action="UPPER",
                is_case_sensitive=1,
                locale=locale,
            ),
            helper.make_node("Identity", ["text"], ["same"]),
        ],
        "string_upper",
        [helper.make_tensor_value_info("text", TensorProto.STRING, ["batch"])],
        [
            helper.make_tensor_value_info("upper", TensorProto.STRING, ["batch"]),
            helper.make_tensor_value_info("same", TensorProto.STRING, ["batch"]),
        ],
    )
    return _finish(graph)


def hadamard(n: int) -> np.ndarray:
    """Orthonormal, symmetric Sylvester-Hadamard matrix of size ``n`` (a power of 2), FP32.

    Its entries are ``±1/sqrt(n)`` and ``H @ H == I``.
    """
    if n < 1 or n & (n - 1):
        raise ValueError(f"n must be a power of two, got {n}")
    h = np.ones((1, 1), dtype=np.float32)
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    result: np.ndarray = (h / np.float32(math.sqrt(n))).astype(np.float32)
    return result


def slow_layers(seconds_hint: float = 0.5) -> int:
    """Number of MatMul layers :func:`slow_model` uses for ``seconds_hint`` (at least 1)."""
    return max(1, round(seconds_hint / SLOW_SECONDS_PER_LAYER))


def slow_model(seconds_hint: float = 0.5) -> ModelProto:
    """A model taking roughly ``seconds_hint`` seconds of CPU per run at batch 256.

    Input ``x`` FP32 ``["batch", 1024]``, output ``y`` FP32 ``["batch", 1024]``.
    The graph is a chain of :func:`slow_layers` MatMuls against one shared
    1024x1024 orthonormal, symmetric Hadamard initializer ``H`` (4 MiB, the
    only weight), so ``y == x`` for an even number of layers and ``y == x @ H``
    for an odd number (up to float rounding) and values never blow up.
    Calibrated with :data:`SLOW_SECONDS_PER_LAYER` (~3.2 ms/layer) for a batch of
    :data:`SLOW_MODEL_BATCH` = 256 rows with both cores of a 2-core machine busy
    (wall time; CPU time is about twice that).  A 1-row batch runs ~50x faster
    (``slow_model(0.5)``: 156 layers, ~0.5 s at 256 rows, ~10 ms at 1 row).
    """
    layers = slow_layers(seconds_hint)
    nodes: list[onnx.NodeProto] = []
    prev = "x"
    for i in range(layers):
        out = "y" if i == layers - 1 else f"h{i}"
        nodes.append(helper.make_node("MatMul", [prev, "H"], [out]))
        prev = out
    width = SLOW_MODEL_WIDTH
    graph = helper.make_graph(
        nodes,
        "slow_chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])],
        [numpy_helper.from_array(hadamard(width), "H")],
    )
    return _finish(graph)


def scalar_model() -> ModelProto:
    """Scalar model: input ``x`` FP32 shape ``[]``, output ``y`` FP32 shape ``[]`` = ``x * 2``."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["y"])],
        "scalar_double",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])],
        [numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two")],
    )
    return _finish(graph)


def corrupt_model_bytes() -> bytes:
    """Bytes that start like a serialized ONNX model but onnxruntime refuses to load.

    It is :func:`mlp_model` serialized and cut in half, which breaks the
    protobuf framing in the middle of the graph's weights.
    """
    data: bytes = mlp_model().SerializeToString()
    return data[: len(data) // 2]


def save(model: ModelProto, path: pathlib.Path) -> pathlib.Path:
    """Serialize ``model`` to ``path`` (creating parent directories) and return ``path``."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())
    return path
