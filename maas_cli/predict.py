"""``maas predict MODEL``: one inference from files, inline JSON or stdin, or from texts and
images for a pipeline model.

``--text "..."`` (repeated) sends the texts as the BYTES input ``text``, ``--image FILE``
(repeated) the files' bytes as the BYTES input ``image``: the inputs of a model whose
configuration names a ``task`` (embedding, text or image classification; ``--top-k`` is sent as
the ``top_k`` parameter to a classifier). The answer is a table (labels and scores per input,
an embeddings summary, classifier outputs with a labels file as their top-k labels and scores,
other outputs as values), ``--json`` (every output in full), or ``--output FILE.npz``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import typer

from ._common import USAGE_ERROR, client_from, console, fail, reporting_errors
from ._tensors import read_inputs

if TYPE_CHECKING:
    from maas_client import Client, InferResult, Output

__all__ = ["predict"]

_FLOATS = ("FP16", "FP32", "FP64", "BF16")


def _labelled_outputs(client: Client, model: str, version: str | None) -> set[str]:
    """Outputs that name a labels file in the model's configuration and hold class scores."""
    from maas_client import APIStatusError

    try:
        config = client.models.config(model, version)
        metadata = client.models.get(model, version)
    except APIStatusError:
        return set()  # a server without the configuration endpoint: plain values
    scores = {
        spec.name
        for spec in metadata.outputs
        if spec.datatype in _FLOATS and len(spec.shape) == 2 and spec.shape[1] != 1
    }
    labelled = {
        tensor.name for tensor in config.output if (tensor.model_extra or {}).get("label_filename")
    }
    return scores & labelled


def _stdin() -> bytes | None:
    stream = sys.stdin
    if stream is None or stream.isatty():
        return None
    return stream.buffer.read() if hasattr(stream, "buffer") else stream.read().encode()


def _jsonable(array: np.ndarray[Any, Any]) -> Any:
    if array.dtype == object:
        return [
            v.decode("utf-8", errors="replace") if isinstance(v, bytes) else v
            for v in array.reshape(-1)
        ]
    return array.tolist()


def _classes(cell: np.ndarray[Any, Any]) -> str:
    """``b"0.425602:4:four"`` entries (Triton's classification format) as ``four 0.426``."""
    shown = []
    for entry in np.asarray(cell).reshape(-1):
        text = entry.decode("utf-8", errors="replace") if isinstance(entry, bytes) else str(entry)
        score, _, rest = text.partition(":")
        index, _, label = rest.partition(":")
        try:
            shown.append(f"{label or index} {float(score):.3f}")
        except ValueError:
            shown.append(text)
    return ", ".join(shown)


def _value(cell: np.ndarray[Any, Any]) -> str:
    if cell.dtype == object:
        items = [
            v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in cell.flat
        ]
        return ", ".join(items[:8]) + (" …" if len(items) > 8 else "")
    return np.array2string(cell, threshold=8, edgeitems=3, precision=4, separator=", ")


def _table(result: InferResult, classified: set[str], rows: int) -> None:
    from rich.table import Table

    out = console()
    out.print(
        f"[bold]{result.model_name}[/bold] version {result.model_version or '-'}, "
        f"{result.timing.seconds * 1000:.1f} ms, request id {result.request_id}",
        highlight=False,
    )
    names = list(result.outputs)
    batched = [n for n in names if result[n].ndim >= 1]
    count = max((len(result[n]) for n in batched), default=1)
    table = Table("row", *[f"{n} (top classes)" if n in classified else n for n in names])
    for row in range(min(count, rows)):
        cells = []
        for name in names:
            array = result[name]
            cell = array[row] if array.ndim >= 1 and row < len(array) else array
            cells.append(_classes(cell) if name in classified else _value(np.asarray(cell)))
        table.add_row(str(row), *cells)
    out.print(table)
    if count > rows:
        out.print(f"… {count - rows} more rows (--rows N, --json or --output FILE.npz)")


def predict(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="The model to run.")],
    input: Annotated[
        list[str] | None,
        typer.Option(
            "--input",
            "-i",
            help="NAME=FILE (.npy, .npz, .json, .csv) or NAME=JSON; a .npz or .json file alone "
            "gives every input it names. Repeat for several inputs.",
        ),
    ] = None,
    data: Annotated[
        str | None,
        typer.Option(
            "--data", "-d", help='Inputs inline: {"name": [...]}, or a nested list for one input.'
        ),
    ] = None,
    version: Annotated[str | None, typer.Option("--version", "-v", help="Model version.")] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Every output, in full, as JSON.")
    ] = False,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the outputs to this .npz file.")
    ] = None,
    top_k: Annotated[
        int, typer.Option("--top-k", "-k", min=1, help="Classes shown per row of a classifier.")
    ] = 3,
    rows: Annotated[int, typer.Option("--rows", min=1, help="Rows shown in the table.")] = 10,
    text: Annotated[
        list[str] | None,
        typer.Option(
            "--text",
            "-t",
            help="A text for a model that takes texts (task embedding or text-classification). "
            "Repeat for several.",
        ),
    ] = None,
    image: Annotated[
        list[Path] | None,
        typer.Option(
            "--image",
            exists=True,
            dir_okay=False,
            readable=True,
            help="An image file (JPEG, PNG, WebP...) for an image-classification model. Repeat "
            "for several.",
        ),
    ] = None,
) -> None:
    """Run a model once on inputs from files, inline JSON or stdin, or on texts or images.

    Example: maas predict digits --input input=images.npy --top-k 3

    Example: maas predict minilm --text "a cat sat on the mat" --text "a kitten"
    """
    from maas_client import Output

    if text or image:
        if input or data is not None:
            raise fail("--text and --image replace --input and --data: give one kind", USAGE_ERROR)
        if text and image:
            raise fail(
                "a model takes texts or images: give --text or --image, not both", USAGE_ERROR
            )
        _predict_pipeline(
            ctx, model, version, text or [], image or [], top_k, as_json, output, rows
        )
        return
    stdin = _stdin() if not input and data is None else None
    inputs = read_inputs(input or [], data, stdin)
    with client_from(ctx) as client, reporting_errors(ctx):
        classified: set[str] = set()
        wanted: list[str | Output] | None = None
        if not as_json and output is None:
            classified = _labelled_outputs(client, model, version)
            if classified:
                names = [spec.name for spec in client.models.get(model, version).outputs]
                wanted = [Output(n, classification=top_k) if n in classified else n for n in names]
        result = client.infer(model, inputs, version=version, outputs=wanted)
    _answer(result, classified, as_json, output, rows)


