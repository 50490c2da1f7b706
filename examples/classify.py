"""Classify 8x8 digit images with the bundled ``digits`` model and show the top classes.

Run against a server (``maas serve``, or MAAS_BASE_URL / --url), or in-process with --local:

    python examples/classify.py
    python examples/classify.py --local
"""

from __future__ import annotations

import argparse

import numpy as np

from maas_client import Client, Output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="the server (default: MAAS_BASE_URL or 127.0.0.1:8000)")
    parser.add_argument("--local", action="store_true", help="run the server in-process")
    parser.add_argument("--images", type=int, default=4)
    args = parser.parse_args()

    # Pixel values 0..16, as in scikit-learn's digits: a blurred vertical bar looks like a one.
    images = np.zeros((args.images, 8, 8), dtype=np.float32)
    images[:, 1:7, 3:5] = 16.0
    images += np.random.default_rng(0).random(images.shape).astype(np.float32) * 4

    client = Client.local() if args.local else Client(args.url)
    with client:
        meta = client.models.get("digits")
        print(repr(meta))
        # The classification extension: the top 3 classes of each row, with the labels file.
        result = client.infer(
            "digits",
            images.reshape(len(images), 64),
            outputs=[Output("probabilities", classification=3), "label"],
        )
        pairs = zip(result["probabilities"], result["label"], strict=True)
        for row, (top, label) in enumerate(pairs):
            classes = ", ".join(entry.decode().split(":", 2)[2] for entry in top)
            print(f"image {row}: label {label} (top 3: {classes})")
        print(f"{result.timing.seconds * 1000:.1f} ms, request id {result.request_id}")


if __name__ == "__main__":
    main()
