"""Inputs checked against model metadata before anything is sent: names, shapes, safe casts."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from maas_client import Input, InputError, Output
from maas_client._inputs import collect_inputs, fit_to_spec, prepare_inputs, request_outputs
from maas_client.types import ModelMetadata, TensorMetadata


def spec(datatype: str, shape: list[int], name: str = "x") -> TensorMetadata:
    return TensorMetadata(name=name, datatype=datatype, shape=shape)


def model(*inputs: TensorMetadata, outputs: tuple[str, ...] = ("y",)) -> ModelMetadata:
    return ModelMetadata(
        name="m",
        inputs=list(inputs),
        outputs=[spec("FP32", [-1], name=o) for o in outputs],
    )


def fit(value: Any, datatype: str, shape: list[int]) -> tuple[np.ndarray[Any, Any], str]:
    return fit_to_spec("x", value, spec(datatype, shape))


# --- casts -------------------------------------------------------------------------------------


def test_same_dtype_is_not_copied() -> None:
    x = np.ones((2, 3), dtype=np.float32)
    wire, datatype = fit(x, "FP32", [-1, 3])
    assert wire is x and datatype == "FP32"


@pytest.mark.parametrize(
    ("value", "datatype", "expected_dtype"),
    [
        (np.array([[0.1, 0.2]]), "FP32", np.float32),  # float64 -> FP32: rounding is fine
        (np.array([[1, 2]], dtype=np.int8), "FP32", np.float32),
        (np.array([[1, 2]]), "INT32", np.int32),  # int64 whose values fit
        (np.array([[1, 200]]), "UINT8", np.uint8),
        (np.array([[True, False]]), "INT64", np.int64),
        (np.array([[1, 0]]), "BOOL", np.bool_),
        (np.array([[2.0, -3.0]]), "INT16", np.int16),  # whole numbers
        (np.array([[2**24, 3]]), "FP32", np.float32),  # exactly representable
        (np.array([[60000.0]]), "FP16", np.float16),
        ([[1.5, 2.5]], "FP64", np.float64),
    ],
)
def test_lossless_casts(value: Any, datatype: str, expected_dtype: Any) -> None:
    wire, _ = fit(value, datatype, [1, -1])
    assert wire.dtype == expected_dtype
    np.testing.assert_array_equal(wire, np.asarray(value).astype(expected_dtype))


@pytest.mark.parametrize(
    ("value", "datatype", "culprit"),
    [
        (np.array([[1, 300]]), "UINT8", "300"),
        (np.array([[-1, 2]]), "UINT32", "-1"),
        (np.array([[2**31, 0]]), "INT32", "2147483648"),
        (np.array([[0.5, 1.0]]), "INT64", "0.5"),
        (np.array([[np.nan, 1.0]]), "INT32", "nan"),
        (np.array([[2, 1]]), "BOOL", "2"),
        (np.array([[2**24 + 1, 0]]), "FP32", "16777217"),
        (np.array([[1e6, 0.0]]), "FP16", "1000000.0"),
        (np.array([[1e300, 0.0]]), "FP32", "1e+300"),
    ],
)
def test_lossy_casts_are_refused(value: Any, datatype: str, culprit: str) -> None:
    with pytest.raises(InputError) as info:
        fit(value, datatype, [1, 2])
    message = str(info.value)
    assert f"the model expects {datatype}" in message and culprit in message
    assert "validate=False" in message


def test_strings_and_numbers_do_not_mix() -> None:
    with pytest.raises(InputError, match="expects BYTES"):
        fit(np.array([1, 2]), "BYTES", [-1])
    with pytest.raises(InputError, match="expects FP32 numbers"):
        fit(np.array(["1", "2"]), "FP32", [-1])
    wire, datatype = fit(["a", b"\xff", np.str_("c")], "BYTES", [-1])
    assert datatype == "BYTES" and wire.tolist() == [b"a", b"\xff", b"c"]
    with pytest.raises(InputError, match="str or bytes"):
        fit(np.array([1, "a"], dtype=object), "BYTES", [-1])


def test_bf16_inputs() -> None:
    ml_dtypes = pytest.importorskip("ml_dtypes")
    values = np.array([[1.0, 1.00390625, 3.0]], dtype=np.float32)
    wire, datatype = fit(values, "BF16", [-1, 3])
    assert datatype == "BF16" and wire.dtype == np.uint16
    assert wire.tolist() == [[0x3F80, 0x3F80, 0x4040]]  # 1 + 2**-8 rounds to even
    from_ml_dtypes, _ = fit(values.astype(ml_dtypes.bfloat16), "BF16", [-1, 3])
    assert from_ml_dtypes.tolist() == wire.tolist()
    to_fp32, _ = fit(values.astype(ml_dtypes.bfloat16), "FP32", [-1, 3])
    assert to_fp32.dtype == np.float32


# --- shapes ------------------------------------------------------------------------------------


def test_shapes() -> None:
    fit(np.zeros((5, 3), np.float32), "FP32", [-1, 3])
    fit(np.float32(2.0), "FP32", [])
    with pytest.raises(InputError, match=r"dimension 1 must be 3"):
        fit(np.zeros((5, 4), np.float32), "FP32", [-1, 3])
    with pytest.raises(InputError, match=r"expects 2 dimensions \[-1, 3\], got shape \[3\]; add"):
        fit(np.zeros(3, np.float32), "FP32", [-1, 3])
    with pytest.raises(InputError, match=r"expects 0 dimensions"):
        fit(np.zeros(1, np.float32), "FP32", [])


# --- names -------------------------------------------------------------------------------------


def test_collecting_inputs() -> None:
    meta = model(spec("FP32", [-1, 2]))
    x = np.zeros((1, 2), np.float32)
    assert [i.name for i in collect_inputs(x, meta)] == ["x"]
    assert [i.name for i in collect_inputs({"x": x}, None)] == ["x"]
    assert collect_inputs([Input("x", x)], None)[0].data is x
    assert collect_inputs(Input("x", x), None)[0].name == "x"
    two = model(spec("FP32", [-1], "a"), spec("FP32", [-1], "b"))
    with pytest.raises(InputError, match=r"has 2 inputs \('a' \(FP32 \[-1\]\), 'b'"):
        collect_inputs(x, two)
    with pytest.raises(InputError, match="no inputs"):
        collect_inputs({}, meta)


def test_names_are_checked() -> None:
    meta = model(spec("FP32", [-1], "a"), spec("INT64", [-1], "b"))
    one = np.ones(1, np.float32)
    with pytest.raises(InputError, match=r"has no input 'c'; its inputs are 'a' \(FP32 \[-1\]\)"):
        prepare_inputs([Input("a", one), Input("c", one)], meta, binary=True)
    with pytest.raises(InputError, match=r"needs input 'b' \(INT64 \[-1\]\), which was not given"):
        prepare_inputs([Input("a", one)], meta, binary=True)
    with pytest.raises(InputError, match="more than once"):
        prepare_inputs([Input("a", one), Input("a", one)], meta, binary=True)
    with pytest.raises(InputError, match="expects INT64, not FP32"):
        prepare_inputs([Input("a", one), Input("b", one, datatype="FP32")], meta, binary=True)


def test_without_metadata_the_dtype_decides() -> None:
    payloads = prepare_inputs(
        [
            Input("f", np.zeros(2, np.float16)),
            Input("s", ["x"]),
            Input("h", [1.0, 2.0], datatype="FP16", parameters={"note": 1}),
        ],
        None,
        binary=False,
    )
    assert [(p.name, p.datatype, p.binary) for p in payloads] == [
        ("f", "FP16", False),
        ("s", "BYTES", False),
        ("h", "FP16", False),
    ]
    assert payloads[2].array.dtype == np.float16 and payloads[2].parameters == {"note": 1}
    with pytest.raises(InputError, match="no Open Inference Protocol datatype"):
        prepare_inputs([Input("c", np.zeros(2, np.complex64))], None, binary=True)


def test_metadata_without_inputs_skips_the_checks() -> None:
    payloads = prepare_inputs([Input("anything", [1, 2])], model(), binary=True)
    assert payloads[0].datatype == "INT64"


# --- outputs -----------------------------------------------------------------------------------


def test_requested_outputs() -> None:
    meta = model(outputs=("y", "z"))
    assert request_outputs(None, meta, binary=True) is None
    assert request_outputs(
        ["y", Output("z", binary=False, classification=3)], meta, binary=True
    ) == [
        {"name": "y", "parameters": {"binary_data": True}},
        {"name": "z", "parameters": {"classification": 3}},
    ]
    assert request_outputs([Output("y", binary=True)], meta, binary=False) == [
        {"name": "y", "parameters": {"binary_data": True}}
    ]
    assert request_outputs(["y"], meta, binary=False) == [{"name": "y"}]
    with pytest.raises(InputError, match="has no output 'w'; its outputs are 'y', 'z'"):
        request_outputs(["w"], meta, binary=True)
    assert request_outputs(["w"], None, binary=False) == [{"name": "w"}]
