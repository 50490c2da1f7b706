"""The dataset store without HTTP: every format in and out, schema inference, the errors each bad
file gets, versions, open versions and delete, and what a crash leaves behind."""

from __future__ import annotations

import errno
import hashlib
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from maas_server.datasets import DatasetInUse, DatasetNotFound, DatasetStore
from maas_server.errors import BadRequestError, InsufficientStorageError


@pytest.fixture
def store(tmp_path: Path) -> Iterator[DatasetStore]:
    found = DatasetStore(tmp_path / "data")
    yield found
    found.close()


def _file(tmp_path: Path, name: str, data: bytes | str) -> Path:
    path = tmp_path / name
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def _parquet(table: pa.Table) -> bytes:
    out = io.BytesIO()
    pq.write_table(table, out)
    return out.getvalue()


def _npz(**arrays: np.ndarray[Any, Any]) -> bytes:
    out = io.BytesIO()
    np.savez(out, **arrays)  # type: ignore[arg-type]
    return out.getvalue()


def _npy(array: np.ndarray[Any, Any]) -> bytes:
    out = io.BytesIO()
    np.save(out, array)
    return out.getvalue()


def _schema(store: DatasetStore, name: str) -> list[tuple[str, str, list[int]]]:
    return [(f.name, f.datatype, f.shape) for f in store.get(name).schema_]


TABLE_SOURCES: dict[str, bytes | str] = {
    "csv": "x,y,label\n1.5,2,cat\n2.5,3,dog\n3.5,4,\n",
    "jsonl": '{"x": 1.5, "y": 2, "label": "cat"}\n{"x": 2.5, "y": 3, "label": "dog"}\n'
    '{"x": 3.5, "y": 4, "label": null}\n',
    "parquet": _parquet(
        pa.table({"x": [1.5, 2.5, 3.5], "y": [2, 3, 4], "label": ["cat", "dog", None]})
    ),
}


@pytest.mark.parametrize("format", sorted(TABLE_SOURCES))
def test_tables_in_every_format_have_one_schema_and_read_back(
    store: DatasetStore, tmp_path: Path, format: str
) -> None:
    path = _file(tmp_path, f"t.{format}", TABLE_SOURCES[format])
    info = store.create_from_file("t", path, format, owner="ci")
    assert (info.kind, info.rows, info.owner, info.version) == ("table", 3, "ci", 1)
    assert info.size_bytes == path.stat().st_size
    assert info.schema_ == store.get("t").schema_
    # CSV leaves an empty cell of a text column missing (null), like the others
    assert _schema(store, "t") == [("x", "FP64", []), ("y", "INT64", []), ("label", "BYTES", [])]
    with store.open("t") as dataset:
        rows = dataset.read(1, 3)
        assert rows["x"].tolist() == [2.5, 3.5]
        assert rows["y"].dtype == np.int64
        assert rows["label"].dtype == object
        assert rows["label"][0] == "dog"
        assert rows["label"][1] in (None, "")
        assert dataset.read_table(["x"]).column("x").to_pylist() == [1.5, 2.5, 3.5]
    original = store.download_path(info, "original").read_bytes()
    assert original == path.read_bytes()


def test_arrays_keep_their_per_row_shape(store: DatasetStore, tmp_path: Path) -> None:
    images = np.arange(5 * 8 * 8, dtype=np.uint8).reshape(5, 8, 8)
    labels = np.arange(5, dtype=np.int32)
    info = store.create_from_file(
        "digits", _file(tmp_path, "d.npz", _npz(images=images, labels=labels)), "npz", owner=None
    )
    assert info.kind == "arrays"
    assert _schema(store, "digits") == [("images", "UINT8", [8, 8]), ("labels", "INT32", [])]
    with store.open("digits") as dataset:
        part = dataset.read(2, 4, columns=["images"])
        assert list(part) == ["images"]
        np.testing.assert_array_equal(part["images"], images[2:4])
        table = dataset.read_table()
        assert table.num_rows == 5
    swapped = np.arange(3, dtype=">f4")
    store.create_from_file("be", _file(tmp_path, "be.npy", _npy(swapped)), "npy", owner=None)
    with store.open("be") as dataset:
        read = dataset.read(0, 3)["array"]
    assert read.dtype == np.dtype("float32") and read.dtype.isnative
    assert read.tolist() == [0.0, 1.0, 2.0]
    single = store.create_from_file(
        "x", _file(tmp_path, "x.npy", _npy(np.ones((4, 3), np.float32))), "npy", owner=None
    )
    assert [(f.name, f.datatype, f.shape) for f in single.schema_] == [("array", "FP32", [3])]


