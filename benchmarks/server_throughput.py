"""Server throughput: maas over JSON and binary against a bare Starlette app and raw ONNX Runtime.

What runs, in this order, one thing at a time so that nothing competes for the cores:

1. raw in-process ``session.run`` of the MLP at batch 1 (the physical limit of the model);
2. ``maas serve`` in a subprocess: the MLP at batch 1 over JSON then binary at each concurrency,
   then a 1x3x224x224 FP32 tensor through an identity model, over binary and over JSON;
3. ``benchmarks/bare_starlette.py`` in a subprocess (parse the binary request, ``session.run``,
   answer): the MLP at batch 1 over binary at each concurrency.
4. pinned (``--pinned``, on by default where the process may use two CPUs or more and
   ``taskset`` exists): ``maas serve`` started under ``taskset`` on one core and the load
   generator moved to another, the MLP at batch 1 over binary at each concurrency (rows
   ``maas-mlp-pinned``), reported next to the unpinned rows. It shows what a server in a
   container or under ``taskset`` does with the CPUs it really has (ONNX Runtime threads sized
   from the machine's cores instead oversubscribe the one core).

The load generator (``benchmarks/loadgen.py``) runs in this process, the server in its own. The
table gives requests/s, latency percentiles and errors per (target, encoding, concurrency), the CPU
the client used (in % of one core: near 100% means the client, not the server, may be the limit)
and the server's CPU time per request (read from /proc), which is what serving a request costs.

Targets (issue: server foundation): maas binary at concurrency 64 reaches at least 50% of the bare
app's requests/s, and the 224x224 tensor round trip is at least 5x faster over binary than over
JSON (p50 of a full client round trip: encode, POST, decode).

Usage::

    python benchmarks/server_throughput.py --quick           # smoke run, a few seconds
    python benchmarks/server_throughput.py --duration 5 --json run.json
    python benchmarks/server_throughput.py --baseline run.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.bare_starlette import make_session  # noqa: E402
from benchmarks.loadgen import (  # noqa: E402
    Engine,
    LoadResult,
    RequestSpec,
    infer_body,
    run_load_blocking,
    run_load_processes,
    shared_cores_note,
)
from benchmarks.servers import (  # noqa: E402
    ServerProcess,
    bare_command,
    cpu_seconds,
    free_port,
    maas_command,
    serve,
)
from maas_client.codec import HEADER_LENGTH  # noqa: E402
from maas_client.protocol import decode_response  # noqa: E402

__all__ = ["Row", "main"]

MLP_FEATURES = (64, 128, 10)
IMAGE_SHAPE = (1, 3, 224, 224)
THROUGHPUT_TARGET = 0.5
ROUND_TRIP_TARGET = 5.0


@dataclass
class Row:
    """One line of the table."""

    target: str
    encoding: str
    concurrency: int
    engine: str
    requests: int
    requests_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    errors: int
    client_cpu_pct: float | None = None
    server_cpu_us: float | None = None
    note: str = ""

    @property
    def key(self) -> str:
        return f"{self.target}/{self.encoding}/c{self.concurrency}/{self.engine}"


# --- the model repository ---------------------------------------------------------------------


def build_repository(root: Path, mlp_threads: int | None = None) -> Path:
    """``mlp`` (FP32 [-1,64] -> [-1,10]) and ``image`` (FP32 identity [-1,3,224,224]).

    ``mlp_threads`` pins the MLP's intra-op threads in its configuration instead of letting the
    server size them (``os.cpu_count()`` reproduces how maas sized them before it read the
    CPUs the process may use)."""
    from onnx import TensorProto

    from tests import models

    def put(name: str, model: Any, config: dict[str, Any]) -> None:
        models.save(model, root / name / "1" / "model.onnx")
        (root / name / "config.json").write_text(json.dumps(config))

    in_f, hidden, out_f = MLP_FEATURES
    mlp_config: dict[str, Any] = {"max_batch_size": 64, "warmup": 2}
    if mlp_threads is not None:
        options = {"intra_op_num_threads": mlp_threads}
        mlp_config["execution_providers"] = [{"name": "CPUExecutionProvider", "options": options}]
    put("mlp", models.mlp_model(in_f, hidden, out_f), mlp_config)
    put(
        "image",
        models.identity_model(TensorProto.FLOAT, ["batch", *IMAGE_SHAPE[1:]]),
        {"max_batch_size": 8},
    )
    return root


# --- requests ---------------------------------------------------------------------------------


def check_answer(url: str, spec: RequestSpec, output: str, expected: np.ndarray[Any, Any]) -> None:
    """Send one request and compare the answer with what ONNX Runtime computes in process."""
    with httpx.Client(trust_env=False, headers={"Accept-Encoding": "identity"}) as client:
        response = client.post(url, content=spec.body, headers=dict(spec.headers))
    if not response.is_success:
        raise RuntimeError(f"{url} answered {response.status_code}: {response.text[:300]}")
    length = response.headers.get(HEADER_LENGTH)
    _, tensors = decode_response(response.content, int(length) if length else None)
    if not np.allclose(tensors[output], expected, rtol=1e-5, atol=1e-5):
        raise RuntimeError(f"{url} answered a wrong {output!r}")


# --- measurements -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Budget:
    duration: float
    count: int
    client_processes: int


def load(
    url: str, spec: RequestSpec, concurrency: int, budget: Budget, engine: Engine
) -> LoadResult:
    if budget.client_processes > 1 and concurrency > 1:
        return run_load_processes(
            url,
            spec,
            concurrency,
            budget.count,
            budget.duration,
            budget.client_processes,
            engine=engine,
        )
    return run_load_blocking(url, spec, concurrency, budget.count, budget.duration, engine=engine)


def load_row(
    server: ServerProcess,
    target: str,
    encoding: str,
    url: str,
    spec: RequestSpec,
    concurrency: int,
    budget: Budget,
    engine: Engine,
) -> Row:
    before = cpu_seconds(server.process.pid)
    result = load(url, spec, concurrency, budget, engine)
    after = cpu_seconds(server.process.pid)
    served = result.requests
    server_us = None
    # Below ~5 clock ticks of CPU the figure is mostly rounding: leave it out.
    if before is not None and after is not None and served and after - before >= 0.05:
        server_us = (after - before) / served * 1e6
    row = Row(
        target=target,
        encoding=encoding,
        concurrency=concurrency,
        engine=engine,
        requests=result.requests,
        requests_per_s=result.requests_per_s,
        p50_ms=result.p50_ms,
        p90_ms=result.p90_ms,
        p99_ms=result.p99_ms,
        errors=result.errors,
        client_cpu_pct=100 * result.client_cpu_share,
        server_cpu_us=server_us,
        note=result.error_samples[0] if result.error_samples else "",
    )
    print(f"  {format_row(row)}", flush=True)
    return row


def timed_loop(
    call: Callable[[], object], duration: float, count: int
) -> tuple[list[float], float]:
    """Latencies (ms) of ``call`` run back to back, and the wall time the loop took."""
    latencies: list[float] = []
    start = time.perf_counter()
    deadline = start + duration
    while len(latencies) < count and time.perf_counter() < deadline:
        t0 = time.perf_counter()
        call()
        latencies.append((time.perf_counter() - t0) * 1e3)
    return latencies, time.perf_counter() - start


def loop_row(
    target: str,
    encoding: str,
    engine: str,
    latencies: list[float],
    wall: float,
    cpu: float | None,
) -> Row:
    p50, p90, p99 = (float(x) for x in np.percentile(latencies, [50, 90, 99]))
    row = Row(
        target=target,
        encoding=encoding,
        concurrency=1,
        engine=engine,
        requests=len(latencies),
        requests_per_s=len(latencies) / wall,
        p50_ms=p50,
        p90_ms=p90,
        p99_ms=p99,
        errors=0,
        server_cpu_us=cpu,
    )
    print(f"  {format_row(row)}", flush=True)
    return row


def raw_onnxruntime(model: Path, budget: Budget) -> Row:
    """The MLP's own cost: session.run in this process, back to back, nothing else running."""
    session = make_session(model)
    feeds = {"input": np.random.default_rng(0).standard_normal((1, 64)).astype(np.float32)}
    for _ in range(100):
        session.run(None, feeds)
    cpu_start = time.process_time()
    latencies, wall = timed_loop(lambda: session.run(None, feeds), budget.duration, budget.count)
    cpu_us = (time.process_time() - cpu_start) / len(latencies) * 1e6
    return loop_row("onnxruntime", "-", "in-process", latencies, wall, cpu_us)


