"""Online latency while the server trains a model: p99 of a small model's requests during a
training job, against the same with no training.

One ``maas serve`` subprocess serves the MLP of ``server_throughput.py`` and holds a dataset
(8x8 digits, or ``--rows`` synthetic rows). Rounds alternate two phases of ``--duration``
seconds of batch-1 binary requests at ``--concurrency`` (the raw-socket load generator of
``benchmarks/loadgen.py``):

- ``alone``: nothing else runs;
- ``training``: a training job (the default MLP, one row per step so that it keeps the CPU busy
  for the whole phase) has been started and has reported its first epoch; it is cancelled after
  the phase.

The training runs in a process of its own at a lower priority with its thread budget
(``--training-threads``, default: half the CPUs), as the server always runs trainings.

Target (issue: training as a service): p99 during a training <= 2x p99 alone.

Usage::

    python benchmarks/training_latency.py                  # 3 rounds of 5 s per phase
    python benchmarks/training_latency.py --rounds 5 --duration 10 --json out.json
    python benchmarks/training_latency.py --quick          # smoke run
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.loadgen import (  # noqa: E402
    LoadResult,
    format_result,
    infer_body,
    run_load_blocking,
    shared_cores_note,
)
from benchmarks.server_throughput import build_repository  # noqa: E402
from benchmarks.servers import free_port, maas_command, serve  # noqa: E402

__all__ = ["main"]

TARGET_RATIO = 2.0


def upload_dataset(client: httpx.Client, rows: int | None) -> None:
    """Digits (1,797 rows of 8x8 images), or ``rows`` synthetic rows of 64 features."""
    if rows is None:
        from sklearn.datasets import load_digits

        digits = load_digits()
        image, label = digits.images.astype(np.float32), digits.target
    else:
        generator = np.random.default_rng(0)
        image = generator.standard_normal((rows, 8, 8)).astype(np.float32)
        label = (image.sum(axis=(1, 2)) > 0).astype(np.int64)
    body = io.BytesIO()
    np.savez(body, image=image, digit=label)
    answer = client.post("/v2/datasets/bench-digits?format=npz", content=body.getvalue())
    answer.raise_for_status()


def start_training(client: httpx.Client, deadline_s: float = 120.0) -> str:
    """Start a long training and return its id once it has reported an epoch."""
    spec = {
        "type": "training",
        "dataset": "bench-digits",
        "target": "digit",
        "name": "bench-trained",
        "batch_size": 1,
        "epochs": 10_000,
        "early_stopping": False,
    }
    answer = client.post("/v2/jobs", json=spec)
    answer.raise_for_status()
    job_id: str = answer.json()["id"]
    deadline = time.monotonic() + deadline_s
    while True:
        info = client.get(f"/v2/jobs/{job_id}").json()
        if info["state"] != "running" and info["state"] != "queued":
            raise RuntimeError(f"the training ended before the load: {info}")
        if info["progress"]["done"] >= 1:
            return job_id
        if time.monotonic() > deadline:
            raise RuntimeError("the training reported no epoch in time")
        time.sleep(0.1)


def stop_training(client: httpx.Client, job_id: str) -> dict[str, Any]:
    client.post(f"/v2/jobs/{job_id}/cancel")
    while True:
        info: dict[str, Any] = client.get(f"/v2/jobs/{job_id}").json()
        if info["state"] in ("succeeded", "failed", "cancelled"):
            return info
        time.sleep(0.05)


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    repository = build_repository(workdir / "repository")
    port = free_port()
    command = maas_command(repository, port)
    command += ["--data-dir", str(workdir / "data")]
    if args.training_threads:
        command += ["--training-threads", str(args.training_threads)]
    command += ["--training-nice", str(args.training_nice)]
    spec = infer_body({"input": np.ones((1, 64), dtype=np.float32)}, binary=True)
    results: dict[str, list[LoadResult]] = {"alone": [], "training": []}
    epochs: list[float] = []
    print(shared_cores_note("the server, its training process"))
    with serve("maas", command, port, workdir / "server.log") as server:
        url = f"{server.base_url}/v2/models/mlp/infer"
        with httpx.Client(base_url=server.base_url, trust_env=False, timeout=60) as client:
            upload_dataset(client, args.rows)
            run_load_blocking(url, spec, args.concurrency, 1_000_000, 0.5, engine=args.engine)
            for round_index in range(args.rounds):
                for phase in ("alone", "training"):
                    job_id = start_training(client) if phase == "training" else None
                    result = run_load_blocking(
                        url, spec, args.concurrency, 10_000_000, args.duration, engine=args.engine
                    )
                    if job_id is not None:
                        info = stop_training(client, job_id)
                        epochs.append(info["progress"]["done"])
                    results[phase].append(result)
                    print(f"round {round_index + 1} {phase:8s} {format_result(result)}")
    summary: dict[str, Any] = {}
    for phase, rows in results.items():
        summary[phase] = {
            "p99_ms": [r.p99_ms for r in rows],
            "median_p99_ms": statistics.median(r.p99_ms for r in rows),
            "median_p50_ms": statistics.median(r.p50_ms for r in rows),
            "median_requests_per_s": statistics.median(r.requests_per_s for r in rows),
            "errors": sum(r.errors for r in rows),
        }
    alone = summary["alone"]["median_p99_ms"]
    during = summary["training"]["median_p99_ms"]
    ratio = during / alone if alone else float("nan")
    summary.update(
        ratio=ratio,
        target_ratio=TARGET_RATIO,
        training_epochs_done=epochs,
        concurrency=args.concurrency,
        duration_s=args.duration,
        passed=ratio <= TARGET_RATIO and not summary["training"]["errors"],
    )
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--engine", choices=["raw", "httpx"], default="raw")
    parser.add_argument("--rows", type=int, default=None, help="synthetic rows (default: digits)")
    parser.add_argument("--training-threads", type=int, default=None)
    parser.add_argument(
        "--training-nice", type=int, default=19, help="the server's --training-nice (default 19)"
    )
    parser.add_argument("--quick", action="store_true", help="1 round of 1 s (smoke run)")
    parser.add_argument("--json", type=Path, help="write the summary here")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.duration = 1, 1.0
    with tempfile.TemporaryDirectory(prefix="maas-training-bench-") as tmp:
        summary = run(args, Path(tmp))
    print()
    print(f"{'phase':10s} {'p50 ms':>9s} {'p99 ms':>9s} {'req/s':>10s} {'errors':>7s}")
    for phase in ("alone", "training"):
        row = summary[phase]
        print(
            f"{phase:10s} {row['median_p50_ms']:9.3f} {row['median_p99_ms']:9.3f} "
            f"{row['median_requests_per_s']:10.1f} {row['errors']:7d}"
        )
    verdict = "PASS" if summary["passed"] else "FAIL"
    print(
        f"p99 during a training / alone: {summary['ratio']:.2f}x "
        f"(target <= {TARGET_RATIO:g}x at concurrency {args.concurrency}; medians of "
        f"{args.rounds} round(s)): {verdict}"
    )
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
