"""Smoke tests of ``benchmarks/loadgen.py`` (under a second of load on the session's server)
and of ``benchmarks/training_latency.py`` (its quick run)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest

from benchmarks import loadgen
from maas_client.codec import HEADER_LENGTH


def _binary_answer(status: int, headers: Mapping[str, str], body: bytes) -> str | None:
    length = headers.get(HEADER_LENGTH.lower()) or headers.get(HEADER_LENGTH)
    if length is None or int(length) + 10 * 4 != len(body):
        return f"not a binary answer with 10 FP32 values: {len(body)} bytes, header {length}"
    return None


@pytest.mark.parametrize("engine", ["httpx", "raw"])
async def test_loadgen_counts_requests_without_errors(server_url: str, engine: str) -> None:
    spec = loadgen.infer_body({"input": np.ones((1, 64), dtype=np.float32)}, binary=True)
    result = await loadgen.run_load(
        f"{server_url}/v2/models/mlp/infer",
        spec,
        concurrency=4,
        max_requests=100_000,
        max_duration=0.4,
        engine=engine,  # type: ignore[arg-type]
        validate=_binary_answer,
    )
    assert result.errors == 0, result.error_samples
    assert result.requests > 10
    assert len(result.latencies_ms) == result.requests
    assert 0 < result.p50_ms <= result.p90_ms <= result.p99_ms <= result.max_ms
    assert result.requests_per_s > 0
    # It stops at max_duration: only the requests already sent are waited for (each at most the
    # slowest latency seen), whatever the machine's speed.
    assert result.duration_s < 0.4 + result.max_ms / 1000 + 0.5


async def test_loadgen_stops_at_the_count_and_counts_errors(server_url: str) -> None:
    spec = loadgen.infer_body({"input": np.ones((1, 64), dtype=np.float32)}, binary=False)
    result = await loadgen.run_load(
        f"{server_url}/v2/models/no_such_model/infer", spec, 2, max_requests=7, max_duration=5
    )
    assert result.requests == 7
    assert result.errors == 7
    assert result.error_samples[0].startswith("HTTP 404")


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.1:8000/v2/models/mlp/infer",
        "http://example.com/v2",
        "http://127.0.0.1.example.com/",
        "http://[::2]:8000/",
        "http://0.0.0.0:8000/",
        "ftp://127.0.0.1/",
    ],
)
async def test_loadgen_refuses_non_loopback_targets(url: str) -> None:
    spec = loadgen.RequestSpec(b"{}")
    with pytest.raises(loadgen.NonLoopbackError):
        await loadgen.run_load(url, spec, 1, max_requests=1, max_duration=1)


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:1/", "http://127.9.8.7/", "http://localhost:8000/", "http://[::1]/"]
)
def test_loopback_targets_are_accepted(url: str) -> None:
    loadgen.check_loopback(url)


def test_embeddings_benchmark_prints_its_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from benchmarks import embeddings

    out = tmp_path / "embeddings.json"
    assert embeddings.main(["--quick", "--json", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert embeddings.HEADER in lines
    table = lines[lines.index(embeddings.HEADER) + 1 :]
    assert table[0].startswith("in process (pre-tokenised)")
    assert table[1].startswith("/v1/embeddings c=16 merge before")
    assert table[2].startswith("/v1/embeddings c=16 merge after")
    report = json.loads(out.read_text())
    rows = report["rows"]
    assert all(row["embeddings_per_s"] > 0 for row in rows)
    assert report["ratio"] == rows[1]["embeddings_per_s"] / rows[0]["embeddings_per_s"]
    assert report["pass"] == (report["ratio"] >= embeddings.TARGET)


def test_workers_benchmark_runs_one_and_two_workers(capsys: pytest.CaptureFixture[str]) -> None:
    """``benchmarks/workers.py`` tiny: a row per worker count, no error, a ratio per row."""
    from benchmarks import workers

    code = workers.main(["--quick", "--workers-list", "1,2", "--no-pin", "--duration", "0.3"])
    out = capsys.readouterr().out
    assert code == 0, out
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert [row[0] for row in rows] == ["1", "2"], out
    assert all(float(row[1]) > 0 and row[4] == "0" for row in rows), out
    assert float(rows[0][6]) == 1 / workers.TARGET  # one worker against 0.8 x itself
    assert workers.parse_cpus("0-2,5") == [0, 1, 2, 5]
    assert workers.default_split([0, 1, 2, 3, 4, 5, 6, 7]) == ([0, 1, 2, 3, 4, 5], [6, 7])


def test_training_latency_benchmark_runs(tmp_path: Path) -> None:
    """``benchmarks/training_latency.py --quick``: a real ``maas serve``, a training job running
    through the second phase; the figures are printed, not judged (a shared machine's p99)."""
    from benchmarks import training_latency

    out = tmp_path / "summary.json"
    # nice 0: at the default 19 the training may not finish an epoch in the quick phase when
    # the tests share a busy machine
    training_latency.main(["--quick", "--training-nice", "0", "--json", str(out)])
    summary = json.loads(out.read_text())
    assert summary["alone"]["errors"] == 0 and summary["training"]["errors"] == 0
    assert summary["alone"]["median_p99_ms"] > 0 and summary["training"]["median_p99_ms"] > 0
    assert summary["training_epochs_done"][0] >= 1  # the training ran during the phase


def test_batch_jobs_benchmark_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import batch_jobs

    out = tmp_path / "run.json"
    assert batch_jobs.main(["--rows", "3000", "--online-seconds", "0.3", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "batch job / infer_batched rows/s" in printed and "online p99" in printed
    data = json.loads(out.read_text())
    assert data["rows"] == 3000 and data["job_s"] > 0 and data["infer_batched_s"] > 0
    assert data["online_alone"]["calls"] > 0 and data["online_during_job"]["calls"] > 0
    assert set(data["ratios"]) == {"job_to_infer_batched", "p99_during_to_alone"}