def client_round_trip(url: str, image: np.ndarray[Any, Any], binary: bool, budget: Budget) -> Row:
    """A full client round trip: encode the request, POST it, decode the answer."""
    with httpx.Client(
        trust_env=False, headers={"Accept-Encoding": "identity"}, timeout=60
    ) as client:

        def call() -> None:
            spec = infer_body({"x": image}, binary)
            response = client.post(url, content=spec.body, headers=dict(spec.headers))
            response.raise_for_status()
            length = response.headers.get(HEADER_LENGTH)
            _, tensors = decode_response(response.content, int(length) if length else None)
            if tensors["y"].shape != image.shape:
                raise RuntimeError("the identity model answered a different shape")

        call()
        latencies, wall = timed_loop(call, budget.duration, budget.count)
    encoding = "binary" if binary else "json"
    return loop_row("client-round-trip", encoding, "httpx+codec", latencies, wall, None)


# --- report -----------------------------------------------------------------------------------

_HEADINGS = (
    f"{'target':<18} {'encoding':<8} {'conc':>4} {'client':<11} {'req/s':>9} {'p50 ms':>9} "
    f"{'p90 ms':>9} {'p99 ms':>9} {'errors':>6} {'client cpu':>10} {'srv cpu us/req':>14}"
)


def _num(value: float | None, width: int, digits: int) -> str:
    if value is None or math.isnan(value):
        return f"{'-':>{width}}"
    return f"{value:>{width}.{digits}f}"


