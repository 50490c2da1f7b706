"""``client.datasets`` against a real server (in-process, and uvicorn for streamed downloads):
uploads from every kind of source, downloads as a DataFrame, as arrays and as files, list, get,
delete, errors and notebook display; the async twin does the same."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from maas_client import AsyncClient, BadRequestError, Client, InputError, NotFoundError
from maas_client.types import DatasetInfo, DatasetPreview
from maas_server import Settings
from tests.conftest import RunningServer, start_server


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    repo = tmp_path / "models"
    repo.mkdir()
    return Settings(repository=repo, model_control="explicit", data_dir=tmp_path / "data")


@pytest.fixture
def client(settings: Settings) -> Iterator[Client]:
    with Client.local(settings=settings, max_retries=0) as found:
        yield found


@pytest.fixture
def running(settings: Settings) -> Iterator[RunningServer]:
    server = start_server(settings)
    yield server
    server.stop()


FRAME = pd.DataFrame({"x": [1.5, 2.5, 3.5], "n": [1, 2, 3], "label": ["a", "b", "c"]})


def test_a_dataframe_goes_up_as_parquet_and_comes_back_equal(client: Client) -> None:
    info = client.datasets.upload("frame", FRAME, progress=False)
    assert isinstance(info, DatasetInfo)
    assert (info.name, info.version, info.format, info.rows) == ("frame", 1, "parquet", 3)
    assert [(f.name, f.datatype) for f in info.schema_] == [
        ("x", "FP64"),
        ("n", "INT64"),
        ("label", "BYTES"),
    ]
    back = client.datasets.download("frame")
    pd.testing.assert_frame_equal(back, FRAME)
    as_arrays = client.datasets.download("frame", format="npz")
    assert as_arrays["x"].tolist() == [1.5, 2.5, 3.5]
    assert as_arrays["label"].tolist() == ["a", "b", "c"]


def test_arrays_go_up_as_npz_and_come_back_as_arrays(client: Client) -> None:
    arrays = {
        "images": np.arange(4 * 8 * 8, dtype=np.uint8).reshape(4, 8, 8),
        "labels": np.array([0, 1, 0, 1], dtype=np.int64),
        "names": np.array(["a", "b", "c", "d"], dtype=object),
    }
    info = client.datasets.upload("digits", arrays, progress=False)
    assert info.kind == "arrays"
    assert [(f.name, f.datatype, f.shape) for f in info.schema_] == [
        ("images", "UINT8", [8, 8]),
        ("labels", "INT64", []),
        ("names", "BYTES", []),
    ]
    back = client.datasets.download("digits")
    assert sorted(back) == ["images", "labels", "names"]
    np.testing.assert_array_equal(back["images"], arrays["images"])
    np.testing.assert_array_equal(back["labels"], arrays["labels"])
    assert back["names"].tolist() == ["a", "b", "c", "d"]
    table = client.datasets.download("digits", format="parquet")
    assert list(table.columns) == ["images", "labels", "names"]
    with pytest.raises(InputError, match="holds Python objects"):
        client.datasets.upload("bad", {"x": np.array([{"a": 1}], dtype=object)}, progress=False)


def test_a_pyarrow_table_goes_up_as_parquet(client: Client) -> None:
    table = pa.table({"v": pa.array([[1.0, 2.0], [3.0, 4.0]], pa.list_(pa.float32(), 2))})
    info = client.datasets.upload("t", table, progress=False)
    assert [(f.name, f.datatype, f.shape) for f in info.schema_] == [("v", "FP32", [2])]
    arrays = client.datasets.download("t", format="npz")
    np.testing.assert_array_equal(arrays["v"], [[1.0, 2.0], [3.0, 4.0]])


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".jsonl", ".npy", ".npz"])
def test_files_go_up_with_their_format_from_the_suffix(
    client: Client, tmp_path: Path, suffix: str
) -> None:
    path = tmp_path / f"data{suffix}"
    if suffix == ".csv":
        FRAME.to_csv(path, index=False)
    elif suffix == ".parquet":
        FRAME.to_parquet(path)
    elif suffix == ".jsonl":
        FRAME.to_json(path, orient="records", lines=True)
    elif suffix == ".npy":
        np.save(path, np.ones((3, 2), np.float32))
    else:
        np.savez(path, x=np.arange(3))
    info = client.datasets.upload("file", path, progress=False)
    assert info.format == suffix[1:]
    assert info.rows == 3
    original = client.datasets.download("file", to=tmp_path / "back.bin")
    assert original == tmp_path / "back.bin"
    assert original.read_bytes() == path.read_bytes()
    back = client.datasets.download("file")
    if suffix in (".npy", ".npz"):
        assert isinstance(back, dict)
    else:
        pd.testing.assert_frame_equal(back, FRAME)


def test_unknown_suffixes_and_sources_are_refused_before_sending(
    client: Client, tmp_path: Path
) -> None:
    odd = tmp_path / "data.xlsx"
    odd.write_bytes(b"x")
    with pytest.raises(InputError, match=r"cannot tell the format of 'data\.xlsx'"):
        client.datasets.upload("x", odd)
    with pytest.raises(InputError, match="no dataset file at"):
        client.datasets.upload("x", tmp_path / "missing.csv")
    with pytest.raises(InputError, match="not int"):
        client.datasets.upload("x", 3)
    assert client.datasets.upload("raw", b"a\n1\n", format="csv", progress=False).rows == 1


def test_the_servers_refusals_name_the_problem(client: Client, tmp_path: Path) -> None:
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("a,b\n1,2\n3,4,5\n")
    with pytest.raises(BadRequestError, match="a CSV row does not match the header"):
        client.datasets.upload("ragged", ragged, progress=False)
    with pytest.raises(NotFoundError, match="no dataset named 'ragged'"):
        client.datasets.get("ragged")


def test_list_get_versions_and_delete(client: Client) -> None:
    client.datasets.upload("a", FRAME, progress=False)
    client.datasets.upload("a", FRAME.head(2), progress=False)
    client.datasets.upload("b", {"x": np.arange(5)}, progress=False)
    listed = client.datasets.list()
    assert [(d.name, d.version) for d in listed] == [("a", 2), ("b", 1)]
    assert "a/v2 2 rows" in repr(listed)
    html = listed._repr_html_()
    assert "2 datasets" in html and "x INT64" in html
    shown = client.datasets.get("a", rows=1)
    assert isinstance(shown, DatasetPreview)
    assert (shown.version, shown.versions) == (2, [1, 2])
    assert shown.preview == [{"x": 1.5, "n": 1, "label": "a"}]
    first = client.datasets.get("a", 1)
    assert first.rows == 3
    assert "first 3 rows" in first._repr_html_()
    assert "DatasetPreview(name='a', version=1" in repr(first)
    assert len(client.datasets.download("a", version=1)) == 3
    assert client.datasets.delete("a", 1) == [1]
    assert client.datasets.delete("a") == [2]
    assert [d.name for d in client.datasets.list()] == ["b"]


def test_downloads_stream_into_files_and_folders(running: RunningServer, tmp_path: Path) -> None:
    with Client(running.url, max_retries=0) as client:
        client.datasets.upload("f", FRAME, progress=False)
        path = client.datasets.download("f", format="parquet", to=tmp_path / "f.parquet")
        pd.testing.assert_frame_equal(pq.read_table(path).to_pandas(), FRAME)
        folder = tmp_path / "out"
        folder.mkdir()
        csv = client.datasets.download("f", format="csv", to=folder)
        assert csv == folder / "f.csv"
        pd.testing.assert_frame_equal(pd.read_csv(csv), FRAME)
        original = client.datasets.download("f", to=folder)
        assert original == folder / "f-v1.parquet"
        with np.load(client.datasets.download("f", format="npz", to=folder)) as arrays:
            assert arrays["n"].tolist() == [1, 2, 3]
        with pytest.raises(NotFoundError):
            client.datasets.download("nothing", to=folder)
        assert sorted(p.name for p in folder.iterdir()) == ["f-v1.parquet", "f.csv", "f.npz"]


async def test_the_async_twin(settings: Settings, tmp_path: Path) -> None:
    async with AsyncClient.local(settings=settings, max_retries=0) as client:
        info = await client.datasets.upload("frame", FRAME, progress=False)
        assert info.rows == 3
        pd.testing.assert_frame_equal(await client.datasets.download("frame"), FRAME)
        assert [d.name for d in await client.datasets.list()] == ["frame"]
        assert (await client.datasets.get("frame")).versions == [1]
        saved = await client.datasets.download("frame", format="csv", to=tmp_path / "f.csv")
        assert pd.read_csv(saved).equals(FRAME)
        assert await client.datasets.delete("frame") == [1]
