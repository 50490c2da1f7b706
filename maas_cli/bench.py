"""``maas bench MODEL``: a bounded load against one model, with a live display and a summary.

``--concurrency`` requests are kept in flight (a closed loop, as a fleet of clients would) until
``--count`` requests or ``--duration`` seconds, whichever comes first. The inputs are random data
shaped from the model's metadata (variable dimensions: ``--batch-size`` for the first, 1 for the
others) unless ``--input`` gives them. The summary: requests, errors, requests/s and rows/s, and
p50/p90/p99 latency of the successful requests.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import typer

from ._common import async_client_from, console, fail, reporting_errors
from ._tensors import read_inputs

if TYPE_CHECKING:
    from maas_client import AsyncClient
    from maas_client.types import ModelMetadata

__all__ = ["bench", "random_inputs"]


def random_inputs(metadata: ModelMetadata, batch_size: int, seed: int = 0) -> dict[str, Any]:
    """Random inputs of the model's shapes and datatypes."""
    from maas_wire.codec import DATATYPES

    rng = np.random.default_rng(seed)
    inputs: dict[str, Any] = {}
    for spec in metadata.inputs:
        shape = [
            d if d >= 0 else (batch_size if axis == 0 else 1) for axis, d in enumerate(spec.shape)
        ]
        if spec.datatype == "BYTES":
            inputs[spec.name] = np.full(shape, b"maas", dtype=object)
            continue
        dtype = DATATYPES.get(spec.datatype, np.dtype(np.float32))
        if spec.datatype == "BF16":
            dtype = np.dtype(np.float32)
        if dtype.kind == "f":
            inputs[spec.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind == "b":
            inputs[spec.name] = rng.integers(0, 2, shape).astype(bool)
        else:
            inputs[spec.name] = rng.integers(0, 8, shape).astype(dtype)
    return inputs


@dataclass
class _Tally:
    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    started: int = 0

    @property
    def done(self) -> int:
        return len(self.latencies) + sum(self.errors.values())


def _rows(inputs: Any) -> int:
    arrays = list(inputs.values()) if isinstance(inputs, dict) else [inputs]
    first = np.asarray(arrays[0]) if arrays else np.zeros(0)
    return int(first.shape[0]) if first.ndim else 1


async def _run(
    client: AsyncClient,
    model: str,
    inputs: Any,
    *,
    concurrency: int,
    count: int | None,
    duration: float | None,
    binary: bool,
    progress: Any,
    task: Any,
) -> tuple[_Tally, float]:
    from maas_client import MaasError

    tally = _Tally()
    start = time.perf_counter()
    ends_at = start + duration if duration is not None else None

    def more() -> bool:
        if count is not None and tally.started >= count:
            return False
        return ends_at is None or time.perf_counter() < ends_at

    async def worker() -> None:
        while more():
            tally.started += 1
            sent = time.perf_counter()
            try:
                await client.infer(model, inputs, binary=binary)
            except MaasError as exc:
                tally.errors[type(exc).__name__] += 1
            else:
                tally.latencies.append(time.perf_counter() - sent)

    async def display() -> None:
        while True:
            elapsed = time.perf_counter() - start
            position = tally.done if count is not None else min(elapsed, duration or elapsed)
            progress.update(
                task,
                completed=position,
                description=f"{tally.done} requests, {tally.done / max(elapsed, 1e-9):.0f}/s, "
                f"{sum(tally.errors.values())} errors",
            )
            await asyncio.sleep(0.1)

    shown = asyncio.ensure_future(display())
    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        shown.cancel()
    return tally, time.perf_counter() - start


def _summary(tally: _Tally, seconds: float, rows: int) -> dict[str, Any]:
    latencies = np.array(tally.latencies) * 1000.0
    done = tally.done

    def pct(q: float) -> float | None:
        return round(float(np.percentile(latencies, q)), 3) if len(latencies) else None

    return {
        "requests": done,
        "errors": sum(tally.errors.values()),
        "error_kinds": dict(tally.errors),
        "seconds": round(seconds, 3),
        "requests_per_s": round(done / seconds, 1) if seconds else 0.0,
        "rows_per_s": round(len(latencies) * rows / seconds, 1) if seconds else 0.0,
        "p50_ms": pct(50),
        "p90_ms": pct(90),
        "p99_ms": pct(99),
    }


def bench(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="The model to load.")],
    concurrency: Annotated[
        int, typer.Option("--concurrency", "-c", min=1, help="Requests in flight at once.")
    ] = 8,
    duration: Annotated[
        float | None,
        typer.Option("--duration", "-t", min=0.1, help="Seconds to run (default 10 without -n)."),
    ] = None,
    count: Annotated[
        int | None, typer.Option("--count", "-n", min=1, help="Requests to send in all.")
    ] = None,
    batch_size: Annotated[
        int, typer.Option("--batch-size", "-b", min=1, help="Rows per request (random inputs).")
    ] = 1,
    encoding: Annotated[
        str, typer.Option("--encoding", help="Tensors as 'binary' or 'json'.")
    ] = "binary",
    input: Annotated[
        list[str] | None,
        typer.Option("--input", "-i", help="Inputs as for 'maas predict' instead of random ones."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="The summary as JSON.")] = False,
) -> None:
    """Load a model with concurrent requests and report requests/s, latency and errors.

    Example: maas bench digits --concurrency 16 --duration 10 --batch-size 32
    """
    if encoding not in ("binary", "json"):
        raise typer.BadParameter("use 'binary' or 'json'", param_hint="--encoding")
    if duration is None and count is None:
        duration = 10.0
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    err = console(stderr=True)

    async def main() -> tuple[_Tally, float, int]:
        async with async_client_from(ctx) as client:
            metadata = await client.models.get(model)
            inputs = (
                read_inputs(input, None, None) if input else random_inputs(metadata, batch_size)
            )
            await client.infer(model, inputs, binary=encoding == "binary")  # fails fast
            with Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TimeElapsedColumn(),
                console=err,
                transient=True,
                disable=not err.is_terminal,
            ) as progress:
                task = progress.add_task("starting", total=count if count else duration)
                tally, seconds = await _run(
                    client,
                    model,
                    inputs,
                    concurrency=concurrency,
                    count=count,
                    duration=duration,
                    binary=encoding == "binary",
                    progress=progress,
                    task=task,
                )
            return tally, seconds, _rows(inputs)

    with reporting_errors(ctx):
        tally, seconds, rows = asyncio.run(main())
    summary = _summary(tally, seconds, rows)
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        from rich.table import Table

        table = Table(
            "requests", "errors", "seconds", "req/s", "rows/s", "p50 ms", "p90 ms", "p99 ms"
        )
        table.add_row(
            *[
                "-" if summary[key] is None else str(summary[key])
                for key in (
                    "requests",
                    "errors",
                    "seconds",
                    "requests_per_s",
                    "rows_per_s",
                    "p50_ms",
                    "p90_ms",
                    "p99_ms",
                )
            ]
        )
        out = console()
        out.print(
            f"[bold]{model}[/bold]: concurrency {concurrency}, {rows} rows per request, {encoding}",
            highlight=False,
        )
        out.print(table)
        for kind, number in tally.errors.most_common():
            out.print(f"  {number} x {kind}", highlight=False)
    if summary["requests"] and summary["errors"] == summary["requests"]:
        raise fail("every request failed")