def format_row(row: Row) -> str:
    line = (
        f"{row.target:<18} {row.encoding:<8} {row.concurrency:>4} {row.engine:<11} "
        f"{_num(row.requests_per_s, 9, 1)} {_num(row.p50_ms, 9, 3)} {_num(row.p90_ms, 9, 3)} "
        f"{_num(row.p99_ms, 9, 3)} {row.errors:>6} "
        f"{_num(row.client_cpu_pct, 9, 0)}{'%' if row.client_cpu_pct is not None else ' '} "
        f"{_num(row.server_cpu_us, 14, 0)}"
    )
    if row.note:
        line += f"\n      first error: {row.note}"
    return line


def find(rows: Sequence[Row], key: str) -> Row | None:
    return next((r for r in rows if r.key == key), None)


def ratios(rows: Sequence[Row], levels: Sequence[int], engines: Sequence[str]) -> dict[str, Any]:
    """The two target ratios (the throughput one per client engine; the first engine's is the
    one checked), and two ratios that help read them."""
    top = max(levels)
    out: dict[str, Any] = {}
    for index, engine in enumerate(engines):
        maas = find(rows, f"maas-mlp/binary/c{top}/{engine}")
        bare = find(rows, f"bare-mlp/binary/c{top}/{engine}")
        if not (maas and bare and bare.requests_per_s > 0):
            continue
        value = maas.requests_per_s / bare.requests_per_s
        entry: dict[str, Any] = {
            "what": f"maas binary c{top} req/s / bare Starlette c{top} req/s "
            f"(MLP batch 1, {engine} client)",
            "value": value,
        }
        if index == 0:
            entry.update(target=THROUGHPUT_TARGET, passed=value >= THROUGHPUT_TARGET)
        out[f"throughput_{engine}"] = entry
        if index == 0 and maas.server_cpu_us and bare.server_cpu_us:
            out["server_cpu"] = {
                "what": f"bare server CPU per request / maas server CPU per request (c{top}, "
                "the throughput ratio if the server alone had the cores)",
                "value": bare.server_cpu_us / maas.server_cpu_us,
            }
    json_rt = find(rows, "client-round-trip/json/c1/httpx+codec")
    binary_rt = find(rows, "client-round-trip/binary/c1/httpx+codec")
    if json_rt and binary_rt and binary_rt.p50_ms > 0:
        value = json_rt.p50_ms / binary_rt.p50_ms
        out["round_trip"] = {
            "what": "1x3x224x224 FP32 round trip, p50 JSON / p50 binary (encode+POST+decode)",
            "value": value,
            "target": ROUND_TRIP_TARGET,
            "passed": value >= ROUND_TRIP_TARGET,
        }
    json_wire = find(rows, f"maas-image/json/c1/{engines[0]}")
    binary_wire = find(rows, f"maas-image/binary/c1/{engines[0]}")
    if json_wire and binary_wire and binary_wire.p50_ms > 0:
        out["round_trip_server_only"] = {
            "what": "same tensor, bodies encoded in advance (HTTP + server only), p50 JSON / "
            "p50 binary",
            "value": json_wire.p50_ms / binary_wire.p50_ms,
        }
    return out


