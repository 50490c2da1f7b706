"""Smoke test of ``benchmarks/generation.py``: a short run of every scenario, its table and
verdicts. The figures depend on the machine, so the test does not bound them; it checks that each
is printed, positive and agrees with the others, and that each verdict (and the exit status)
follows from its figure and target."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from benchmarks import generation

ROW = re.compile(
    r"^  (?P<target>in-process loop|maas generate_stream) +(?P<streams>\d+) +(?P<ttft>\S+) "
    r"+(?P<step>\S+) +(?P<stream>\S+) +(?P<total>\S+) +(?P<cpu>\S+)$"
)
VERDICT = re.compile(
    r"^(?P<verdict>PASS|FAIL)  (?P<name>.+): (?P<value>\S+) \(target (?P<target>.+)\)$"
)


def printed_table(printed: str) -> dict[tuple[str, int], dict[str, float | None]]:
    """The rows of the printed table, by (target, streams): every figure as a number."""
    lines = printed.splitlines()
    assert generation.HEADER in lines
    table: dict[tuple[str, int], dict[str, float | None]] = {}
    for line in lines[lines.index(generation.HEADER) + 1 :]:
        if not line.strip():
            break
        match = ROW.match(line)
        assert match, f"not a row of the table: {line!r}"
        figures: dict[str, float | None] = {
            key: float(match[key]) for key in ("ttft", "step", "stream", "total")
        }
        figures["cpu"] = None if match["cpu"] == "-" else float(match["cpu"])
        table[(match["target"], int(match["streams"]))] = figures
    return table


def test_quick_run_measures_every_scenario(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run.json"
    status = generation.main(["--tokens", "20", "--repeat", "1", "--json", str(out)])
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

    # The printed table: every scenario, every figure present and positive, and the same
    # figures as the JSON report (to the printed precision).
    table = printed_table(printed)
    assert set(table) == rows
    for row in report["rows"]:
        figures = table[(row["target"], row["streams"])]
        assert all(v is None or v > 0 for v in figures.values()), figures
        assert figures["ttft"] == pytest.approx(row["ttft_ms"], abs=1e-3)
        assert figures["step"] == pytest.approx(row["step_ms"], abs=1e-4)
        assert figures["stream"] == pytest.approx(row["stream_tokens_per_s"], abs=0.5)
        assert figures["total"] == pytest.approx(row["aggregate_tokens_per_s"], abs=0.5)
        # One stream's rate is the inverse of its time per token.
        assert row["stream_tokens_per_s"] == pytest.approx(1000 / row["step_ms"], rel=1e-9)
        if row["target"] == "in-process loop":
            assert figures["cpu"] is None  # the server's CPU is measured for the server only
        elif figures["cpu"] is not None:
            assert figures["cpu"] == pytest.approx(row["server_cpu_us_per_token"], abs=0.05)

    # The verdict lines: each follows from its figure and target, and the exit status from them.
    verdicts = [m for line in printed.splitlines() if (m := VERDICT.match(line))]
    assert [m["name"] for m in verdicts] == [v["name"] for v in report["verdicts"]]
    overhead, scaling = report["verdicts"]
    assert [m["verdict"] == "PASS" for m in verdicts] == [v["pass"] for v in report["verdicts"]]
    assert overhead["target"] == verdicts[0]["target"] == f"<= {generation.OVERHEAD_TARGET:.0%}"
    assert overhead["value"] > -1  # a ratio of two positive step times, minus one
    assert verdicts[0]["value"] == f"{overhead['value']:+.1%}"
    assert overhead["pass"] == (overhead["value"] <= generation.OVERHEAD_TARGET)
    assert scaling["target"] == verdicts[1]["target"] == f">= {generation.SCALING_TARGET:g}x"
    by_streams = {r["streams"]: r for r in report["rows"] if r["target"].startswith("maas")}
    expected = by_streams[8]["aggregate_tokens_per_s"] / by_streams[1]["aggregate_tokens_per_s"]
    assert scaling["value"] == pytest.approx(expected, rel=1e-9)
    total_8, total_1 = (table[("maas generate_stream", n)]["total"] for n in (8, 1))
    assert total_8 is not None and total_1 is not None
    assert scaling["value"] == pytest.approx(total_8 / total_1, rel=0.05)  # as printed
    assert verdicts[1]["value"] == f"{scaling['value']:.2f}x"
    assert scaling["pass"] == (scaling["value"] >= generation.SCALING_TARGET)
    assert status == (0 if overhead["pass"] and scaling["pass"] else 1)
    assert ("FAIL" in printed) == (status == 1)