def test_list_columns_become_fixed_shape_arrays(store: DatasetStore, tmp_path: Path) -> None:
    text = '{"v": [[1, 2], [3, 4]], "n": 1}\n{"v": [[5, 6], [7, 8]], "n": 2}\n'
    store.create_from_file("nested", _file(tmp_path, "n.jsonl", text), "jsonl", owner=None)
    assert _schema(store, "nested") == [("v", "INT64", [2, 2]), ("n", "INT64", [])]
    with store.open("nested") as dataset:
        np.testing.assert_array_equal(dataset.read(0, 2)["v"], [[[1, 2], [3, 4]], [[5, 6], [7, 8]]])


def test_integers_with_missing_values_are_fp64_with_nan(
    store: DatasetStore, tmp_path: Path
) -> None:
    store.create_from_file(
        "gaps", _file(tmp_path, "g.csv", "a,b\n1,x\n,y\n3,z\n"), "csv", owner=None
    )
    assert _schema(store, "gaps")[0] == ("a", "FP64", [])
    with store.open("gaps") as dataset:
        a = dataset.read(0, 3)["a"]
    assert a[0] == 1.0 and np.isnan(a[1])


def test_dates_stay_the_text_they_were(store: DatasetStore, tmp_path: Path) -> None:
    text = "when,v\n2024-01-01T08:30:00,1\n2024-01-02,2\n"
    store.create_from_file("dates", _file(tmp_path, "d.csv", text), "csv", owner=None)
    assert _schema(store, "dates") == [("when", "BYTES", []), ("v", "INT64", [])]
    with store.open("dates") as dataset:
        assert dataset.read(0, 2)["when"].tolist() == ["2024-01-01T08:30:00", "2024-01-02"]


BAD_FILES = [
    ("csv", "", "empty"),
    ("csv", "a,b\n", "no rows"),
    ("csv", "a,b\n1,2\n3,4,5\n", "a CSV row does not match the header: Expected 2 columns, got 3"),
    ("csv", "a,b\n1,2\n3\n", "Expected 2 columns, got 1"),
    ("csv", "a,a\n1,2\n", "two columns are named 'a'"),
    ("csv", "a,b\n1,\n2,\n", "column 'b' has no value in any row"),
    ("jsonl", '{"a": 1}\n{"a": "x"}\n', "mixed types in column 'a': line 2 has a string"),
    ("jsonl", '{"a": [1, 2]}\n{"a": [1, 2, 3]}\n', "ragged rows: column 'a'"),
    ("jsonl", '{"a": {"b": 1}}\n', "nested objects"),
    ("jsonl", '{"a": 1}\nnot json\n', "JSON Lines file cannot be read"),
    ("parquet", b"PAR1 this is not a parquet file at all", "not a valid Parquet file"),
    ("npz", _npz(a=np.ones(3), b=np.ones(4)), "ragged arrays: 'a' has 3 rows"),
    ("npz", _npz(a=np.float64(1.0)), "is a scalar"),
    ("npz", b"PK\x03\x04 broken zip", "not a valid NPZ file"),
    ("npy", _npy(np.array([{"a": 1}], dtype=object)), "Python objects (pickled)"),
    ("npy", _npy(np.zeros((0, 3))), "no rows"),
    ("npy", _npy(np.ones(3, dtype=np.complex64)), "has no V2 datatype"),
]


@pytest.mark.parametrize(
    ("format", "data", "message"), BAD_FILES, ids=[f"{f}-{m[:24]}" for f, _, m in BAD_FILES]
)
def test_bad_files_are_refused_naming_the_problem_and_leave_nothing(
    store: DatasetStore, tmp_path: Path, format: str, data: bytes | str, message: str
) -> None:
    path = _file(tmp_path, f"bad.{format}", data)
    with pytest.raises(BadRequestError) as caught:
        store.create_from_file("bad", path, format, owner=None)
    assert message in caught.value.message
    assert store.versions("bad") == []
    assert sorted(p.name for p in store.files.iterdir()) == [".staging"]
    assert list((store.files / ".staging").iterdir()) == []


def test_uploading_a_name_again_makes_the_next_version_never_reusing_one(
    store: DatasetStore,
) -> None:
    for _ in range(3):
        store.create_from_columns("runs", {"x": np.arange(2)}, owner=None)
    assert store.versions("runs") == [1, 2, 3]
    assert store.delete("runs", 3) == [3]
    assert store.create_from_columns("runs", {"x": np.arange(2)}, owner=None).version == 4
    assert store.get("runs", 1).version == 1
    assert store.get("runs").version == 4
    assert store.delete("runs") == [1, 2, 4]
    with pytest.raises(DatasetNotFound, match="no dataset named 'runs'"):
        store.get("runs")
    assert store.create_from_columns("runs", {"x": np.arange(2)}, owner=None).version == 5
    with pytest.raises(DatasetNotFound, match="has no version 2"):
        store.get("runs", 2)
    with pytest.raises(KeyError):  # what callers outside HTTP may catch
        store.get("nothing")