def print_report(rows: Sequence[Row], found: dict[str, Any], note: str) -> None:
    print()
    print(note)
    print(_HEADINGS)
    print("-" * len(_HEADINGS))
    for row in rows:
        print(format_row(row))
    print()
    for entry in found.values():
        verdict = ""
        if "target" in entry:
            verdict = f"  target >= {entry['target']:g}: {'PASS' if entry['passed'] else 'FAIL'}"
        print(f"{entry['what']}: {entry['value']:.2f}{verdict}")


def print_baseline(rows: Sequence[Row], path: Path) -> None:
    saved = json.loads(path.read_text())
    old = {
        f"{r['target']}/{r['encoding']}/c{r['concurrency']}/{r['engine']}": r for r in saved["rows"]
    }
    print(f"\nagainst the baseline {path} (this run / baseline):")
    for row in rows:
        before = old.get(row.key)
        if before is None:
            continue
        rps = row.requests_per_s / before["requests_per_s"] if before["requests_per_s"] else 0.0
        p50 = row.p50_ms / before["p50_ms"] if before["p50_ms"] else 0.0
        print(f"  {row.key:<44} req/s x{rps:5.2f}   p50 x{p50:5.2f}")
    for name, entry in saved.get("ratios", {}).items():
        print(f"  baseline {name}: {entry['value']:.2f}")


# --- main -------------------------------------------------------------------------------------


def parse_levels(text: str) -> list[int]:
    try:
        levels = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected e.g. 1,8,64, not {text!r}") from None
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError("concurrency levels are positive integers")
    return levels


def pinning_cores() -> tuple[int, int] | None:
    """A core for the server and another for the load generator, or None when this process
    may use only one or ``taskset`` is missing."""
    if not hasattr(os, "sched_getaffinity") or shutil.which("taskset") is None:
        return None
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        return None
    return cores[0], cores[1]


