"""Wire models of the dataset routes (``/v2/datasets``): what a dataset is and holds.

A dataset is either a *table* (CSV, Parquet, JSON Lines: named columns, one value or one
fixed-shape array per row) or *arrays* (NPY, NPZ: named arrays sharing their first axis, the
rows). Either way its schema is a list of :class:`DatasetField`: a name, a V2 datatype
(``"FP32"``, ``"INT64"``, ``"BYTES"``, ...) and the shape of one row's value (``[]`` for a
scalar column, ``[8, 8]`` for an 8x8 image per row).

The schema travels as ``"schema"``; in Python it is ``info.schema_`` (pydantic's ``BaseModel``
already has a ``schema`` attribute).

>>> info = DatasetInfo.model_validate(answer_json)  # doctest: +SKIP
>>> [(f.name, f.datatype, f.shape) for f in info.schema_]  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "DATASET_FORMATS",
    "DATASET_MEDIA_TYPES",
    "DOWNLOAD_FORMATS",
    "DatasetField",
    "DatasetFormat",
    "DatasetInfo",
    "DatasetKind",
    "DatasetList",
    "DatasetPreview",
]

DatasetFormat = Literal["csv", "parquet", "jsonl", "npy", "npz"]
DatasetKind = Literal["table", "arrays"]
DATASET_FORMATS: tuple[str, ...] = ("csv", "parquet", "jsonl", "npy", "npz")
"""The formats an upload may be in."""
DATASET_MEDIA_TYPES: dict[str, str] = {
    "csv": "text/csv",
    "parquet": "application/vnd.apache.parquet",
    "jsonl": "application/x-ndjson",
    "npy": "application/x-npy",
    "npz": "application/x-npz",
}
"""The ``Content-Type`` of each format, as uploads send it and downloads answer it."""
DOWNLOAD_FORMATS: tuple[str, ...] = ("original", "parquet", "csv", "npz")
"""What ``GET /v2/datasets/{name}/data?format=`` may ask for (``original``: the uploaded bytes)."""


class _Message(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True, protected_namespaces=())


class DatasetField(_Message):
    """One column (or array) of a dataset: its V2 datatype and the shape of one row's value."""

    name: str
    datatype: str
    shape: list[int] = Field(default_factory=list)


class DatasetInfo(_Message):
    """One version of a dataset, as the catalog holds it.

    ``format``: what was uploaded; ``kind``: ``"table"`` or ``"arrays"``; ``size_bytes`` and
    ``sha256``: of the uploaded bytes; ``created``: ISO 8601 UTC; ``owner``: the name of the API
    key that uploaded it (None when the server checks no keys).
    """

    name: str
    version: int
    format: str
    kind: str = "table"
    schema_: list[DatasetField] = Field(default_factory=list, alias="schema")
    rows: int
    size_bytes: int
    sha256: str
    created: str
    owner: str | None = None

    def field(self, name: str) -> DatasetField:
        """The field called ``name`` (KeyError when there is none)."""
        for found in self.schema_:
            if found.name == name:
                return found
        raise KeyError(name)

    @property
    def columns(self) -> list[str]:
        """The names of the fields, in order."""
        return [f.name for f in self.schema_]


class DatasetPreview(DatasetInfo):
    """``GET /v2/datasets/{name}[/versions/{v}]``: a version's info, the versions of the
    dataset, and its first rows (``{column: value}``; arrays of more than 32 elements shown as
    a short description)."""

    versions: list[int] = Field(default_factory=list)
    preview: list[dict[str, Any]] = Field(default_factory=list)


class DatasetList(_Message):
    """``GET /v2/datasets``: the latest version of every dataset the caller may see."""

    datasets: list[DatasetInfo] = Field(default_factory=list)
