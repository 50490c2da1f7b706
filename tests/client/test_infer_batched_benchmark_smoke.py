"""Smoke run of ``benchmarks/infer_batched.py``: a few thousand rows, one round, its own server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import infer_batched


def test_infer_batched_benchmark_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run.json"
    argv = [
        "--rows",
        "3000",
        "--rounds",
        "1",
        "--naive-seconds",
        "0.3",
        "--concurrency",
        "4",
        "--raw-concurrency",
        "4",
        "--json",
        str(out),
    ]
    assert infer_batched.main(argv) == 0
    printed = capsys.readouterr().out
    assert "infer_batched / naive loop" in printed and "one giant request" in printed
    data = json.loads(out.read_text())
    assert data["rows"] == 3000 and data["naive"] > 0
    assert set(data["ratios"]) == {
        "to_best_with_batching",
        "best_with_batching",
        "to_one_request",
        "to_naive",
    }
    assert all(rate > 0 for rate in data["rates"].values())
