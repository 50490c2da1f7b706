"""Embed images as the classifier's probability vectors and find each one's nearest neighbours.

A model's output doubles as an embedding: here the log of the 10 class probabilities of
``digits``, centred (raw probabilities are nearly one-hot, so every pair would look alike). Rows are
sent with ``infer_batched`` (chunks of the model's max_batch_size, 4 in flight) and compared by
cosine similarity.

    python examples/embed.py [--url URL] [--rows 2000]
"""

from __future__ import annotations

import argparse

import numpy as np

from maas_client import Client


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="the server (default: MAAS_BASE_URL or 127.0.0.1:8000)")
    parser.add_argument("--rows", type=int, default=2000)
    args = parser.parse_args()

    images = np.random.default_rng(1).random((args.rows, 64)).astype(np.float32) * 16
    with Client(args.url) as client:
        result = client.infer_batched("digits", images, outputs=["probabilities"], progress=False)
    embeddings = np.log(result["probabilities"] + 1e-9)
    embeddings -= embeddings.mean(axis=0)
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    similarity = unit @ unit[:3].T  # the first three images against every image
    for query in range(3):
        order = np.argsort(-similarity[:, query])
        neighbours = [int(i) for i in order if i != query][:5]
        scores = ", ".join(f"{i} ({similarity[i, query]:.3f})" for i in neighbours)
        print(f"image {query}: nearest {scores}")
    print(f"{len(result.chunks)} requests, {result.timing.seconds:.2f} s for {args.rows} rows")


if __name__ == "__main__":
    main()
