"""Smoke test of ``benchmarks/generation.py``: a short run of every scenario, its table and
verdicts (the figures themselves are not checked: they depend on the machine)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import generation


def test_quick_run_measures_every_scenario(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run.json"
    status = generation.main(["--tokens", "20", "--repeat", "1", "--json", str(out)])
    assert status in (0, 1)
    report = json.loads(out.read_text())
    rows = {(r["target"], r["streams"]) for r in report["rows"]}
    assert rows == {
        ("in-process loop", 1),
        ("in-process loop", 8),
        ("maas generate_stream", 1),
        ("maas generate_stream", 8),
    }
    assert all(r["ttft_ms"] > 0 and r["aggregate_tokens_per_s"] > 0 for r in report["rows"])
    assert [v["name"] for v in report["verdicts"]] == [
        "server overhead per token at 1 stream (vs in-process step)",
        "aggregate tokens/s, 8 streams / 1 stream",
    ]
    printed = capsys.readouterr().out
    assert "maas generate_stream" in printed
    assert ("FAIL" in printed) == (status == 1)
