"""Tensors from the command line: files, inline JSON and stdin, for ``maas predict`` and
``maas bench``.

- ``--input NAME=FILE``: ``.npy`` (one array), ``.npz`` (the array called NAME, or the only one),
  ``.json`` (a nested list), ``.csv`` (numbers, one row per line; a header line is skipped);
- ``--input NAME=JSON``: the value inline, e.g. ``--input 'input=[[0, 1, 2]]'``;
- ``--input FILE.npz`` or ``--input FILE.json`` without a name: every array of the file, by name;
- ``--data JSON`` or JSON on stdin: ``{"name": [...]}``, a bare nested list (a model with one
  input), or a V2 request body ``{"inputs": [{"name", "shape", "datatype", "data"}]}``; stdin may
  also hold ``.npy`` bytes.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import typer

__all__ = ["parse_document", "read_inputs", "read_stdin"]

Inputs = dict[str, Any] | np.ndarray[Any, Any]
"""Named arrays, or one array for a model's only input."""


def _bad(message: str, hint: str = "--input") -> typer.BadParameter:
    return typer.BadParameter(message, param_hint=hint)


def _csv(path: Path) -> np.ndarray[Any, Any]:
    with path.open(newline="") as handle:
        rows = [row for row in csv.reader(handle) if row]
    if not rows:
        raise _bad(f"{path} holds no rows")
    try:
        [float(cell) for cell in rows[0]]
    except ValueError:
        rows = rows[1:]  # a header line
    try:
        return np.array([[float(cell) for cell in row] for row in rows])
    except ValueError as exc:
        raise _bad(f"{path}: not all cells are numbers ({exc})") from None


def _json_value(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise _bad(f"{where} is not JSON: {exc}") from None


def _file(path: Path, name: str | None) -> Inputs:
    if not path.is_file():
        raise _bad(f"no file {path}")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        array: np.ndarray[Any, Any] = np.load(path, allow_pickle=False)
        return {name: array} if name else array
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
        if name is None:
            return arrays
        if name in arrays:
            return {name: arrays[name]}
        if len(arrays) == 1:
            return {name: next(iter(arrays.values()))}
        raise _bad(f"{path} holds {sorted(arrays)}, not {name!r}")
    if suffix == ".json":
        value = _json_value(path.read_text(), str(path))
        if name is None:
            return parse_document(value, str(path))
        return {name: value}
    if suffix == ".csv":
        table = _csv(path)
        return {name: table} if name else table
    raise _bad(f"{path}: use a .npy, .npz, .json or .csv file")


def _one(spec: str) -> Inputs:
    name, sep, value = spec.partition("=")
    if not sep:
        return _file(Path(spec), None)
    if not name:
        raise _bad(f"{spec!r}: give NAME=FILE or NAME=JSON")
    stripped = value.strip()
    if stripped[:1] in ("[", "{") or _is_number(stripped):
        return {name: _json_value(stripped, f"the value of {name!r}")}
    return _file(Path(value), name)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def parse_document(value: Any, where: str = "the JSON") -> Inputs:
    """The inputs a JSON document stands for (see the module's doc)."""
    if isinstance(value, dict) and isinstance(value.get("inputs"), list):
        named: dict[str, Any] = {}
        for item in value["inputs"]:
            if not isinstance(item, dict) or "name" not in item or "data" not in item:
                raise _bad(f"{where}: each of 'inputs' needs a name and data", "--data")
            data = np.asarray(
                item["data"], dtype=object if item.get("datatype") == "BYTES" else None
            )
            if "shape" in item:
                data = data.reshape(item["shape"])
            named[str(item["name"])] = data
        return named
    if isinstance(value, dict):
        return {str(k): v for k, v in value.items()}
    if isinstance(value, list):
        return np.asarray(value)
    raise _bad(f"{where}: give an object of inputs or a nested list", "--data")


def read_stdin(raw: bytes) -> Inputs:
    if raw.startswith(b"\x93NUMPY"):
        array: np.ndarray[Any, Any] = np.load(io.BytesIO(raw), allow_pickle=False)
        return array
    return parse_document(_json_value(raw.decode(), "stdin"), "stdin")


def read_inputs(specs: Sequence[str], data: str | None, stdin: bytes | None) -> Inputs:
    """The inputs from ``--input`` options, ``--data`` and stdin (``None``: not read)."""
    sources = [_one(spec) for spec in specs]
    if data is not None:
        sources.append(parse_document(_json_value(data, "--data"), "--data"))
    if not sources and stdin:
        sources.append(read_stdin(stdin))
    if not sources:
        raise _bad("give inputs: --input NAME=FILE, --data JSON, or JSON on stdin")
    if len(sources) == 1:
        return sources[0]
    merged: dict[str, Any] = {}
    for source in sources:
        if not isinstance(source, dict):
            raise _bad("name each input (NAME=FILE) when giving several")
        for key, value in source.items():
            if key in merged:
                raise _bad(f"input {key!r} is given twice")
            merged[key] = value
    return merged
