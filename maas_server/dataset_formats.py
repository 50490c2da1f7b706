"""Dataset files: reading what users upload, inferring its schema, storing it in a form that
reads fast, and converting it back for downloads.

Tables (CSV, Parquet, JSON Lines) are read with pyarrow and stored as one Parquet file,
``data.parquet``, after these checks and normalizations:

- a column of lists becomes a column of fixed-shape arrays (``[[1, 2], [3, 4]]`` per row: shape
  ``[2, 2]``); lists whose lengths differ between rows are *ragged rows* (400);
- integers with missing values become FP64 (missing: NaN), so that the schema says what reads
  return; dates and times become strings; dictionary columns are decoded;
- refused with a 400 naming the column: mixed types (JSON Lines), a column without any value,
  nested objects, booleans with missing values, duplicate or empty column names, no rows.

Arrays (NPY, NPZ) are read with numpy, never unpickled (``allow_pickle=False``), and stored one
``.npy`` per array under ``arrays/`` so that reads map the file instead of loading it. Their
first axis is the rows: every array must have as many (*ragged arrays* otherwise, 400).

Every error is a :class:`~maas_server.errors.BadRequestError` naming the problem.

>>> found = ingest(Path("upload.csv"), "csv", Path("staging/x"))  # doctest: +SKIP
>>> found.kind, [(f.name, f.datatype, f.shape) for f in found.schema]  # doctest: +SKIP
('table', [('x', 'FP64', [])])
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from maas_wire.codec import CodecError, datatype_of
from maas_wire.datasets import DatasetField

from .errors import BadRequestError

__all__ = [
    "ARRAYS_DIR",
    "TABLE_FILE",
    "Ingested",
    "arrays_to_table",
    "column_to_numpy",
    "ingest",
    "map_arrays",
    "original_name",
    "preview_rows",
    "read_rows",
    "read_table",
    "sniff_format",
    "write_download",
]

TABLE_FILE = "data.parquet"
ARRAYS_DIR = "arrays"
_ORIGINAL = "original"
_PREVIEW_ELEMENTS = 32
_ARROW_DATATYPES: dict[pa.DataType, str] = {
    pa.bool_(): "BOOL",
    pa.int8(): "INT8",
    pa.int16(): "INT16",
    pa.int32(): "INT32",
    pa.int64(): "INT64",
    pa.uint8(): "UINT8",
    pa.uint16(): "UINT16",
    pa.uint32(): "UINT32",
    pa.uint64(): "UINT64",
    pa.float16(): "FP16",
    pa.float32(): "FP32",
    pa.float64(): "FP64",
    pa.string(): "BYTES",
    pa.large_string(): "BYTES",
    pa.binary(): "BYTES",
    pa.large_binary(): "BYTES",
}
_JSON_MIXED = re.compile(r"Column\(/?(.*?)\) changed from (\w+) to (\w+) in row (\d+)")


@dataclass(frozen=True)
class Ingested:
    """What an upload turned out to hold."""

    kind: str
    """``"table"`` or ``"arrays"``."""
    schema: list[DatasetField]
    rows: int


def original_name(format: str) -> str:
    """The file name the uploaded bytes are kept under."""
    return f"{_ORIGINAL}.{format}"


def sniff_format(head: bytes) -> str | None:
    """The format of an upload from its first bytes, when they say (CSV has no magic)."""
    if head.startswith(b"PAR1"):
        return "parquet"
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "npz"
    if head.lstrip()[:1] == b"{":
        return "jsonl"
    return None


# --- ingesting an upload ------------------------------------------------------------------


def ingest(original: Path, format: str, folder: Path) -> Ingested:
    """Read ``original`` (in ``format``), check it, and write its stored form into ``folder``.
    Blocking: call it on a worker thread."""
    if original.stat().st_size == 0:
        raise BadRequestError(f"the upload is empty: send a {format.upper()} file with rows")
    if format in ("npy", "npz"):
        arrays = _read_arrays(original, format)
        return store_arrays(arrays, folder)
    table = _read_table_file(original, format)
    if table.num_rows == 0:
        raise BadRequestError(f"the {format.upper()} file has no rows")
    table = _normalize(table)
    pq.write_table(table, folder / TABLE_FILE)
    return Ingested("table", _table_schema(table.schema), table.num_rows)


def _read_table_file(path: Path, format: str) -> pa.Table:
    try:
        if format == "csv":
            table = pa_csv.read_csv(path)
            dated = [f.name for f in table.schema if pa.types.is_temporal(f.type)]
            if not dated:
                return table
            # Dates and times stay the text they were, not pyarrow's rendering of its parse.
            strings = pa_csv.ConvertOptions(column_types={name: pa.string() for name in dated})
            return pa_csv.read_csv(path, convert_options=strings)
        if format == "jsonl":
            return pa_json.read_json(path)
        if format == "parquet":
            return pq.read_table(path)
    except pa.ArrowInvalid as exc:
        raise BadRequestError(_explain(format, str(exc))) from None
    except (pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
        raise BadRequestError(f"the {format.upper()} file cannot be read: {exc}") from None
    raise BadRequestError(f"unknown dataset format {format!r}")


def _explain(format: str, message: str) -> str:
    if format == "csv":
        if message.startswith("CSV parse error: Expected"):
            detail = message.removeprefix("CSV parse error: ")
            return f"a CSV row does not match the header: {detail}"
        if message == "Empty CSV file":
            return "the CSV file is empty"
        return f"the CSV file cannot be read: {message}"
    if format == "jsonl":
        mixed = _JSON_MIXED.search(message)
        if mixed:
            column, before, after, row = mixed.groups()
            return (
                f"mixed types in column {column!r}: line {int(row) + 1} has a {after} where "
                f"earlier lines have a {before}"
            )
        return f"the JSON Lines file cannot be read (one JSON object per line): {message}"
    return f"not a valid Parquet file (corrupt or another format): {message}"


def _normalize(table: pa.Table) -> pa.Table:
    names = table.column_names
    seen: set[str] = set()
    for i, name in enumerate(names):
        if not name:
            raise BadRequestError(f"column #{i + 1} has no name")
        if name in seen:
            raise BadRequestError(f"two columns are named {name!r}")
        seen.add(name)
    columns = [_normalize_column(name, table.column(name).combine_chunks()) for name in names]
    return pa.table(columns, names=names)


def _normalize_column(name: str, column: pa.Array) -> pa.Array:
    kind = column.type
    if pa.types.is_dictionary(kind):
        column = column.dictionary_decode()
        kind = column.type
    if pa.types.is_null(kind):
        raise BadRequestError(
            f"column {name!r} has no value in any row, so its type cannot be inferred; "
            "drop it or fill it"
        )
    if pa.types.is_temporal(kind):
        return column.cast(pa.string())
    if pa.types.is_decimal(kind):
        return column.cast(pa.float64())
    if str(kind) in ("string_view", "binary_view"):
        return column.cast(pa.string() if str(kind) == "string_view" else pa.binary())
    if pa.types.is_integer(kind) and column.null_count:
        return column.cast(pa.float64())
    if pa.types.is_boolean(kind) and column.null_count:
        raise BadRequestError(
            f"column {name!r} holds booleans with missing values; fill them or use numbers"
        )
    if kind in _ARROW_DATATYPES:
        return column
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        return _fixed_shape(name, column)
    if pa.types.is_struct(kind) or pa.types.is_map(kind):
        raise BadRequestError(
            f"column {name!r} holds nested objects ({kind}); flatten them into columns"
        )
    raise BadRequestError(f"column {name!r} has type {kind}, which maas datasets do not hold")


def _fixed_shape(name: str, column: pa.Array) -> pa.Array:
    """A list column as nested fixed-size lists: every row's value the same shape."""
    if column.null_count:
        raise BadRequestError(f"column {name!r} holds arrays with missing rows")
    sizes: list[int] = []
    level = column
    while (
        pa.types.is_list(level.type)
        or pa.types.is_large_list(level.type)
        or (pa.types.is_fixed_size_list(level.type))
    ):
        if level.null_count:
            raise BadRequestError(f"column {name!r} holds arrays with missing values")
        if len(level):
            lengths = pc.list_value_length(level)
            low, high = pc.min_max(lengths).values()
            if low.as_py() != high.as_py():
                first = lengths[0].as_py()
                row = int(pc.index(pc.not_equal(lengths, first), True).as_py())
                raise BadRequestError(
                    f"ragged rows: column {name!r} holds arrays of different lengths "
                    f"({first} and {lengths[row].as_py()}, at depth {len(sizes) + 1}); every "
                    "row's value must have the same shape"
                )
            sizes.append(int(low.as_py()))
        else:
            sizes.append(0)
        level = level.flatten()
    values = _normalize_column(name, level)
    if pa.types.is_fixed_size_list(values.type) or values.type not in _ARROW_DATATYPES:
        raise BadRequestError(f"column {name!r} holds arrays of {values.type}")
    if values.null_count:
        raise BadRequestError(f"column {name!r} holds arrays with missing values")
    for size in reversed(sizes):
        values = pa.FixedSizeListArray.from_arrays(values, size)
    return values