def pinned_rows(
    args: argparse.Namespace,
    repo: Path,
    workdir: Path,
    spec: RequestSpec,
    expected: np.ndarray[Any, Any],
    budget: Budget,
    cores: tuple[int, int],
) -> list[Row]:
    """The MLP over binary with ``maas serve`` on one core and the load generator on another."""
    server_core, client_core = cores
    port = free_port()
    command = ["taskset", "-c", str(server_core), *maas_command(repo, port)]
    print(f"maas serve pinned to core {server_core}, load generator on core {client_core}:")
    rows: list[Row] = []
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {client_core})
    try:
        with serve("maas serve (pinned)", command, port, workdir / "pinned.log") as server:
            url = f"{server.base_url}/v2/models/mlp/infer"
            check_answer(url, spec, "output", expected)
            for engine in args.engines:
                for level in args.concurrency:
                    rows.append(
                        load_row(
                            server, "maas-mlp-pinned", "binary", url, spec, level, budget, engine
                        )
                    )
    finally:
        os.sched_setaffinity(0, before)
    return rows


def pinned_comparison(rows: Sequence[Row], levels: Sequence[int], engine: str) -> list[str]:
    """Lines comparing the pinned and unpinned maas rows (MLP batch 1, binary)."""
    lines = []
    for level in levels:
        free = find(rows, f"maas-mlp/binary/c{level}/{engine}")
        pinned = find(rows, f"maas-mlp-pinned/binary/c{level}/{engine}")
        if free and pinned:
            lines.append(
                f"MLP batch 1 binary c{level}: unpinned {free.requests_per_s:.0f} req/s "
                f"p99 {free.p99_ms:.1f} ms | server on one core {pinned.requests_per_s:.0f} req/s "
                f"p99 {pinned.p99_ms:.1f} ms"
            )
    return lines


def run(args: argparse.Namespace, workdir: Path) -> tuple[list[Row], str]:
    levels: list[int] = args.concurrency
    engines: list[Engine] = args.engines
    budget = Budget(args.duration, args.count, args.client_processes)
    round_trips = Budget(args.duration, args.round_trips, 1)
    repo = build_repository(workdir / "repository", args.mlp_threads)
    mlp_path = repo / "mlp" / "1" / "model.onnx"
    rng = np.random.default_rng(0)
    vector = rng.standard_normal((1, MLP_FEATURES[0])).astype(np.float32)
    image = rng.standard_normal(IMAGE_SHAPE).astype(np.float32)
    expected = make_session(mlp_path).run(None, {"input": vector})[0]
    mlp_json, mlp_binary = infer_body({"input": vector}, False), infer_body({"input": vector}, True)
    note = f"{shared_cores_note('one server at a time')}\nsource: {source_state()}"
    print(note, flush=True)
    rows: list[Row] = []

    print("raw onnxruntime, in process:", flush=True)
    rows.append(raw_onnxruntime(mlp_path, budget))

    port = free_port()
    command = maas_command(repo, port)
    print("maas serve:", flush=True)
    with serve("maas serve", command, port, workdir / "maas.log") as server:
        url = f"{server.base_url}/v2/models/mlp/infer"
        check_answer(url, mlp_binary, "output", expected)
        check_answer(url, mlp_json, "output", expected)
        for engine in engines:
            for encoding, spec in (("json", mlp_json), ("binary", mlp_binary)):
                for level in levels:
                    rows.append(
                        load_row(server, "maas-mlp", encoding, url, spec, level, budget, engine)
                    )
        image_url = f"{server.base_url}/v2/models/image/infer"
        for binary in (True, False):
            spec = infer_body({"x": image}, binary)
            check_answer(image_url, spec, "y", image)
            encoding = "binary" if binary else "json"
            rows.append(
                load_row(
                    server, "maas-image", encoding, image_url, spec, 1, round_trips, engines[0]
                )
            )
        for binary in (True, False):
            rows.append(client_round_trip(image_url, image, binary, round_trips))

    cores = pinning_cores() if args.pinned != "off" else None
    if cores is not None:
        rows.extend(pinned_rows(args, repo, workdir, mlp_binary, expected, budget, cores))
    elif args.pinned == "on":
        raise SystemExit("--pinned on needs two CPUs for this process and taskset")

    port = free_port()
    command = bare_command(mlp_path, port)
    print("bare Starlette + session.run:", flush=True)
    with serve("bare starlette", command, port, workdir / "bare.log") as server:
        url = f"{server.base_url}/v2/models/mlp/infer"
        check_answer(url, mlp_binary, "output", expected)
        for engine in engines:
            for level in levels:
                rows.append(
                    load_row(server, "bare-mlp", "binary", url, mlp_binary, level, budget, engine)
                )
    return rows, note


