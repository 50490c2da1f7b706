"""pandas: DataFrames as inputs, results as DataFrames, and the message when pandas is missing."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest

from maas_client import Client, InputError
from maas_client._dataframes import is_dataframe, outputs_to_dataframe
from tests.client.test_client import mlp_reference


@pytest.fixture
def client(server_url: str) -> Iterator[Client]:
    with Client(server_url) as client:
        yield client


def features(n: int) -> pd.DataFrame:
    values = np.random.default_rng(5).standard_normal((n, 64)).astype(np.float32)
    frame = pd.DataFrame(values, columns=[f"f{i}" for i in range(64)])
    frame.insert(0, "name", [f"row{i}" for i in range(n)])  # not numeric: left out
    return frame


def test_numeric_columns_to_one_2d_input(client: Client) -> None:
    frame = features(6)
    result = client.infer("mlp", frame)
    expected = mlp_reference(frame.drop(columns="name").to_numpy())
    np.testing.assert_allclose(result["output"], expected, rtol=1e-4, atol=1e-5)


def test_columns_named_after_the_inputs(client: Client) -> None:
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    frame = pd.DataFrame({"a": list(a), "b": list(np.ones_like(a)), "other": [1, 2, 3]})
    result = client.infer("add", frame)
    np.testing.assert_array_equal(result["sum"], a + 1)
    text = pd.DataFrame({"text": ["a", "bb", "ccc"], "n": [1, 2, 3]})
    assert list(client.infer("strings", text)["upper"]) == [b"A", b"BB", b"CCC"]


def test_dataframe_errors(client: Client) -> None:
    with pytest.raises(InputError, match=r"64 features.*3 numeric columns"):
        client.infer("mlp", pd.DataFrame(np.zeros((2, 3))))
    with pytest.raises(InputError, match="no numeric columns"):
        client.infer("mlp", pd.DataFrame({"text": ["a", "b"]}))
    with pytest.raises(InputError, match=r"do not name the inputs.*'a', 'b'"):
        client.infer("add", pd.DataFrame({"x": [1.0]}))


def test_infer_batched_keeps_the_index(client: Client) -> None:
    frame = features(150)
    frame.index = pd.RangeIndex(1000, 1150)
    result = client.infer_batched("mlp", frame, progress=False)
    table = result.to_pandas()
    assert list(table.index) == list(range(1000, 1150))
    assert list(table.columns) == [f"output_{i}" for i in range(10)]
    np.testing.assert_allclose(
        table.to_numpy(), mlp_reference(frame.iloc[:, 1:].to_numpy()), rtol=1e-4, atol=1e-5
    )


def test_to_pandas_shapes() -> None:
    outputs = {
        "label": np.array([1, 2]),
        "probabilities": np.array([[0.1, 0.9], [0.8, 0.2]]),
        "maps": np.zeros((2, 2, 2)),
    }
    table = outputs_to_dataframe(outputs)
    assert list(table.columns) == ["label", "probabilities_0", "probabilities_1", "maps"]
    assert table["maps"][0].shape == (2, 2)
    with pytest.raises(ValueError, match="share a batch dimension"):
        outputs_to_dataframe({"a": np.zeros(2), "b": np.zeros(3)})
    assert is_dataframe(table) and not is_dataframe(outputs)


def test_missing_pandas_says_what_to_install(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = client.infer("mlp", np.zeros((1, 64), dtype=np.float32))
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match=r"pip install 'maas\[pandas\]'"):
        result.to_pandas()
