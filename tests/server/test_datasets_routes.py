"""The dataset routes in-process: uploads in every format, show, download and convert, versions,
bad input as a clear 4xx, 413, 507 with nothing left, 409 on a version in use, owners and
scopes."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from maas_server import Settings
from maas_server.datasets import DatasetStore
from maas_server.keys_file import add_key
from maas_wire.datasets import DatasetInfo, DatasetList, DatasetPreview
from tests.server.apps import asgi_app, bearer

CSV = b"x,y,label\n1.5,2,cat\n2.5,3,dog\n3.5,4,bird\n"


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


def _settings(repository: Path, tmp_path: Path, **kwargs: Any) -> Settings:
    return Settings(repository=repository, data_dir=tmp_path / "data", **kwargs)


def _left(tmp_path: Path) -> list[str]:
    """What is on disk under the datasets folder, staging included."""
    root = tmp_path / "data" / "datasets"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.is_dir() else []


UPLOADS = [
    # (how it is sent, body, kind, schema)
    (
        {"params": {"format": "csv"}},
        CSV,
        "table",
        [("x", "FP64"), ("y", "INT64"), ("label", "BYTES")],
    ),
    (
        {"headers": {"Content-Type": "text/csv"}},
        CSV,
        "table",
        [("x", "FP64"), ("y", "INT64"), ("label", "BYTES")],
    ),
    ({}, CSV, "table", [("x", "FP64"), ("y", "INT64"), ("label", "BYTES")]),
    (
        {},
        b'{"a": [1, 2], "b": "u"}\n{"a": [3, 4], "b": "v"}\n',
        "table",
        [("a", "INT64"), ("b", "BYTES")],
    ),
    (
        {"headers": {"Content-Type": "application/vnd.apache.parquet"}},
        _parquet(pa.table({"f": pa.array([1.0, 2.0], pa.float32())})),
        "table",
        [("f", "FP32")],
    ),
    ({}, _npy(np.ones((3, 4), np.float32)), "arrays", [("array", "FP32")]),
    (
        {},
        _npz(img=np.zeros((2, 8, 8), np.uint8), y=np.arange(2)),
        "arrays",
        [("img", "UINT8"), ("y", "INT64")],
    ),
]


@pytest.mark.parametrize(
    ("how", "body", "kind", "schema"),
    UPLOADS,
    ids=["format", "content-type", "csv-sniffed", "jsonl", "parquet", "npy", "npz"],
)
async def test_upload_each_format_then_show_list_and_download_the_original(
    repository: Path,
    tmp_path: Path,
    how: dict[str, Any],
    body: bytes,
    kind: str,
    schema: list[tuple[str, str]],
) -> None:
    async with asgi_app(_settings(repository, tmp_path), models=()) as (_, client):
        answer = await client.post("/v2/datasets/things", content=body, **how)
        assert answer.status_code == 201, answer.text
        info = DatasetInfo.model_validate(answer.json())
        assert (info.name, info.version, info.kind, info.owner) == ("things", 1, kind, None)
        assert [(f.name, f.datatype) for f in info.schema_] == schema
        assert info.sha256 == hashlib.sha256(body).hexdigest()
        assert info.size_bytes == len(body)
        shown = DatasetPreview.model_validate((await client.get("/v2/datasets/things")).json())
        assert shown.versions == [1]
        assert len(shown.preview) == min(5, info.rows)
        assert list(shown.preview[0]) == [name for name, _ in schema]
        listed = DatasetList.model_validate((await client.get("/v2/datasets")).json())
        assert [d.name for d in listed.datasets] == ["things"]
        original = await client.get("/v2/datasets/things/data")
        assert original.status_code == 200
        assert original.content == body
        assert original.headers["x-content-sha256"] == info.sha256
        assert "attachment" in original.headers["content-disposition"]
    assert "things/1" in _left(tmp_path)


async def test_downloads_convert_to_parquet_csv_and_npz(repository: Path, tmp_path: Path) -> None:
    async with asgi_app(_settings(repository, tmp_path), models=()) as (_, client):
        assert (await client.post("/v2/datasets/t", content=CSV)).status_code == 201
        expected = {"x": [1.5, 2.5, 3.5], "y": [2, 3, 4], "label": ["cat", "dog", "bird"]}
        parquet = await client.get("/v2/datasets/t/data", params={"format": "parquet"})
        assert pq.read_table(io.BytesIO(parquet.content)).to_pydict() == expected
        csv = await client.get("/v2/datasets/t/data", params={"format": "csv"})
        assert csv.headers["content-type"].startswith("text/csv")
        assert pa_csv.read_csv(io.BytesIO(csv.content)).to_pydict() == expected
        npz = await client.get("/v2/datasets/t/versions/1/data", params={"format": "npz"})
        with np.load(io.BytesIO(npz.content)) as arrays:
            assert {k: arrays[k].tolist() for k in arrays.files} == expected
        images = _npz(img=np.arange(8, dtype=np.float32).reshape(2, 2, 2))
        assert (await client.post("/v2/datasets/img", content=images)).status_code == 201
        refused = await client.get("/v2/datasets/img/data", params={"format": "csv"})
        assert refused.status_code == 400
        assert "holds an array per row" in refused.json()["error"]
        bad = await client.get("/v2/datasets/t/data", params={"format": "xlsx"})
        assert bad.status_code == 400 and "'xlsx'" in bad.json()["error"]


async def test_head_of_a_download_says_its_size_without_a_body(
    repository: Path, tmp_path: Path
) -> None:
    async with asgi_app(_settings(repository, tmp_path), models=()) as (_, client):
        assert (await client.post("/v2/datasets/t", content=CSV)).status_code == 201
        head = await client.head("/v2/datasets/t/data")
        assert head.status_code == 200
        assert head.headers["content-length"] == str(len(CSV))
        assert head.content == b""


async def _stalled(first: bytes, never: asyncio.Event) -> AsyncIterator[bytes]:
    yield first
    await never.wait()  # the rest never comes: the server's deadline ends the request
    yield b""


async def test_an_upload_cut_by_the_request_deadline_keeps_nothing(
    repository: Path, tmp_path: Path
) -> None:
    settings = _settings(repository, tmp_path, request_timeout_s=0.5)
    async with asgi_app(settings, models=()) as (_, client):
        never = asyncio.Event()
        answer = await client.post("/v2/datasets/slow", content=_stalled(CSV, never))
        assert answer.status_code == 504
        assert (await client.get("/v2/datasets/slow")).status_code == 404
    assert _left(tmp_path) == [".staging"]


async def test_versions_show_download_and_delete(repository: Path, tmp_path: Path) -> None:
    async with asgi_app(_settings(repository, tmp_path), models=()) as (_, client):
        for rows in (b"a\n1\n", b"a\n1\n2\n", b"a\n1\n2\n3\n"):
            assert (await client.post("/v2/datasets/v", content=rows)).status_code == 201
        latest = (await client.get("/v2/datasets/v")).json()
        assert (latest["version"], latest["rows"], latest["versions"]) == (3, 3, [1, 2, 3])
        first = (await client.get("/v2/datasets/v/versions/1")).json()
        assert (first["version"], first["rows"]) == (1, 1)
        old = await client.get("/v2/datasets/v/data", params={"version": "2"})
        assert old.content == b"a\n1\n2\n" and old.headers["x-dataset-version"] == "2"
        gone = await client.delete("/v2/datasets/v/versions/3")
        assert gone.json() == {"name": "v", "deleted": [3]}
        assert (await client.get("/v2/datasets/v")).json()["version"] == 2
        assert (await client.post("/v2/datasets/v", content=b"a\n9\n")).json()["version"] == 4
        missing = await client.get("/v2/datasets/v/versions/3")
        assert missing.status_code == 404
        assert "has no version 3" in missing.json()["error"]
        assert (await client.delete("/v2/datasets/v")).json()["deleted"] == [1, 2, 4]
        assert (await client.get("/v2/datasets/v")).status_code == 404
        assert (await client.delete("/v2/datasets/v")).status_code == 404
        bad = await client.get("/v2/datasets/v/versions/x")
        assert bad.status_code == 400 and "versions are integers" in bad.json()["error"]
    assert _left(tmp_path) == [".staging"]


BAD_UPLOADS = [
    ({}, b"", 400, "the upload is empty"),
    ({}, b"a,b\n1,2\n3,4,5\n", 400, "a CSV row does not match the header"),
    ({}, b'{"a": 1}\n{"a": "x"}\n', 400, "mixed types in column 'a'"),
    ({}, b'{"a": [1]}\n{"a": [1, 2]}\n', 400, "ragged rows: column 'a'"),
    ({"params": {"format": "parquet"}}, b"PAR1 not really", 400, "not a valid Parquet file"),
    ({}, _npz(a=np.ones(2), b=np.ones(3)), 400, "ragged arrays"),
    ({"params": {"format": "xls"}}, CSV, 400, "unknown dataset format 'xls'"),
    ({"headers": {"Content-Type": "application/json"}}, CSV, 415, "is not a dataset format"),
    ({"headers": {"Content-Encoding": "gzip"}}, CSV, 415, "without Content-Encoding"),
]


@pytest.mark.parametrize(
    ("how", "body", "status", "message"), BAD_UPLOADS, ids=[m[:20] for *_, m in BAD_UPLOADS]
)
async def test_bad_uploads_get_a_clear_4xx_and_leave_nothing(
    repository: Path, tmp_path: Path, how: dict[str, Any], body: bytes, status: int, message: str
) -> None:
    async with asgi_app(_settings(repository, tmp_path), models=()) as (_, client):
        answer = await client.post("/v2/datasets/bad", content=body, **how)
        assert answer.status_code == status, answer.text
        assert message in answer.json()["error"]
        assert (await client.get("/v2/datasets")).json() == {"datasets": []}
        invalid = await client.post("/v2/datasets/.hidden", content=CSV)
        assert invalid.status_code == 400 and "invalid dataset name" in invalid.json()["error"]
    assert _left(tmp_path) in ([], [".staging"])


async def _slowly(data: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def test_oversized_uploads_get_413_with_or_without_a_content_length(
    repository: Path, tmp_path: Path
) -> None:
    body = b"a\n" + b"1\n" * 200_000  # 400 KB
    settings = _settings(repository, tmp_path, max_dataset_bytes=100_000)
    async with asgi_app(settings, models=()) as (_, client):
        declared = await client.post("/v2/datasets/big", content=body)
        assert declared.status_code == 413
        assert "limit of 100000 bytes" in declared.json()["error"]
        streamed = await client.post("/v2/datasets/big", content=_slowly(body))
        assert streamed.status_code == 413
        assert "max_dataset_bytes" in streamed.json()["error"]
        fits = await client.post("/v2/datasets/big", content=body[:90_000])
        assert fits.status_code == 201
    assert _left(tmp_path)[:2] == [".staging", "big"]
    assert not list((tmp_path / "data" / "datasets" / ".staging").iterdir())


async def test_uploads_stream_to_disk_within_a_small_body_budget(
    repository: Path, tmp_path: Path
) -> None:
    body = b"a,b\n" + b"1.5,2\n" * 1_000_000  # 6 MB, three times the budget
    settings = _settings(repository, tmp_path, max_inflight_body_bytes=2 * 1024 * 1024)
    async with asgi_app(settings, models=()) as (app, client):
        answer = await client.post("/v2/datasets/big", content=_slowly(body))
        assert answer.status_code == 201, answer.text
        assert answer.json()["rows"] == 1_000_000
        assert app.state.body_budget.held == 0


async def test_a_full_disk_is_507_and_keeps_nothing(repository: Path, tmp_path: Path) -> None:
    written: list[int] = []

    def full_after_one_write(out: IO[bytes], data: bytes) -> None:
        if written:
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(len(data))
        out.write(data)

    body = b"a\n" + b"1\n" * 2_000_000  # 4 MB: several writes
    async with asgi_app(_settings(repository, tmp_path), models=()) as (app, client):
        app.state.datasets = DatasetStore(tmp_path / "data", write=full_after_one_write)
        answer = await client.post("/v2/datasets/full", content=_slowly(body, 1024 * 1024))
        assert answer.status_code == 507
        assert answer.json()["error"] == "the server's disk is full: nothing of the upload was kept"
        assert written  # it failed part way, not before it began
        assert (await client.get("/v2/datasets/full")).status_code == 404
        assert (await client.get("/v2/datasets")).json() == {"datasets": []}
    assert _left(tmp_path) == [".staging"]


async def test_delete_is_409_while_a_job_reads_the_version(
    repository: Path, tmp_path: Path
) -> None:
    async with asgi_app(_settings(repository, tmp_path), models=()) as (app, client):
        assert (await client.post("/v2/datasets/in", content=CSV)).status_code == 201
        store: DatasetStore = app.state.datasets
        reading = store.open("in", user="job 42")
        refused = await client.delete("/v2/datasets/in")
        assert refused.status_code == 409
        assert refused.json()["error"].startswith("dataset 'in' version 1 is in use by job 42")
        assert (await client.delete("/v2/datasets/in/versions/1")).status_code == 409
        assert reading.read(0, 1)["label"].tolist() == ["cat"]
        reading.close()
        assert (await client.delete("/v2/datasets/in")).status_code == 200


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Any]:
    path = tmp_path / "keys.json"
    made: dict[str, Any] = {"path": path}
    for name, scopes in (
        ("ann", ["read", "jobs"]),
        ("bob", ["read", "jobs"]),
        ("reader", ["read"]),
        ("inferer", ["infer"]),
        ("ops", ["read", "admin"]),
    ):
        made[name], _ = add_key(path, name, scopes)
    return made


async def test_datasets_belong_to_the_key_that_uploaded_them(
    repository: Path, tmp_path: Path, keys: dict[str, Any]
) -> None:
    settings = _settings(repository, tmp_path, api_keys_file=keys["path"])
    async with asgi_app(settings, models=()) as (_, client):
        ann, bob, ops = bearer(keys["ann"]), bearer(keys["bob"]), bearer(keys["ops"])
        made = await client.post("/v2/datasets/ann-data", content=CSV, headers=ann)
        assert made.status_code == 201 and made.json()["owner"] == "ann"
        assert (await client.post("/v2/datasets/bob-data", content=CSV, headers=bob)).is_success
        listed = (await client.get("/v2/datasets", headers=ann)).json()["datasets"]
        assert [d["name"] for d in listed] == ["ann-data"]
        for method, path in (
            ("GET", "/v2/datasets/bob-data"),
            ("GET", "/v2/datasets/bob-data/data"),
            ("DELETE", "/v2/datasets/bob-data"),
            ("DELETE", "/v2/datasets/bob-data/versions/1"),
        ):
            hidden = await client.request(method, path, headers=ann)
            assert hidden.status_code == 404, (method, path)
            assert hidden.json()["error"] == "no dataset named 'bob-data'"
        everything = (await client.get("/v2/datasets", headers=ops)).json()["datasets"]
        assert [d["name"] for d in everything] == ["ann-data", "bob-data"]
        assert (await client.get("/v2/datasets/bob-data", headers=ops)).status_code == 200
        assert (await client.delete("/v2/datasets/bob-data", headers=bob)).status_code == 200


async def test_reading_needs_read_and_writing_needs_jobs(
    repository: Path, tmp_path: Path, keys: dict[str, Any]
) -> None:
    settings = _settings(repository, tmp_path, api_keys_file=keys["path"], admin_api_key="adm")
    async with asgi_app(settings, models=()) as (_, client):
        reader, inferer = bearer(keys["reader"]), bearer(keys["inferer"])
        refused = await client.post("/v2/datasets/x", content=CSV, headers=reader)
        assert refused.status_code == 403
        assert "lacks the 'jobs' scope" in refused.json()["error"]
        assert (await client.get("/v2/datasets", headers=reader)).status_code == 200
        blind = await client.get("/v2/datasets", headers=inferer)
        assert blind.status_code == 403 and "'read' scope" in blind.json()["error"]
        assert (await client.get("/v2/datasets")).status_code == 401
        admin = bearer("adm")
        assert (await client.post("/v2/datasets/x", content=CSV, headers=admin)).status_code == 201
        assert (await client.delete("/v2/datasets/x", headers=reader)).status_code == 403
        assert (await client.delete("/v2/datasets/x", headers=admin)).status_code == 200


async def test_without_a_data_dir_the_folder_is_made_under_the_repository_on_first_use(
    tmp_path: Path, repository: Path
) -> None:
    import shutil

    copy = tmp_path / "repo"
    shutil.copytree(repository, copy)
    async with asgi_app(Settings(repository=copy), models=()) as (_, client):
        assert not (copy / ".maas" / "data").exists()
        assert (await client.post("/v2/datasets/d", content=CSV)).status_code == 201
    assert (copy / ".maas" / "data" / "datasets.sqlite3").is_file()
