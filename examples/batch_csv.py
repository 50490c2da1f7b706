"""Score a CSV file: read it with pandas, send every row through ``digits``, write the predictions.

The 64 numeric columns are the model's one input (``[-1, 64]``); other columns (an id) are left
out of the request and kept in the output. Without --input, a CSV of random rows is written first.

    python examples/batch_csv.py [--input rows.csv] [--output predictions.csv] [--url URL]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from maas_client import BatchError, Client


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="the server (default: MAAS_BASE_URL or 127.0.0.1:8000)")
    parser.add_argument("--input", type=Path, default=Path("rows.csv"))
    parser.add_argument("--output", type=Path, default=Path("predictions.csv"))
    parser.add_argument("--rows", type=int, default=5000, help="rows of the generated CSV")
    args = parser.parse_args()

    if not args.input.exists():
        pixels = np.random.default_rng(2).random((args.rows, 64)) * 16
        frame = pd.DataFrame(pixels.round(2), columns=[f"px{i}" for i in range(64)])
        frame.insert(0, "id", [f"img-{i:05d}" for i in range(args.rows)])
        frame.to_csv(args.input, index=False)

    table = pd.read_csv(args.input)
    with Client(args.url) as client:
        try:
            result = client.infer_batched("digits", table, batch_size=512, progress=True)
        except BatchError as exc:  # keep what succeeded, say what did not
            print(f"{len(exc.failed_rows)} rows failed: {exc}")
            if exc.result is None:
                raise
            result, table = exc.result, table.iloc[exc.succeeded_rows]
    predictions = result.to_pandas()  # label and probabilities_0..9, indexed like the input
    predictions.insert(0, "id", table["id"])
    predictions.to_csv(args.output, index=False)
    print(f"wrote {len(predictions)} predictions to {args.output}")
    print(predictions[["id", "label"]].head().to_string(index=False))


if __name__ == "__main__":
    main()
