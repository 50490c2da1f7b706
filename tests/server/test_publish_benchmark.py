"""Smoke test of ``benchmarks/upload.py`` at 5 MB: the table it prints holds the figures."""

from __future__ import annotations

import re

import pytest

from benchmarks import upload


def _row(output: str, label: str) -> list[float]:
    line = next(line for line in output.splitlines() if line.strip().startswith(label))
    return [float(v) for v in re.findall(r"\d+\.\d+", line[len(label) + 2 :])]


def test_upload_benchmark_prints_its_figures(capsys: pytest.CaptureFixture[str]) -> None:
    assert upload.main(["--size-mb", "5"]) == 0
    output = capsys.readouterr().out
    assert "model: 5.0 MB" in output
    copy_s, copy_rate = _row(output, "local shutil.copyfile")
    upload_s, upload_rate = _row(output, "upload to 201 (incl. validation)")
    assert copy_s > 0 and copy_rate > 0 and upload_s > 0 and upload_rate > 0
    (before,) = _row(output, "before the upload")
    (after,) = _row(output, "after the upload")
    growth, per_size = _row(output, "growth")
    ort_growth, _ = _row(output, "ONNX Runtime session alone")
    assert 0 < before <= after
    assert growth == pytest.approx(after - before, abs=0.2)
    assert per_size == pytest.approx(growth / 5.0, abs=0.02)
    # streamed to disk: the server holds no whole copy of the body beyond ONNX Runtime's needs
    assert growth < ort_growth + 64
