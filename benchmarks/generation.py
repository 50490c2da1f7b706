"""Text generation: time to first token and tokens/s through the server, against a plain
in-process Python loop over the same ONNX session (the lower bound).

What runs, one thing at a time so that nothing competes for the cores:

1. in process: ``OnnxModel.load`` of ``tiny_gpt`` with its own configuration (so the same session
   options as the server's), then greedy decoding with the KV cache in the simplest loop there is
   (``session.run``, arg max, present -> past), at batch 1 and at batch 8 (8 copies of the prompt,
   the best case for batching);
2. ``maas serve`` in a subprocess over a repository holding ``tiny_gpt``: 1 stream, then 8
   concurrent streams, through ``POST /v2/models/tiny_gpt/generate_stream``. The client is a raw
   asyncio HTTP/1.1 reader (on uvloop when installed) in this process.

Every generation is greedy, ``max_tokens`` new tokens with ``ignore_eos``, after the same prompt.
Per stream: TTFT = request sent -> first event; decode rate = (tokens - 1) / (last event - first
event). Aggregate tokens/s = all tokens / (first request sent -> last stream done). Medians over
``--repeat`` runs.

Targets (issue: streaming generation): server overhead per token <= 20% of the in-process step
time at 1 stream, i.e. ``1 / server decode rate <= 1.2 x in-process step``; and aggregate tokens/s
at 8 streams >= 3x that of 1 stream.

Usage::

    python benchmarks/generation.py                 # under 10 s
    python benchmarks/generation.py --quick         # a smoke run
    python benchmarks/generation.py --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.servers import cpu_seconds, free_port, maas_command, serve  # noqa: E402
from maas_server.config import load_config  # noqa: E402
from maas_server.runtime import OnnxModel  # noqa: E402
from maas_server.tokenizer import TextTokenizer  # noqa: E402

__all__ = ["Row", "main"]

MODEL_DIR = ROOT / "examples" / "model_repository" / "tiny_gpt"
PROMPT = "Licensed under the Apache License, Version 2.0"
OVERHEAD_TARGET = 0.20
SCALING_TARGET = 3.0


@dataclass
class Row:
    """One line of the table (medians over the repeats)."""

    target: str
    streams: int
    ttft_ms: float
    step_ms: float  # per token of one stream, first token excluded
    stream_tokens_per_s: float  # one stream's decode rate
    aggregate_tokens_per_s: float
    server_cpu_us_per_token: float | None = None


# --- in process -------------------------------------------------------------------------------


def load_model() -> OnnxModel:
    config = load_config(MODEL_DIR)
    return OnnxModel.load("tiny_gpt", 1, MODEL_DIR / "1" / "model.onnx", config)


def in_process(model: OnnxModel, prompt: list[int], streams: int, tokens: int) -> Row:
    """The plain loop: one session.run per token for all ``streams`` rows at once."""
    past_inputs = [s for s in model.inputs if s.name.startswith("past_key_values.")]
    names = ["logits", *(n.name.replace("past_key_values", "present") for n in past_inputs)]
    with model.session() as session:
        start = time.perf_counter()
        ids = np.array([prompt] * streams, dtype=np.int64)
        mask = np.ones_like(ids)
        feeds: dict[str, Any] = {
            "input_ids": ids,
            "attention_mask": mask,
            "position_ids": np.broadcast_to(np.arange(len(prompt)), ids.shape).copy(),
        }
        for spec in past_inputs:
            feeds[spec.name] = np.zeros((streams, spec.shape[1], 0, spec.shape[3]), np.float32)
        outputs = session.run(names, feeds)
        first = time.perf_counter()
        for step in range(tokens - 1):
            token = outputs[0][:, -1, :].argmax(axis=1)
            mask = np.concatenate([mask, np.ones((streams, 1), np.int64)], axis=1)
            feeds = {
                "input_ids": token[:, None],
                "attention_mask": mask,
                "position_ids": np.full((streams, 1), len(prompt) + step, np.int64),
            }
            for spec, present in zip(past_inputs, outputs[1:], strict=True):
                feeds[spec.name] = present
            outputs = session.run(names, feeds)
        outputs[0][:, -1, :].argmax(axis=1)
        end = time.perf_counter()
    step = (end - first) / (tokens - 1)
    return Row(
        "in-process loop",
        streams,
        ttft_ms=(first - start) * 1e3,
        step_ms=step * 1e3,
        stream_tokens_per_s=1 / step,
        aggregate_tokens_per_s=streams * tokens / (end - start),
    )


# --- through the server -----------------------------------------------------------------------


@dataclass
class StreamTiming:
    sent: float
    first: float
    last: float
    tokens: int


async def one_stream(port: int, body: bytes) -> StreamTiming:
    """POST generate_stream on a fresh connection and read the events as they come."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (
        "POST /v2/models/tiny_gpt/generate_stream HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode("latin-1")
    sent = time.perf_counter()
    writer.write(head + body)
    status = await reader.readuntil(b"\r\n\r\n")
    if b" 200 " not in status.split(b"\r\n", 1)[0]:
        raise RuntimeError(f"generate_stream answered {status!r}")
    first = last = 0.0
    tokens = 0
    buffer = b""
    done = False
    while not done:
        size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0], 16)
        if size == 0:
            break
        buffer += (await reader.readexactly(size + 2))[:-2]
        now = time.perf_counter()
        while b"\n\n" in buffer:
            event, buffer = buffer.split(b"\n\n", 1)
            if not first:
                first = now
            last = now
            if b'"finish_reason"' in event:
                tokens = json.loads(event[len(b"data: ") :])["completion_tokens"]
                done = True
    writer.close()
    return StreamTiming(sent, first, last, tokens)


