"""``maas datasets push|list|show|pull|delete`` against a real server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner, Result

from maas_cli import app
from maas_server import Settings
from tests.conftest import RunningServer, start_server

runner = CliRunner()


@pytest.fixture
def running(tmp_path: Path) -> Iterator[RunningServer]:
    repo = tmp_path / "models"
    repo.mkdir()
    server = start_server(
        Settings(repository=repo, model_control="explicit", data_dir=tmp_path / "data")
    )
    yield server
    server.stop()


def _maas(url: str, *args: str) -> Result:
    return runner.invoke(app, [*args, "--url", url])


def _ok(result: Result) -> str:
    assert result.exit_code == 0, result.output
    return result.output


def test_push_list_show_pull_delete(
    running: RunningServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("scores.csv").write_text("x,label\n0.5,cat\n1.5,dog\n2.5,cat\n")
    np.savez("digits.npz", pixels=np.zeros((4, 8, 8), np.float32), label=np.arange(4))
    url = running.url
    pushed = _ok(_maas(url, "datasets", "push", "scores", "scores.csv"))
    assert "stored scores version 1: 3 rows, x FP64, label BYTES" in pushed
    assert "version 2" in _ok(_maas(url, "datasets", "push", "scores", "scores.csv"))
    info = json.loads(_ok(_maas(url, "datasets", "push", "digits", "digits.npz", "--json")))
    assert info["schema"][0] == {"name": "pixels", "datatype": "FP32", "shape": [8, 8]}
    listed = _ok(_maas(url, "datasets", "list"))
    assert "digits" in listed and "scores" in listed
    as_json = json.loads(_ok(_maas(url, "datasets", "list", "--json")))
    assert [(d["name"], d["version"]) for d in as_json] == [("digits", 1), ("scores", 2)]
    shown = _ok(_maas(url, "datasets", "show", "scores", "--version", "1", "--rows", "2"))
    assert "scores version 1 of 1, 2" in shown
    assert "dog" in shown and "cat" in shown
    detail = json.loads(_ok(_maas(url, "datasets", "show", "scores", "--json")))
    assert detail["versions"] == [1, 2] and len(detail["preview"]) == 3
    pulled = _ok(_maas(url, "datasets", "pull", "scores", "--format", "parquet", "-o", "s.pq"))
    assert "wrote" in pulled
    assert pq.read_table("s.pq").column("label").to_pylist() == ["cat", "dog", "cat"]
    _ok(_maas(url, "datasets", "pull", "scores", "--version", "1"))
    assert Path("scores-v1.csv").read_bytes() == Path("scores.csv").read_bytes()
    assert "deleted scores version 1" in _ok(
        _maas(url, "datasets", "delete", "scores", "--version", "1")
    )
    assert "deleted digits version 1" in _ok(_maas(url, "datasets", "delete", "digits"))


def test_errors_are_one_line_and_status_1(running: RunningServer, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"a": 1}\n{"a": "x"}\n')
    failed = _maas(running.url, "datasets", "push", "bad", str(bad))
    assert failed.exit_code == 1
    assert "mixed types in column 'a'" in failed.output
    missing = _maas(running.url, "datasets", "show", "nothing")
    assert missing.exit_code == 1
    assert "no dataset named 'nothing'" in missing.output
    odd = tmp_path / "x.xlsx"
    odd.write_bytes(b"x")
    refused = _maas(running.url, "datasets", "push", "x", str(odd))
    assert refused.exit_code != 0
    assert "cannot tell the format" in refused.output