def _field_of(name: str, kind: pa.DataType) -> DatasetField:
    shape: list[int] = []
    while pa.types.is_fixed_size_list(kind):
        shape.append(kind.list_size)
        kind = kind.value_type
    return DatasetField(name=name, datatype=_ARROW_DATATYPES[kind], shape=shape)


def _table_schema(schema: pa.Schema) -> list[DatasetField]:
    return [_field_of(f.name, f.type) for f in schema]


def _read_arrays(path: Path, format: str) -> dict[str, np.ndarray[Any, Any]]:
    arrays: dict[str, np.ndarray[Any, Any]] = {}
    try:
        with path.open("rb") as source:  # np.load leaks the files it opens when they are bad
            if format == "npy":
                return {"array": np.load(source, allow_pickle=False)}
            with np.load(source, allow_pickle=False) as archive:
                for name in archive.files:
                    arrays[name] = archive[name]
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise BadRequestError(
                f"the {format.upper()} file holds Python objects (pickled), which the server "
                "never loads; save numbers or strings"
            ) from None
        raise BadRequestError(f"not a valid {format.upper()} file: {exc}") from None
    except (zipfile.BadZipFile, EOFError, OSError) as exc:
        raise BadRequestError(f"not a valid {format.upper()} file: {exc}") from None
    if not arrays:
        raise BadRequestError("the NPZ file holds no arrays")
    return arrays


