"""What ``client.datasets`` sends and how it reads what comes back (no I/O to the server here).

- :func:`prepare_dataset`: a path (its format from its suffix), a pandas DataFrame or a pyarrow
  Table (sent as Parquet), or a mapping of numpy arrays (sent as NPZ) as one streamed
  :class:`~maas_client._upload.UploadBody` and its format.
- the plans of the ``/v2/datasets`` routes;
- :func:`decode_dataset`: downloaded bytes as a DataFrame (tables) or a dict of arrays.

pandas and pyarrow are imported only when a DataFrame or a Table is at hand (``maas[pandas]``):
the client's own install stays small.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote, urlencode

import numpy as np

from maas_wire import datasets as _wire

from ._answers import Answer, parse_model
from ._batched import ProgressLike, progress_bar
from ._exceptions import InputError
from ._plans import RequestPlan
from ._types import VersionLike
from ._upload import UploadBody
from .types import DatasetInfo, DatasetPreview

__all__ = [
    "DOWNLOAD_SUFFIXES",
    "SUFFIX_FORMATS",
    "DatasetListing",
    "DownloadFile",
    "decode_dataset",
    "format_of_path",
    "parse_dataset_info",
    "parse_dataset_list",
    "parse_dataset_preview",
    "plan_dataset",
    "plan_dataset_data",
    "plan_dataset_delete",
    "plan_dataset_upload",
    "plan_datasets",
    "prepare_dataset",
]

SUFFIX_FORMATS = {
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".npy": "npy",
    ".npz": "npz",
}
"""The format of a file, from its suffix."""
DOWNLOAD_SUFFIXES = {"parquet": ".parquet", "csv": ".csv", "npz": ".npz"}


class _Listed(_wire.DatasetList):
    datasets: list[DatasetInfo]  # type: ignore[assignment]  # the client's, with display


class DatasetListing(list[DatasetInfo]):
    """The answer of ``client.datasets.list()``: the latest version of each dataset, a list
    that also shows as a table in notebooks."""

    def __repr__(self) -> str:
        from ._display import one_line

        rows = ", ".join(f"{d.name}/v{d.version} {d.rows} rows" for d in self)
        return one_line(f"DatasetListing([{rows}])")

    def _repr_html_(self) -> str:
        from ._display import dataset_list_html

        return dataset_list_html(self)


def format_of_path(path: Path, format: str | None = None) -> str:
    """``format``, or the format the file's suffix says."""
    if format is not None:
        if format not in _wire.DATASET_MEDIA_TYPES:
            raise InputError(
                f"unknown dataset format {format!r}; use one of {list(_wire.DATASET_MEDIA_TYPES)}"
            )
        return format
    found = SUFFIX_FORMATS.get(path.suffix.lower())
    if found is None:
        raise InputError(
            f"cannot tell the format of {path.name!r} from its suffix; name it .csv, .parquet, "
            ".jsonl, .npy or .npz, or say format="
        )
    return found


def _module(value: Any) -> str:
    return type(value).__module__.split(".")[0]


def _arrow_table_bytes(table: Any) -> bytes:
    import pyarrow.parquet as pq

    out = io.BytesIO()
    pq.write_table(table, out)
    return out.getvalue()


def _dataframe_bytes(frame: Any) -> bytes:
    try:
        import pyarrow as pa
    except ImportError:
        raise InputError(
            "uploading a DataFrame needs pyarrow (Parquet): pip install 'maas[pandas]'"
        ) from None
    return _arrow_table_bytes(pa.Table.from_pandas(frame, preserve_index=False))


def _storable(name: str, value: Any) -> np.ndarray[Any, Any]:
    array = np.asarray(value)
    if array.dtype == object:  # strings or bytes: NPZ holds them without pickles as str/bytes
        items = array.reshape(-1).tolist()
        if all(isinstance(x, bytes) for x in items):
            return np.array(items, dtype=bytes).reshape(array.shape)
        if all(isinstance(x, str) for x in items):
            return np.array(items, dtype=str).reshape(array.shape)
        raise InputError(f"array {name!r} holds Python objects; send numbers or strings")
    return array


def _npz_bytes(arrays: Mapping[str, Any]) -> bytes:
    if not arrays:
        raise InputError("the mapping of arrays is empty")
    out = io.BytesIO()
    np.savez(out, **{str(k): _storable(str(k), v) for k, v in arrays.items()})  # type: ignore[arg-type]
    return out.getvalue()


