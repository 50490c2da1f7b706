"""numpy <-> Open Inference Protocol tensors, in JSON and in Triton's binary tensor framing.

Two representations of a tensor meet here:

- the *wire* array: what the protocol carries. Every fixed-size datatype is a little-endian numpy
  array of the matching dtype; BF16 is carried as ``uint16`` bit patterns (numpy has no bfloat16);
  BYTES is an ``object`` array of :class:`bytes`.
- the *user* array: what a caller hands in or gets back. BF16 is widened to ``float32`` (exactly);
  BYTES elements may be given as :class:`str` (encoded as UTF-8) or :class:`bytes`.

The binary framing is the one of Triton's ``binary_tensor_data`` extension: a JSON header whose
length is given by the ``Inference-Header-Content-Length`` header, followed by each binary tensor's
bytes back to back; BYTES elements are each a 4-byte little-endian length followed by the bytes.

Both the client and the server use this module, so the wire format is written once.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "DATATYPES",
    "HEADER_LENGTH",
    "MAX_DIMS",
    "CodecError",
    "assemble_body",
    "bf16_bits_to_float32",
    "binary_piece",
    "datatype_of",
    "decode_binary_tensor",
    "decode_json_tensor",
    "deserialize_bytes_tensor",
    "element_count",
    "encode_json_data",
    "float32_to_bf16_bits",
    "from_wire",
    "piece_nbytes",
    "serialize_bytes_tensor",
    "split_body",
    "to_wire",
    "wire_nbytes",
]

HEADER_LENGTH = "Inference-Header-Content-Length"
"""The HTTP header that gives the length of the JSON part of a binary-framed body."""

DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BF16": np.dtype("<u2"),
    "BYTES": np.dtype(object),
}
"""Each protocol datatype and the numpy dtype of its wire array."""

_KIND_TO_DATATYPE: dict[tuple[str, int], str] = {
    ("b", 1): "BOOL",
    ("u", 1): "UINT8",
    ("u", 2): "UINT16",
    ("u", 4): "UINT32",
    ("u", 8): "UINT64",
    ("i", 1): "INT8",
    ("i", 2): "INT16",
    ("i", 4): "INT32",
    ("i", 8): "INT64",
    ("f", 2): "FP16",
    ("f", 4): "FP32",
    ("f", 8): "FP64",
}

_LENGTH = struct.Struct("<I")


class CodecError(ValueError):
    """A tensor that cannot be encoded or decoded; the message says which and why."""


def datatype_of(dtype: npt.DTypeLike) -> str:
    """The protocol datatype of a numpy dtype (``str``, ``bytes`` and ``object`` are BYTES)."""
    dt = np.dtype(dtype)
    if dt.name == "bfloat16":  # ml_dtypes.bfloat16, when the caller uses it
        return "BF16"
    if dt.kind in "OUS":
        return "BYTES"
    try:
        return _KIND_TO_DATATYPE[(dt.kind, dt.itemsize)]
    except KeyError:
        raise CodecError(f"numpy dtype {dt} has no Open Inference Protocol datatype") from None


def _wire_dtype(datatype: str) -> np.dtype[Any]:
    try:
        return DATATYPES[datatype]
    except KeyError:
        known = ", ".join(DATATYPES)
        raise CodecError(f"unknown datatype {datatype!r}; expected one of {known}") from None


MAX_DIMS = 64
"""The most dimensions a tensor may have (NumPy's limit)."""
_MAX_SPAN = 1 << 58  # product of the non-zero dimensions: 16-byte elements stay under 2**63 bytes


def _shown(shape: Sequence[int]) -> str:
    text = str(list(shape))
    return text if len(text) <= 80 else text[:77] + "..."


def element_count(shape: Sequence[int]) -> int:
    """The number of elements of a tensor of this shape (1 for a scalar ``[]``).

    :class:`CodecError` for a shape no array can have: more than :data:`MAX_DIMS` dimensions,
    a dimension that is not a non-negative integer, or dimensions whose non-zero ones multiply
    beyond what an array can index (``[2**62, 0]`` holds no element, yet no array has it).
    """
    if len(shape) > MAX_DIMS:
        raise CodecError(f"shape has {len(shape)} dimensions; at most {MAX_DIMS} are supported")
    span = 1
    for dim in shape:
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 0:
            raise CodecError(f"shape {_shown(shape)} has an invalid dimension {dim!r}")
        if dim:
            span *= dim
            if span > _MAX_SPAN:
                raise CodecError(
                    f"shape {_shown(shape)} is too large for any tensor: its non-zero "
                    f"dimensions multiply to more than 2**58 elements"
                )
    return math.prod(shape)


def wire_nbytes(datatype: str, shape: Sequence[int]) -> int | None:
    """Bytes a binary tensor of this datatype and shape occupies; ``None`` for BYTES."""
    if datatype == "BYTES":
        return None
    return element_count(shape) * _wire_dtype(datatype).itemsize


def float32_to_bf16_bits(values: npt.ArrayLike) -> npt.NDArray[np.uint16]:
    """Round float32 values to bfloat16 (nearest, ties to even) and return their bit patterns."""
    f32 = np.ascontiguousarray(values, dtype=np.float32)
    bits = f32.view(np.uint32)
    nan = np.isnan(f32)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    if nan.any():
        rounded[nan] = 0x7FC0
    return rounded


def bf16_bits_to_float32(bits: npt.NDArray[np.uint16]) -> npt.NDArray[np.float32]:
    """Widen bfloat16 bit patterns to float32, exactly."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _as_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (bytearray, memoryview, np.bytes_)):
        return bytes(value)
    if isinstance(value, np.str_):
        return str(value).encode("utf-8")
    raise CodecError(f"a BYTES element must be str or bytes, not {type(value).__name__}")


def to_wire(value: Any, datatype: str | None = None) -> tuple[np.ndarray[Any, Any], str]:
    """Turn a user value (array, list, scalar) into its wire array and datatype.

    Without ``datatype`` the datatype follows the array's dtype. With it, the value is converted
    to that datatype: the caller decides whether that conversion is safe.
    """
    if datatype is None:
        array = value if isinstance(value, np.ndarray) else np.asarray(value)
        datatype = datatype_of(array.dtype)
    else:
        _wire_dtype(datatype)
        if isinstance(value, np.ndarray):
            array = value
        else:
            array = np.asarray(value, dtype=object if datatype == "BYTES" else None)
    if datatype == "BYTES":
        if array.dtype == object and all(isinstance(v, bytes) for v in array.flat):
            return array, datatype
        wire = np.empty(array.shape, dtype=object)
        wire_flat = wire.reshape(-1)
        for i, element in enumerate(array.flat):
            wire_flat[i] = _as_bytes(element)
        return wire, datatype
    if datatype == "BF16":
        if array.dtype.name == "bfloat16":
            return array.view(np.uint16), datatype
        if array.dtype == np.uint16:
            return array, datatype
        return float32_to_bf16_bits(array).reshape(array.shape), datatype
    wire_dtype = DATATYPES[datatype]
    if array.dtype != wire_dtype:
        array = array.astype(wire_dtype)
    return array, datatype


def from_wire(array: np.ndarray[Any, Any], datatype: str) -> np.ndarray[Any, Any]:
    """The user-facing form of a wire array: BF16 widened to float32, everything else as is."""
    if datatype == "BF16":
        return bf16_bits_to_float32(array)
    return array


def serialize_bytes_tensor(array: np.ndarray[Any, Any]) -> bytes:
    """BYTES elements as 4-byte little-endian lengths, each followed by its bytes (row-major)."""
    parts: list[bytes] = []
    for element in array.flat:
        data = _as_bytes(element)
        parts.append(_LENGTH.pack(len(data)))
        parts.append(data)
    return b"".join(parts)


def deserialize_bytes_tensor(buffer: bytes | memoryview, count: int) -> np.ndarray[Any, Any]:
    """Parse exactly ``count`` length-prefixed BYTES elements that fill ``buffer``."""
    view = memoryview(buffer)
    if count * 4 > len(view):
        raise CodecError(
            f"BYTES data of {len(view)} bytes cannot hold {count} elements (4 bytes of length each)"
        )
    out = np.empty(count, dtype=object)
    offset = 0
    end = len(view)
    for i in range(count):
        if offset + 4 > end:
            raise CodecError(
                f"BYTES data ends after {i} of {count} elements: no room for element {i}'s length"
            )
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += 4
        if offset + length > end:
            raise CodecError(
                f"BYTES element {i} declares {length} bytes but only {end - offset} remain"
            )
        out[i] = bytes(view[offset : offset + length])
        offset += length
    if offset != end:
        raise CodecError(f"BYTES data holds {end - offset} bytes after its {count} elements")
    return out


def decode_binary_tensor(
    buffer: bytes | memoryview, datatype: str, shape: Sequence[int]
) -> np.ndarray[Any, Any]:
    """The wire array held by one binary tensor's bytes (zero-copy for fixed-size datatypes)."""
    count = element_count(shape)
    if datatype == "BYTES":
        return deserialize_bytes_tensor(buffer, count).reshape(shape)
    dtype = _wire_dtype(datatype)
    expected = count * dtype.itemsize
    if len(buffer) != expected:
        raise CodecError(
            f"{datatype} tensor of shape {list(shape)} needs {expected} bytes, got {len(buffer)}"
        )
    return np.frombuffer(buffer, dtype=dtype, count=count).reshape(shape)


_INTEGER_KINDS = "iu"


def decode_json_tensor(data: Any, datatype: str, shape: Sequence[int]) -> np.ndarray[Any, Any]:
    """The wire array held by a JSON tensor's ``data`` (flat or nested, row-major)."""
    count = element_count(shape)
    dtype = _wire_dtype(datatype)
    if data is None:
        raise CodecError("tensor has neither 'data' nor 'binary_data_size'")
    if datatype == "BYTES":
        flat = _flatten(data)
        if len(flat) != count:
            raise CodecError(f"shape {list(shape)} needs {count} elements, data holds {len(flat)}")
        out = np.empty(count, dtype=object)
        for i, element in enumerate(flat):
            if not isinstance(element, str):
                raise CodecError(
                    f"BYTES element {i} must be a JSON string, not {type(element).__name__}"
                )
            out[i] = element.encode("utf-8")
        return out.reshape(shape)
    try:
        raw = np.asarray(data)
    except ValueError as exc:  # ragged nesting
        raise CodecError(f"data is not a rectangular array: {exc}") from None
    if raw.size != count:
        raise CodecError(f"shape {list(shape)} needs {count} elements, data holds {raw.size}")
    kind = raw.dtype.kind
    if datatype != "BF16" and dtype.kind in _INTEGER_KINDS and count:
        if kind in "fO":
            # Integers beyond int64 make numpy fall back to float64 or object: check each one.
            raw = np.array(data, dtype=object)
            if any(not isinstance(v, int) for v in raw.flat):
                raise CodecError(f"{datatype} data must be integers")
            low, high = min(raw.flat), max(raw.flat)
        elif kind in "biu":
            low, high = raw.min(), raw.max()
        else:
            raise CodecError(f"{datatype} data must be integers, got {raw.dtype.name}")
        info = np.iinfo(dtype)
        if low < info.min or high > info.max:
            raise CodecError(f"{datatype} data holds a value outside [{info.min}, {info.max}]")
    elif count and kind not in "biuf":
        raise CodecError(f"{datatype} data must be JSON numbers or booleans, got {raw.dtype.name}")
    if datatype == "BF16":
        return float32_to_bf16_bits(raw).reshape(shape)
    try:
        return raw.astype(dtype, copy=False).reshape(shape)
    except (OverflowError, ValueError) as exc:
        raise CodecError(f"{datatype} data cannot be converted: {exc}") from None


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    if not data or not isinstance(data[0], list):
        return data
    out: list[Any] = []
    stack: list[Any] = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        else:
            out.append(item)
    return out


def encode_json_data(array: np.ndarray[Any, Any], datatype: str) -> Any:
    """A wire array as a flat JSON-ready value: a C-contiguous array for orjson, or a list."""
    if datatype == "BYTES":
        out: list[str] = []
        for element in array.flat:
            try:
                out.append(_as_bytes(element).decode("utf-8"))
            except UnicodeDecodeError:
                raise CodecError(
                    "a BYTES element is not valid UTF-8 and cannot travel in JSON; "
                    "send it as binary"
                ) from None
        return out
    if datatype == "BF16":
        return np.ascontiguousarray(bf16_bits_to_float32(array).reshape(-1))
    return np.ascontiguousarray(array.reshape(-1))


def binary_piece(array: np.ndarray[Any, Any], datatype: str) -> np.ndarray[Any, Any] | bytes:
    """What the binary form of a wire array is built from: BYTES serialized, others as they are."""
    if datatype == "BYTES":
        return serialize_bytes_tensor(array)
    return array


def piece_nbytes(piece: np.ndarray[Any, Any] | bytes) -> int:
    """Bytes a piece from :func:`binary_piece` occupies in a body."""
    if isinstance(piece, bytes):
        return len(piece)
    return int(piece.size) * int(piece.dtype.itemsize)


def assemble_body(header: bytes, pieces: Iterable[np.ndarray[Any, Any] | bytes]) -> bytearray:
    """The JSON header followed by each piece's bytes, copying each tensor exactly once.

    Fixed-size tensors are written straight into the body, whatever their memory layout.
    """
    parts = list(pieces)
    total = len(header) + sum(piece_nbytes(p) for p in parts)
    body = bytearray(total)
    body[: len(header)] = header
    offset = len(header)
    for piece in parts:
        nbytes = piece_nbytes(piece)
        if isinstance(piece, bytes):
            body[offset : offset + nbytes] = piece
        elif nbytes:
            target = np.frombuffer(body, dtype=piece.dtype, count=piece.size, offset=offset)
            np.copyto(target.reshape(piece.shape), piece, casting="no")
        offset += nbytes
    return body


def split_body(
    body: bytes | bytearray | memoryview, header_length: int
) -> tuple[bytes, memoryview]:
    """Split a binary-framed body into its JSON header and the binary part that follows it."""
    view = memoryview(body)
    if header_length < 0 or header_length > len(view):
        raise CodecError(
            f"{HEADER_LENGTH} is {header_length} but the body holds only {len(view)} bytes"
        )
    return bytes(view[:header_length]), view[header_length:]