def source_state() -> str:
    """The commit measured, and whether the working tree differed from it."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "maas_server", "maas_client"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown"
    return (
        f"{head or 'unknown'}{' + uncommitted changes in maas_server/maas_client' if dirty else ''}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="maas throughput and latency against a bare Starlette app and raw "
        "onnxruntime, with the issue's targets checked.",
    )
    parser.add_argument("--duration", type=float, default=5.0, help="max seconds per row")
    parser.add_argument("--count", type=int, default=1_000_000, help="max requests per row")
    parser.add_argument("--concurrency", type=parse_levels, default=[1, 8, 64])
    parser.add_argument(
        "--round-trips", type=int, default=50, help="requests per 224x224 round-trip row"
    )
    parser.add_argument(
        "--client-processes",
        type=int,
        default=1,
        help="split the load generator over this many processes (for machines with many cores)",
    )
    parser.add_argument(
        "--engine",
        choices=["raw", "httpx", "both"],
        default="raw",
        help="load generator client: raw (hand-written HTTP/1.1, cheap enough that the server is "
        "the limit; the default), httpx (an httpx.AsyncClient per worker: what a Python client "
        "costs, often the limit itself), or both (the first, raw, is the one checked)",
    )
    parser.add_argument(
        "--pinned",
        choices=["auto", "on", "off"],
        default="auto",
        help="also run maas pinned to one core with the load generator on another (auto: "
        "where two CPUs and taskset are available)",
    )
    parser.add_argument(
        "--mlp-threads",
        type=int,
        help="intra-op threads of the MLP, set in its configuration (default: the server sizes "
        "them; os.cpu_count() is how maas sized them before it read the CPUs it may use)",
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    parser.add_argument("--json", dest="json_out", type=Path, help="save the results here")
    parser.add_argument("--baseline", type=Path, help="compare with results saved by --json")
    parser.add_argument(
        "--check", action="store_true", help="exit 1 when a target is missed (not only on errors)"
    )
    args = parser.parse_args(argv)
    args.engines = ["raw", "httpx"] if args.engine == "both" else [args.engine]
    if args.quick:
        args.duration = min(args.duration, 0.3)
        args.count = min(args.count, 300)
        args.round_trips = min(args.round_trips, 5)

    with tempfile.TemporaryDirectory(prefix="maas-bench-") as tmp:
        rows, note = run(args, Path(tmp))
    found = ratios(rows, args.concurrency, args.engines)
    print_report(rows, found, note)
    for line in pinned_comparison(rows, args.concurrency, args.engines[0]):
        print(line)
    if args.baseline is not None:
        print_baseline(rows, args.baseline)
    if args.json_out is not None:
        args.json_out.write_text(
            json.dumps(
                {
                    "meta": {
                        "cpu_count": os.cpu_count(),
                        "duration": args.duration,
                        "count": args.count,
                        "concurrency": args.concurrency,
                        "client_processes": args.client_processes,
                        "engines": args.engines,
                        "note": note,
                        "source": source_state(),
                        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    },
                    "rows": [asdict(r) for r in rows],
                    "ratios": found,
                },
                indent=2,
            )
        )
        print(f"\nsaved to {args.json_out}")
    errors = sum(r.errors for r in rows)
    if errors:
        print(f"\n{errors} request(s) failed", file=sys.stderr)
        return 1
    if args.check and not all(e.get("passed", True) for e in found.values()):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
