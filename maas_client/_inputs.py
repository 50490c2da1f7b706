"""From what a caller passes to ``infer`` to the tensors that go on the wire.

A caller passes a bare array (for a model with one input), a ``{name: array}`` mapping, a list
of :class:`Input`, or a pandas DataFrame (:mod:`maas_client._dataframes`). With the model's
metadata at hand the inputs are checked before anything is sent: names, rank, fixed dimensions
and the datatype. A value whose dtype differs from the model's datatype is converted when
nothing is lost (``int64`` to ``INT32`` when every value fits, ``float64`` to ``FP32`` within
FP32's range) and refused with an :class:`InputError` otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from maas_wire.codec import DATATYPES, CodecError, datatype_of, to_wire
from maas_wire.protocol import TensorPayload

from ._dataframes import dataframe_inputs, is_dataframe
from ._exceptions import InputError
from .types import ModelMetadata, TensorMetadata

__all__ = [
    "Input",
    "Output",
    "collect_inputs",
    "fit_to_spec",
    "prepare_inputs",
    "request_outputs",
]


@dataclass(frozen=True)
class Input:
    """One named input, with an explicit datatype or parameters when the array's dtype is not
    enough (``BF16``, which numpy lacks, or ``FP16`` from ``float32`` data).

    >>> client.infer("add", [Input("a", a), Input("b", b, datatype="FP32")])  # doctest: +SKIP
    """

    name: str
    data: Any
    datatype: str | None = None
    parameters: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Output:
    """An output to ask for: ``binary`` overrides the call's encoding for it, ``classification``
    asks for the top ``k`` classes (Triton's classification extension)."""

    name: str
    binary: bool | None = None
    classification: int | None = None
    parameters: Mapping[str, Any] | None = None


def _describe(spec: TensorMetadata) -> str:
    return f"{spec.datatype} {spec.shape}"


def _known_inputs(metadata: ModelMetadata) -> str:
    return ", ".join(f"{s.name!r} ({_describe(s)})" for s in metadata.inputs) or "none listed"


def _is_input_list(inputs: Any) -> bool:
    return (
        isinstance(inputs, (list, tuple))
        and len(inputs) > 0
        and all(isinstance(item, Input) for item in inputs)
    )


def needs_metadata(inputs: Any) -> bool:
    """Whether the inputs leave the input's name to the model's metadata (a bare value)."""
    return not (isinstance(inputs, (Mapping, Input)) or _is_input_list(inputs))


def collect_inputs(inputs: Any, metadata: ModelMetadata | None) -> list[Input]:
    """The inputs as :class:`Input` objects; a bare value takes the one input's name."""
    if isinstance(inputs, Input):
        return [inputs]
    if isinstance(inputs, Mapping):
        items = []
        for name, value in inputs.items():
            if not isinstance(name, str):
                raise InputError(f"input names are strings, not {type(name).__name__}")
            items.append(value if isinstance(value, Input) else Input(name, value))
        if not items:
            raise InputError("no inputs given")
        return items
    if _is_input_list(inputs):
        return list(inputs)
    if is_dataframe(inputs):
        return [Input(name, value) for name, value in dataframe_inputs(inputs, metadata).items()]
    if metadata is None:
        raise InputError("a bare array needs the model's metadata; pass {name: array} instead")
    if len(metadata.inputs) != 1:
        raise InputError(
            f"model {metadata.name!r} has {len(metadata.inputs)} inputs "
            f"({_known_inputs(metadata)}); pass a mapping {{name: array}}"
        )
    return [Input(metadata.inputs[0].name, inputs)]


def _as_array(value: Any, datatype: str | None) -> np.ndarray[Any, Any]:
    if isinstance(value, np.ndarray):
        return value
    if datatype == "BYTES":
        return np.asarray(value, dtype=object)
    return np.asarray(value)


def _lossless(name: str, array: np.ndarray[Any, Any], datatype: str) -> np.ndarray[Any, Any]:
    """``array`` as the wire dtype of ``datatype``, or an InputError when values would change."""
    target = DATATYPES[datatype]
    source = array.dtype
    if source == target:
        return array
    if np.can_cast(source, target, "safe"):
        return array.astype(target)
    with np.errstate(invalid="ignore", over="ignore"):
        cast = array.astype(target)
        if source.kind == "f" and target.kind == "f":
            # Narrowing floats rounds by design (float64 data for an FP32 model); only values
            # that overflow to infinity are lost.
            broken = np.isfinite(cast) != np.isfinite(array)
        else:
            broken = cast.astype(source) != array
    if broken.any():
        index = tuple(int(i) for i in np.argwhere(broken)[0])
        value = array[index].item()
        raise InputError(
            f"input {name!r}: the model expects {datatype}, and {source} value {value!r} at "
            f"index {list(index)} does not convert to it without loss; convert the data "
            "yourself, or pass validate=False"
        )
    return cast


def fit_to_spec(name: str, value: Any, spec: TensorMetadata) -> tuple[np.ndarray[Any, Any], str]:
    """Check ``value`` against the model's input ``spec``; return its wire array and datatype."""
    datatype = spec.datatype
    if datatype not in DATATYPES:
        raise InputError(f"input {name!r}: the model declares an unknown datatype {datatype!r}")
    array = _as_array(value, datatype)
    want = spec.shape
    got = list(array.shape)
    if len(got) != len(want):
        hint = ""
        if len(got) == len(want) - 1 and want and want[0] == -1:
            hint = "; add the batch dimension (x[None] or x.reshape(1, ...))"
        raise InputError(
            f"input {name!r}: the model expects {len(want)} dimensions {want}, got shape {got}"
            f"{hint}"
        )
    for axis, (w, g) in enumerate(zip(want, got, strict=True)):
        if w >= 0 and w != g:
            raise InputError(
                f"input {name!r}: the model expects shape {want}, got {got} "
                f"(dimension {axis} must be {w})"
            )
    kind = array.dtype.kind
    if datatype == "BYTES":
        if kind not in "OUS":
            raise InputError(
                f"input {name!r}: the model expects BYTES (str or bytes), got {array.dtype} data"
            )
        try:
            return to_wire(array, "BYTES")
        except CodecError as exc:
            raise InputError(f"input {name!r}: {exc}") from None
    if kind not in "biuf" and not (kind == "V" and array.dtype.name == "bfloat16"):
        raise InputError(
            f"input {name!r}: the model expects {datatype} numbers, got {array.dtype} data"
        )
    if datatype == "BF16":
        if array.dtype.name == "bfloat16" or array.dtype == np.uint16:
            return to_wire(array, "BF16")
        as_f32 = _lossless(name, array, "FP32")
        return to_wire(as_f32, "BF16")
    if kind == "V":  # ml_dtypes.bfloat16 (checked above), for a datatype other than BF16
        array = array.astype(np.float32)
    return _lossless(name, array, datatype), datatype


def _unchecked(item: Input) -> tuple[np.ndarray[Any, Any], str]:
    try:
        if item.datatype is None:
            array = _as_array(item.data, None)
            return to_wire(array, datatype_of(array.dtype))
        return to_wire(_as_array(item.data, item.datatype), item.datatype)
    except CodecError as exc:
        raise InputError(f"input {item.name!r}: {exc}") from None


def prepare_inputs(
    items: Sequence[Input], metadata: ModelMetadata | None, *, binary: bool
) -> list[TensorPayload]:
    """Wire tensors for the inputs, checked against ``metadata`` unless it is ``None``."""
    specs = {s.name: s for s in metadata.inputs} if metadata is not None else {}
    check = metadata is not None and bool(specs)
    payloads: list[TensorPayload] = []
    seen: set[str] = set()
    for item in items:
        if item.name in seen:
            raise InputError(f"input {item.name!r} is given more than once")
        seen.add(item.name)
        if check:
            assert metadata is not None
            spec = specs.get(item.name)
            if spec is None:
                raise InputError(
                    f"model {metadata.name!r} has no input {item.name!r}; its inputs are "
                    f"{_known_inputs(metadata)}"
                )
            if item.datatype is not None and item.datatype != spec.datatype:
                raise InputError(
                    f"input {item.name!r}: the model expects {spec.datatype}, not {item.datatype}"
                )
            array, datatype = fit_to_spec(item.name, item.data, spec)
        else:
            array, datatype = _unchecked(item)
        parameters = dict(item.parameters) if item.parameters else {}
        payloads.append(TensorPayload(item.name, array, datatype, binary, parameters))
    if check:
        assert metadata is not None
        missing = [s for s in metadata.inputs if s.name not in seen]
        if missing:
            spec = missing[0]
            raise InputError(
                f"model {metadata.name!r} needs input {spec.name!r} ({_describe(spec)}), which "
                "was not given"
            )
    return payloads


def request_outputs(
    outputs: Sequence[str | Output] | None,
    metadata: ModelMetadata | None,
    *,
    binary: bool,
) -> list[dict[str, Any]] | None:
    """The ``outputs`` of the request: ``None`` asks for every output."""
    if outputs is None:
        return None
    known = {s.name for s in metadata.outputs} if metadata is not None else set()
    entries: list[dict[str, Any]] = []
    for out in outputs:
        spec = out if isinstance(out, Output) else Output(out)
        if known and spec.name not in known:
            assert metadata is not None
            names = ", ".join(repr(s.name) for s in metadata.outputs)
            raise InputError(
                f"model {metadata.name!r} has no output {spec.name!r}; its outputs are {names}"
            )
        parameters: dict[str, Any] = dict(spec.parameters) if spec.parameters else {}
        wants_binary = binary if spec.binary is None else spec.binary
        if wants_binary:
            parameters["binary_data"] = True
        if spec.classification is not None:
            parameters["classification"] = spec.classification
        entry: dict[str, Any] = {"name": spec.name}
        if parameters:
            entry["parameters"] = parameters
        entries.append(entry)
    return entries