def store_arrays(arrays: dict[str, np.ndarray[Any, Any]], folder: Path) -> Ingested:
    """Check named arrays (rows along the first axis) and write their stored form into
    ``folder``. Blocking."""
    rows: int | None = None
    first = ""
    schema: list[DatasetField] = []
    for name, array in arrays.items():
        if array.ndim == 0:
            raise BadRequestError(
                f"array {name!r} is a scalar; an array dataset holds rows along the first axis"
            )
        try:
            datatype = datatype_of(array.dtype)
        except CodecError:
            raise BadRequestError(
                f"array {name!r} has dtype {array.dtype}, which has no V2 datatype"
            ) from None
        if array.dtype.fields is not None:
            raise BadRequestError(f"array {name!r} has a structured dtype; save one array each")
        if rows is None:
            rows, first = array.shape[0], name
        elif array.shape[0] != rows:
            raise BadRequestError(
                f"ragged arrays: {first!r} has {rows} rows (first axis), {name!r} has "
                f"{array.shape[0]}; every array needs one entry per row"
            )
        schema.append(DatasetField(name=name, datatype=datatype, shape=list(array.shape[1:])))
    assert rows is not None
    if rows == 0:
        raise BadRequestError("the arrays have no rows (their first axis is empty)")
    target = folder / ARRAYS_DIR
    target.mkdir()
    for i, array in enumerate(arrays.values()):
        if not array.dtype.isnative:  # reads hand out native arrays, as the codec expects
            array = array.astype(array.dtype.newbyteorder("="))
        np.save(target / f"{i}.npy", array, allow_pickle=False)
    return Ingested("arrays", schema, rows)


