"""``maas predict MODEL``: one inference from files, inline JSON or stdin.

The answer is a table (classifier outputs with a labels file as their top-k labels and scores,
other outputs as values), ``--json`` (every output in full), or ``--output FILE.npz``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import typer

from ._common import client_from, console, reporting_errors
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
) -> None:
    """Run a model once on inputs from files, inline JSON or stdin.

    Example: maas predict digits --input input=images.npy --top-k 3
    """
    from maas_client import Output

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
    elif output is None:
        _table(result, classified, rows)
