"""Smoke run of ``benchmarks/client_overhead.py``: a few calls per phase, on its own server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import client_overhead


def test_client_overhead_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run.json"
    argv = ["--calls", "40", "--rounds", "1", "--max-seconds", "2", "--json", str(out)]
    assert client_overhead.main(argv) == 0
    printed = capsys.readouterr().out
    assert "mlp 1x64" in printed and "image 1x3x224x224" in printed
    assert "AsyncClient at concurrency 64" in printed
    data = json.loads(out.read_text())
    clients = {(row["case"], row["client"]) for row in data["rows"]}
    assert ("mlp 1x64", "maas_client") in clients
    assert ("image 1x3x224x224", "maas_client/httpx") in clients  # the httpx transport, compared
    assert "maas lean transport / httpx transport" in printed
    assert all(row["cpu_us"] > 0 and row["wall_us"] > 0 for row in data["rows"])
    assert data["rates"]["async_per_s"] > 0 and data["rates"]["sync_per_s"] > 0