def test_an_open_version_cannot_be_deleted_until_closed(store: DatasetStore) -> None:
    store.create_from_columns("inputs", {"x": np.arange(4)}, owner=None)
    store.create_from_columns("inputs", {"x": np.arange(4)}, owner=None)
    dataset = store.open("inputs", 1, user="job 7")
    with pytest.raises(DatasetInUse, match="version 1 is in use by job 7") as caught:
        store.delete("inputs")
    assert caught.value.status_code == 409
    assert store.versions("inputs") == [1, 2]
    assert store.delete("inputs", 2) == [2]  # another version is free
    assert dataset.read(0, 4)["x"].tolist() == [0, 1, 2, 3]
    dataset.close()
    assert store.delete("inputs") == [1]


def test_list_shows_the_latest_version_of_each_and_filters_by_owner(store: DatasetStore) -> None:
    store.create_from_columns("a", {"x": np.arange(2)}, owner="ann")
    store.create_from_columns("a", {"x": np.arange(3)}, owner="ann")
    store.create_from_columns("b", {"x": np.arange(2)}, owner="bob")
    assert [(i.name, i.version) for i in store.list_datasets()] == [("a", 2), ("b", 1)]
    assert [i.name for i in store.list_datasets("bob", everyone=False)] == ["b"]


def test_conversions_round_trip(store: DatasetStore, tmp_path: Path) -> None:
    text = "x,name\n1.5,a\n2.5,b\n"
    info = store.create_from_file("t", _file(tmp_path, "t.csv", text), "csv", owner=None)
    parquet = pq.read_table(store.download_path(info, "parquet"))
    assert parquet.to_pydict() == {"x": [1.5, 2.5], "name": ["a", "b"]}
    with np.load(store.download_path(info, "npz")) as arrays:
        assert arrays["x"].tolist() == [1.5, 2.5] and arrays["name"].tolist() == ["a", "b"]
    csv = pa_csv.read_csv(store.download_path(info, "csv"))
    assert csv.to_pydict() == {"x": [1.5, 2.5], "name": ["a", "b"]}
    arrays_info = store.create_from_columns(
        "img", {"img": np.ones((2, 2, 2), np.float32)}, owner=None, format="npz"
    )
    with pytest.raises(BadRequestError, match="holds an array per row"):
        store.download_path(arrays_info, "csv")
    table = pq.read_table(store.download_path(arrays_info, "parquet"))
    assert table.column("img").to_pylist() == [[[1.0, 1.0], [1.0, 1.0]]] * 2


def test_a_full_disk_keeps_nothing(tmp_path: Path) -> None:
    def full(out: IO[bytes], data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    store = DatasetStore(tmp_path / "data", write=full)
    with pytest.raises(InsufficientStorageError, match="disk is full") as caught:
        store.create_from_file("t", _file(tmp_path, "t.csv", "a\n1\n"), "csv", owner=None)
    assert caught.value.status_code == 507
    assert store.versions("t") == []
    assert list((store.files / ".staging").iterdir()) == []
    store.close()


def test_reopening_removes_what_a_crash_left_and_keeps_the_catalog(tmp_path: Path) -> None:
    store = DatasetStore(tmp_path / "data")
    info = store.create_from_columns("kept", {"x": np.arange(3)}, owner="ci")
    store.close()
    files = tmp_path / "data" / "datasets"
    (files / ".staging" / "half").mkdir(parents=True)
    (files / ".staging" / "half" / "upload.bin").write_bytes(b"partial")
    (files / "kept" / "2").mkdir()  # renamed into place, killed before its catalog row
    (files / "orphan" / "1").mkdir(parents=True)
    (files / "kept" / "1" / ".download-half.csv").write_bytes(b"x,")  # a conversion cut short
    store = DatasetStore(tmp_path / "data")
    assert store.get("kept") == info
    assert not list((files / "kept" / "1").glob(".download-*"))
    assert (files / "kept" / "1" / "original.parquet").is_file()
    assert sorted(p.name for p in files.iterdir()) == ["kept"]
    assert [p.name for p in (files / "kept").iterdir()] == ["1"]
    assert store.create_from_columns("kept", {"x": np.arange(3)}, owner=None).version == 2
    store.close()


def test_the_catalog_schema_is_json_of_the_wire_fields(store: DatasetStore) -> None:
    info = store.create_from_columns("s", {"v": np.zeros((2, 3), np.float32)}, owner=None)
    stored = store.download_path(info, "original").read_bytes()
    assert hashlib.sha256(stored).hexdigest() == info.sha256
    assert len(stored) == info.size_bytes
    (schema,) = store._db.execute("SELECT schema FROM datasets").fetchone()
    assert json.loads(schema) == [{"name": "v", "datatype": "FP32", "shape": [3]}]
