"""The part files of a batch job: one Parquet file per committed chunk, its rows' results.

A row's value of a multi-dimensional output is one fixed-size binary cell (its raw bytes), with
the dtype and per-row shape in the file's schema metadata: Parquet writes and reads that without
the cost of nested lists. Text outputs are string columns.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .jobs import JobFailed

__all__ = ["part_kinds", "read_part_column", "to_part_column"]


def to_part_column(array: np.ndarray[Any, Any]) -> tuple[Any, str]:
    """A column of a part file and how to read it back (``dtype`` and per-row shape)."""
    import pyarrow as pa

    shape = list(array.shape[1:])
    if array.dtype == object:
        texts = [_text_of(v) for v in array.reshape(-1)]
        if shape:
            raise JobFailed("outputs of text with more than one value per row are not supported")
        return pa.array(texts, type=pa.string()), json.dumps({"dtype": "object", "shape": []})
    kind = json.dumps({"dtype": array.dtype.str, "shape": shape})
    if not shape:
        return pa.array(array), kind
    width = array.dtype.itemsize * math.prod(shape)
    data = pa.py_buffer(np.ascontiguousarray(array).tobytes())
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), len(array), [None, data]), kind


def part_kinds(schema: Any) -> dict[str, dict[str, Any]]:
    """How to read each column of a part file back (from its schema's metadata)."""
    kinds: dict[str, dict[str, Any]] = {"row": {"dtype": "<i8", "shape": []}}
    for key, value in (schema.metadata or {}).items():
        text = key.decode()
        if text.startswith("maas:"):
            kinds[text.removeprefix("maas:")] = json.loads(value)
    return kinds


def read_part_column(
    path: Path, column: str, kinds: Mapping[str, Mapping[str, Any]]
) -> np.ndarray[Any, Any]:
    import pyarrow.parquet as pq

    values = pq.read_table(path, columns=[column]).column(column)
    kind = kinds[column]
    if kind["dtype"] == "object":
        return np.array(values.to_pylist(), dtype=object)
    if not kind["shape"]:
        return np.asarray(values.to_numpy(), dtype=np.dtype(kind["dtype"]))
    array = values.combine_chunks()
    per_row = math.prod(kind["shape"])
    flat = np.frombuffer(array.buffers()[1], dtype=np.dtype(kind["dtype"]))
    flat = flat[array.offset * per_row :][: len(array) * per_row]
    return flat.reshape([len(array), *kind["shape"]])


def _text_of(value: Any) -> Any:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