async def server_round(port: int, streams: int, tokens: int) -> list[StreamTiming]:
    body = json.dumps(
        {"text_input": PROMPT, "max_tokens": tokens, "ignore_eos": True, "temperature": 0}
    ).encode()
    return list(await asyncio.gather(*(one_stream(port, body) for _ in range(streams))))


def run_round(port: int, streams: int, tokens: int) -> list[StreamTiming]:
    """:func:`server_round` on a fresh event loop (uvloop when it is installed, as for the
    server: the client shares the machine's cores with the server and should cost little)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(server_round(port, streams, tokens))
    loop = uvloop.new_event_loop()
    try:
        return loop.run_until_complete(server_round(port, streams, tokens))
    finally:
        loop.close()


def summarize(target: str, streams: int, rounds: list[list[StreamTiming]]) -> Row:
    ttft, step, whole, aggregate = [], [], [], []
    for timings in rounds:
        for t in timings:
            ttft.append(t.first - t.sent)
            whole.append((t.last - t.sent) / max(t.tokens, 1))
            if t.last > t.first:
                # A stream whose tokens all arrived in one read has no measurable step time.
                step.append((t.last - t.first) / max(t.tokens - 1, 1))
        wall = max(t.last for t in timings) - min(t.sent for t in timings)
        aggregate.append(sum(t.tokens for t in timings) / wall)
    # Without one measurable stream, the time from sending to the last token per token is an
    # upper bound of the step time (it includes the time to the first token).
    median_step = statistics.median(step or whole)
    return Row(
        target,
        streams,
        ttft_ms=statistics.median(ttft) * 1e3,
        step_ms=median_step * 1e3,
        stream_tokens_per_s=1 / median_step,
        aggregate_tokens_per_s=statistics.median(aggregate),
    )


def measure(tokens: int, repeat: int, workdir: Path) -> tuple[list[Row], dict[int, list[float]]]:
    """Every scenario ``repeat`` times, the in-process loop and the server taking turns so
    that both see the same background load; also each server/in-process step-time ratio."""
    tokenizer = TextTokenizer.load(MODEL_DIR)
    prompt = tokenizer.encode(PROMPT)
    model = load_model()
    repository = workdir / "repository"
    shutil.copytree(MODEL_DIR, repository / "tiny_gpt")
    port = free_port()
    local: dict[int, list[Row]] = {1: [], 8: []}
    remote: dict[int, list[list[StreamTiming]]] = {1: [], 8: []}
    ratios: dict[int, list[float]] = {1: [], 8: []}
    cpu: dict[int, float] = {1: 0.0, 8: 0.0}
    with serve("maas", maas_command(repository, port), port, workdir / "maas.log") as server:
        for streams in (1, 8):  # warm up both
            in_process(model, prompt, streams, tokens)
            run_round(port, streams, tokens)
        for _ in range(repeat):
            for streams in (1, 8):
                row = in_process(model, prompt, streams, tokens)
                before = cpu_seconds(server.process.pid)
                timings = run_round(port, streams, tokens)
                after = cpu_seconds(server.process.pid)
                if before is not None and after is not None:
                    cpu[streams] += after - before
                local[streams].append(row)
                remote[streams].append(timings)
                served = summarize("maas", streams, [timings])
                ratios[streams].append(served.step_ms / row.step_ms)
    model.close()
    rows: list[Row] = []
    for streams in (1, 8):
        runs = local[streams]
        rows.append(
            Row(
                "in-process loop",
                streams,
                ttft_ms=statistics.median(r.ttft_ms for r in runs),
                step_ms=statistics.median(r.step_ms for r in runs),
                stream_tokens_per_s=statistics.median(r.stream_tokens_per_s for r in runs),
                aggregate_tokens_per_s=statistics.median(r.aggregate_tokens_per_s for r in runs),
            )
        )
    for streams in (1, 8):
        row = summarize("maas generate_stream", streams, remote[streams])
        total = sum(t.tokens for r in remote[streams] for t in r)
        if cpu[streams] and total:
            row.server_cpu_us_per_token = cpu[streams] / total * 1e6
        rows.append(row)
    return rows, ratios


# --- report -----------------------------------------------------------------------------------


def format_row(row: Row) -> str:
    cpu = f"{row.server_cpu_us_per_token:8.1f}" if row.server_cpu_us_per_token else "       -"
    return (
        f"{row.target:<22} {row.streams:>7} {row.ttft_ms:>9.3f} {row.step_ms:>9.4f} "
        f"{row.stream_tokens_per_s:>12.0f} {row.aggregate_tokens_per_s:>12.0f} {cpu}"
    )


HEADER = (
    f"{'target':<22} {'streams':>7} {'TTFT ms':>9} {'ms/token':>9} {'stream tok/s':>12} "
    f"{'total tok/s':>12} {'srv us/tok':>8}"
)


def verdicts(rows: list[Row], ratios: dict[int, list[float]]) -> list[tuple[str, float, str, bool]]:
    by = {(r.target.split()[0], r.streams): r for r in rows}
    one, eight = by[("maas", 1)], by[("maas", 8)]
    overhead = statistics.median(ratios[1]) - 1
    scaling = eight.aggregate_tokens_per_s / one.aggregate_tokens_per_s
    return [
        (
            "server overhead per token at 1 stream (vs in-process step)",
            overhead,
            f"<= {OVERHEAD_TARGET:.0%}",
            overhead <= OVERHEAD_TARGET,
        ),
        (
            "aggregate tokens/s, 8 streams / 1 stream",
            scaling,
            f">= {SCALING_TARGET:g}x",
            scaling >= SCALING_TARGET,
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=200, help="new tokens per stream")
    parser.add_argument("--repeat", type=int, default=15, help="runs per scenario")
    parser.add_argument("--quick", action="store_true", help="50 tokens, 2 runs")
    parser.add_argument("--json", type=Path, help="write the rows and verdicts here")
    args = parser.parse_args(argv)
    if args.quick:
        args.tokens, args.repeat = 50, 2
    print(f"{args.tokens} new tokens per stream after {PROMPT!r}; greedy; {args.repeat} runs")
    with tempfile.TemporaryDirectory() as tmp:
        rows, ratios = measure(args.tokens, args.repeat, Path(tmp))
    print(HEADER)
    for row in rows:
        print(f"  {format_row(row)}")
    print()
    failed = False
    results = verdicts(rows, ratios)
    for name, value, target, ok in results:
        shown = f"{value:+.1%}" if "overhead" in name else f"{value:.2f}x"
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {shown} (target {target})")
        failed |= not ok
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "rows": [asdict(r) for r in rows],
                    "verdicts": [
                        {"name": n, "value": v, "target": t, "pass": ok} for n, v, t, ok in results
                    ],
                },
                indent=2,
            )
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