def _answer(
    result: InferResult,
    classified: set[str],
    as_json: bool,
    output: Path | None,
    rows: int,
    shown: list[str] | None = None,
) -> None:
    """The result as ``--output``, ``--json`` or a table (``shown``: the texts or files given
    with --text or --image)."""
    if output is not None:
        arrays: dict[str, Any] = dict(result.outputs)
        np.savez(output, **arrays)
        typer.echo(f"wrote {', '.join(result.outputs)} to {output}", err=True)
    if as_json:
        document = {
            "model_name": result.model_name,
            "model_version": result.model_version,
            "request_id": result.request_id,
            "outputs": {
                name: {
                    "datatype": wire.datatype,
                    "shape": list(result[name].shape),
                    "data": _jsonable(result[name]),
                }
                for name, wire in ((w.name, w) for w in result.response.outputs)
            },
        }
        typer.echo(json.dumps(document))
    elif output is None and shown is not None and {"label", "score"} <= set(result.outputs):
        _labels_table(result, shown, rows)
    elif output is None and shown is not None and "embedding" in result.outputs:
        _embeddings_table(result, shown, rows)
    elif output is None:
        _table(result, classified, rows)


# --- texts and images -----------------------------------------------------------------------------


def _predict_pipeline(
    ctx: typer.Context,
    model: str,
    version: str | None,
    texts: list[str],
    images: list[Path],
    top_k: int,
    as_json: bool,
    output: Path | None,
    rows: int,
) -> None:
    """Texts or images as the BYTES input ``text`` or ``image``; ``top_k`` to a classifier."""
    values = np.empty(len(texts) or len(images), dtype=object)
    with client_from(ctx) as client, reporting_errors(ctx):
        if images:
            values[:] = [path.read_bytes() for path in images]
        else:
            values[:] = texts
        metadata = client.models.get(model, version)
        outputs = {spec.name for spec in metadata.outputs}
        parameters = {"top_k": top_k} if "label" in outputs else None
        name = "image" if images else "text"
        result = client.infer(model, {name: values}, version=version, parameters=parameters)
    shown = [path.name for path in images] if images else texts
    _answer(result, set(), as_json, output, rows, shown)


def _heading(result: InferResult) -> str:
    return (
        f"[bold]{result.model_name}[/bold] version {result.model_version or '-'}, "
        f"{result.timing.seconds * 1000:.1f} ms, request id {result.request_id}"
    )


def _short(text: str, width: int = 48) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _labels_table(result: InferResult, shown: list[str], rows: int) -> None:
    from rich.table import Table

    out = console()
    out.print(_heading(result), highlight=False)
    labels, scores = result["label"], result["score"]
    table = Table("row", "input", "label", "score", "next classes")
    for row in range(min(len(shown), rows)):
        pairs = [
            (v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v), float(p))
            for v, p in zip(np.ravel(labels[row]), np.ravel(scores[row]), strict=True)
        ]
        best, rest = pairs[0], pairs[1:]
        table.add_row(
            str(row),
            _short(shown[row]),
            best[0],
            f"{best[1]:.3f}",
            ", ".join(f"{label} {score:.3f}" for label, score in rest),
        )
    out.print(table)
    if len(shown) > rows:
        out.print(f"… {len(shown) - rows} more rows (--rows N, --json or --output FILE.npz)")


def _embeddings_table(result: InferResult, shown: list[str], rows: int) -> None:
    from rich.table import Table

    out = console()
    out.print(_heading(result), highlight=False)
    vectors = np.asarray(result["embedding"], dtype=np.float32)
    out.print(
        f"{vectors.shape[0]} embedding{'s' if vectors.shape[0] != 1 else ''} of "
        f"{vectors.shape[-1]} dimensions ({vectors.dtype})",
        highlight=False,
    )
    table = Table("row", "input", "norm", "first values")
    for row in range(min(len(shown), rows)):
        vector = vectors[row]
        head = ", ".join(f"{v:.4f}" for v in vector[:3])
        table.add_row(
            str(row), _short(shown[row]), f"{float(np.linalg.norm(vector)):.4f}", f"[{head}, …]"
        )
    out.print(table)
    if len(shown) > rows:
        out.print(f"… {len(shown) - rows} more rows (--rows N, --json or --output FILE.npz)")