# --- reading a stored dataset -------------------------------------------------------------


def _array_path(folder: Path, index: int) -> Path:
    return folder / ARRAYS_DIR / f"{index}.npy"


def _columns_to_read(schema: Sequence[DatasetField], columns: Sequence[str] | None) -> list[int]:
    names = [f.name for f in schema]
    if columns is None:
        return list(range(len(names)))
    picked = []
    for column in columns:
        if column not in names:
            raise BadRequestError(f"the dataset has no column {column!r}; it has {names}")
        picked.append(names.index(column))
    return picked


def column_to_numpy(column: pa.Array | pa.ChunkedArray) -> np.ndarray[Any, Any]:
    """One stored column as numpy: a leading row axis, the per-row shape after it; strings as
    an object array of ``str``, missing values as NaN (floats) or None (objects)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    shape: list[int] = []
    values = column
    while pa.types.is_fixed_size_list(values.type):
        shape.append(values.type.list_size)
        values = values.flatten()
    flat: np.ndarray[Any, Any] = values.to_numpy(zero_copy_only=False)
    if shape:
        return flat.reshape(len(column), *shape)
    return flat


def read_rows(
    folder: Path,
    kind: str,
    schema: Sequence[DatasetField],
    start: int,
    stop: int,
    columns: Sequence[str] | None = None,
    table: pa.Table | None = None,
    arrays: Sequence[np.ndarray[Any, Any]] | None = None,
) -> dict[str, np.ndarray[Any, Any]]:
    """Rows ``start:stop`` of the columns (all by default) as numpy arrays. ``table`` (a
    table) or ``arrays`` (:func:`map_arrays`, arrays): what the caller holds open already."""
    picked = _columns_to_read(schema, columns)
    if kind == "arrays":
        mapped_all = arrays if arrays is not None else map_arrays(folder, schema)
        out: dict[str, np.ndarray[Any, Any]] = {}
        for i in picked:
            part = np.array(mapped_all[i][start:stop])
            if part.dtype.kind in "US":
                part = part.astype(object)
            out[schema[i].name] = part
        return out
    if table is None:
        table = read_table(folder, kind, schema, [schema[i].name for i in picked])
    part = table.slice(start, max(0, stop - start))
    return {schema[i].name: column_to_numpy(part.column(schema[i].name)) for i in picked}


def map_arrays(folder: Path, schema: Sequence[DatasetField]) -> list[np.ndarray[Any, Any]]:
    """The arrays of an array dataset, memory-mapped (read-only), in schema order."""
    return [
        np.load(_array_path(folder, i), mmap_mode="r", allow_pickle=False)
        for i in range(len(schema))
    ]


def _array_to_arrow(array: np.ndarray[Any, Any]) -> pa.Array:
    if array.ndim == 1:
        return pa.array(array)
    flat: pa.Array = pa.array(np.ascontiguousarray(array).reshape(-1))
    for size in reversed(array.shape[1:]):
        flat = pa.FixedSizeListArray.from_arrays(flat, size)
    return flat


def arrays_to_table(arrays: dict[str, np.ndarray[Any, Any]]) -> pa.Table:
    """Named arrays (first axis: rows) as a table; arrays of more than one axis become columns
    of fixed-size lists."""
    return pa.table([_array_to_arrow(a) for a in arrays.values()], names=list(arrays))


def read_table(
    folder: Path, kind: str, schema: Sequence[DatasetField], columns: Sequence[str] | None = None
) -> pa.Table:
    """The whole dataset (or some columns) as a pyarrow table."""
    picked = _columns_to_read(schema, columns)
    if kind == "arrays":
        arrays = {
            schema[i].name: np.load(_array_path(folder, i), mmap_mode="r", allow_pickle=False)
            for i in picked
        }
        return arrays_to_table(arrays)
    names = [schema[i].name for i in picked]
    return pq.read_table(folder / TABLE_FILE, columns=names, memory_map=True)


def _preview_value(value: Any, field: DatasetField) -> Any:
    if isinstance(value, np.ndarray):
        if value.size > _PREVIEW_ELEMENTS:
            shape = "x".join(str(d) for d in value.shape)
            return f"<{field.datatype} array {shape}>"
        return value.tolist()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.generic):
        item = value.item()
        if isinstance(item, float) and item != item:
            return None
        return item
    if isinstance(value, float) and value != value:
        return None
    return value


def preview_rows(
    folder: Path, kind: str, schema: Sequence[DatasetField], rows: int, count: int
) -> list[dict[str, Any]]:
    """The first ``count`` rows as JSON-ready ``{column: value}`` (NaN as null)."""
    stop = min(rows, count)
    if stop <= 0:
        return []
    if kind == "table":
        pf = pq.ParquetFile(folder / TABLE_FILE)
        batch = next(pf.iter_batches(batch_size=stop))
        table = pa.Table.from_batches([batch]).slice(0, stop)
        data = {f.name: column_to_numpy(table.column(f.name)) for f in schema}
    else:
        data = read_rows(folder, kind, schema, 0, stop)
    return [{f.name: _preview_value(data[f.name][i], f) for f in schema} for i in range(stop)]


# --- downloads ----------------------------------------------------------------------------


def _scalar_only(table: pa.Table, format: str) -> None:
    for f in table.schema:
        if pa.types.is_fixed_size_list(f.type):
            raise BadRequestError(
                f"column {f.name!r} holds an array per row; {format.upper()} holds one value "
                "per cell: download as parquet or npz"
            )


def _table_to_npz_arrays(table: pa.Table) -> dict[str, np.ndarray[Any, Any]]:
    out: dict[str, np.ndarray[Any, Any]] = {}
    for name in table.column_names:
        array = column_to_numpy(table.column(name))
        if array.dtype == object:  # strings or bytes: npz may not hold objects (no pickles)
            items = array.reshape(-1).tolist()
            if any(isinstance(x, bytes) for x in items):
                array = np.array([x or b"" for x in items], dtype=bytes).reshape(array.shape)
            else:
                array = np.array(["" if x is None else x for x in items], dtype=str).reshape(
                    array.shape
                )
        out[name] = array
    return out


def write_download(
    folder: Path, kind: str, schema: Sequence[DatasetField], format: str, target: Path
) -> None:
    """Write the dataset as ``format`` (parquet, csv or npz) to ``target``."""
    if format == "npz" and kind == "arrays":
        arrays = {
            f.name: np.load(_array_path(folder, i), mmap_mode="r", allow_pickle=False)
            for i, f in enumerate(schema)
        }
        with target.open("wb") as out:
            np.savez(out, **arrays)
        return
    table = read_table(folder, kind, schema)
    if format == "parquet":
        pq.write_table(table, target)
    elif format == "csv":
        _scalar_only(table, format)
        pa_csv.write_csv(table, target)
    elif format == "npz":
        with target.open("wb") as out:
            np.savez(out, **_table_to_npz_arrays(table))  # type: ignore[arg-type]
    else:
        raise BadRequestError(f"cannot convert a dataset to {format!r}")