def prepare_dataset(
    source: Any, *, name: str, format: str | None = None, progress: ProgressLike = False
) -> tuple[UploadBody, str]:
    """The streamed body and format of ``source`` (see :meth:`Datasets.upload`)."""
    data: bytes | None = None
    handle: IO[bytes] | None = None
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise InputError(f"no dataset file at {path}")
        format = format_of_path(path, format)
        handle = path.open("rb")
        length = path.stat().st_size
    elif isinstance(source, (bytes, bytearray, memoryview)):
        if format is None:
            raise InputError("say the format of a dataset given as bytes: format='csv', ...")
        format = format_of_path(Path("bytes"), format)
        data = bytes(source)
    elif _module(source) == "pandas" and hasattr(source, "to_parquet"):
        data, format = _dataframe_bytes(source), "parquet"
    elif _module(source) == "pyarrow" and hasattr(source, "num_rows"):
        data, format = _arrow_table_bytes(source), "parquet"
    elif isinstance(source, Mapping):
        data, format = _npz_bytes(source), "npz"
    else:
        raise InputError(
            "a dataset is a path, a pandas DataFrame, a pyarrow Table or a mapping of numpy "
            f"arrays, not {type(source).__name__}"
        )
    if data is not None:
        length = len(data)
    bar = progress_bar(progress, length, f"upload {name}", unit="B")
    body = UploadBody(data if data is not None else handle, length, bar)  # type: ignore[arg-type]
    return body, format


# --- plans -----------------------------------------------------------------------------------


def _dataset_path(name: str, version: VersionLike = None) -> str:
    if not isinstance(name, str) or not name:
        raise InputError("a dataset name is a non-empty string")
    path = f"/v2/datasets/{quote(name, safe='')}"
    if version is not None and version != "":
        path += f"/versions/{quote(str(version), safe='')}"
    return path


def plan_dataset_upload(name: str, body: UploadBody, format: str) -> RequestPlan:
    """``POST /v2/datasets/{name}``: never sent twice once it may have arrived (a second one
    would make one more version)."""
    return RequestPlan(
        "POST",
        _dataset_path(name) + "?" + urlencode({"format": format}),
        content=body,
        headers={"Content-Type": _wire.DATASET_MEDIA_TYPES[format]},
        idempotent=False,
    )


def plan_datasets() -> RequestPlan:
    return RequestPlan("GET", "/v2/datasets")


def plan_dataset(name: str, version: VersionLike = None, rows: int = 5) -> RequestPlan:
    return RequestPlan("GET", _dataset_path(name, version) + f"?rows={int(rows)}")


def plan_dataset_data(name: str, version: VersionLike, format: str) -> RequestPlan:
    return RequestPlan("GET", _dataset_path(name, version) + "/data?format=" + quote(format))


def plan_dataset_delete(name: str, version: VersionLike = None) -> RequestPlan:
    # Not retried once sent: a second DELETE of what the first removed would answer 404.
    return RequestPlan("DELETE", _dataset_path(name, version), idempotent=False)


# --- answers ---------------------------------------------------------------------------------


parse_dataset_info = parse_model(DatasetInfo)
parse_dataset_preview = parse_model(DatasetPreview)


def parse_dataset_list(answer: Answer) -> DatasetListing:
    listed = parse_model(_Listed)(answer)
    return DatasetListing(listed.datasets)


def decode_dataset(content: bytes | bytearray, format: str) -> Any:
    """Downloaded bytes as a pandas DataFrame (parquet, csv, jsonl) or a dict of numpy arrays
    (npz, npy)."""
    buffer = io.BytesIO(content)
    if format == "npz":
        with np.load(buffer, allow_pickle=False) as arrays:
            return {name: arrays[name] for name in arrays.files}
    if format == "npy":
        return {"array": np.load(buffer, allow_pickle=False)}
    try:
        import pandas as pd
    except ImportError:
        raise InputError(
            "a table downloads as a pandas DataFrame: pip install 'maas[pandas]', or ask for "
            "format='npz' (a dict of arrays) or give to= (a file)"
        ) from None
    if format == "parquet":
        import pyarrow.parquet as pq

        return pq.read_table(buffer).to_pandas()
    if format == "csv":
        return pd.read_csv(buffer)
    if format == "jsonl":
        return pd.read_json(buffer, lines=True)
    raise InputError(f"cannot read a dataset downloaded as {format!r}")


class DownloadFile:
    """A download written to a temporary file beside ``path``, renamed onto it once complete
    (a failed or retried attempt never leaves half a file at ``path``)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._temp = path.with_name(f".{path.name}.part")
        self._file: IO[bytes] = self._temp.open("wb")

    def write(self, chunk: bytes) -> None:
        self._file.write(chunk)

    def commit(self) -> Path:
        self._file.close()
        os.replace(self._temp, self.path)
        return self.path

    def discard(self) -> None:
        self._file.close()
        if self._temp.exists():
            self._temp.unlink()
