"""``maas embed MODEL TEXT...``: embeddings of texts by a model whose configuration says
``"task": "embedding"``.

The texts come as arguments, or one per line on stdin. Without ``--format`` or ``--output`` the
answer is a summary table; ``--format json`` prints the vectors (a list of lists, one per text),
``--format npy`` writes a float32 ``[texts, dimensions]`` array; ``--output FILE`` writes either
to a file (the format from its suffix when not given). Many texts go in several requests, as
``client.embed`` sends them.
"""

from __future__ import annotations

import io
import json
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from ._common import USAGE_ERROR, client_from, console, fail, reporting_errors

__all__ = ["embed"]


class EmbedFormat(str, Enum):
    """How ``maas embed`` writes the vectors."""

    json = "json"
    npy = "npy"


def _texts(given: list[str] | None) -> list[str]:
    if given:
        return given
    stream = sys.stdin
    if stream is None or stream.isatty():
        raise fail("give the texts as arguments, or one per line on stdin", USAGE_ERROR)
    lines = [line.rstrip("\r\n") for line in stream.read().splitlines()]
    texts = [line for line in lines if line.strip()]
    if not texts:
        raise fail("stdin holds no texts (one per line)", USAGE_ERROR)
    return texts


def _npy(vectors: np.ndarray[Any, Any]) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, vectors)
    return buffer.getvalue()


def _summary(model: str, texts: list[str], vectors: np.ndarray[Any, Any], rows: int) -> None:
    from rich.table import Table

    out = console()
    count, dimensions = vectors.shape
    out.print(
        f"[bold]{model}[/bold]: {count} embedding{'s' if count != 1 else ''} of {dimensions} "
        f"dimensions ({vectors.dtype})",
        highlight=False,
    )
    table = Table("row", "text", "norm", "first values")
    for row in range(min(count, rows)):
        text = " ".join(texts[row].split())
        text = text if len(text) <= 48 else text[:47] + "…"
        head = ", ".join(f"{v:.4f}" for v in vectors[row, :3])
        table.add_row(str(row), text, f"{float(np.linalg.norm(vectors[row])):.4f}", f"[{head}, …]")
    out.print(table)
    if count > rows:
        out.print(f"… {count - rows} more rows (--format json, or --output FILE.npy)")


def embed(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="An embedding model the server serves.")],
    texts: Annotated[
        list[str] | None,
        typer.Argument(help="The texts (none: one per line on stdin).", show_default=False),
    ] = None,
    fmt: Annotated[
        EmbedFormat | None,
        typer.Option(
            "--format",
            "-f",
            help="json: a list of vectors; npy: a float32 array [texts, dimensions] (to "
            "--output, or to stdout when it is not a terminal). Default: a summary, or the "
            "suffix of --output.",
            case_sensitive=False,
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write the vectors to this file (.json or .npy)."),
    ] = None,
    version: Annotated[str | None, typer.Option("--version", "-v", help="Model version.")] = None,
    batch_size: Annotated[
        int | None,
        typer.Option("--batch-size", min=1, help="Texts per request (default: the model's)."),
    ] = None,
    rows: Annotated[int, typer.Option("--rows", min=1, help="Rows shown in the summary.")] = 10,
) -> None:
    """Embed texts with an embedding model (config "task": "embedding").

    Example: maas embed minilm "a cat sat on the mat" "a kitten" --format json
    """
    given = _texts(texts)
    if fmt is None and output is not None:
        fmt = EmbedFormat.npy if output.suffix.lower() == ".npy" else EmbedFormat.json
    if fmt is EmbedFormat.npy and output is None and sys.stdout.isatty():
        raise fail(
            "--format npy writes binary: give --output FILE.npy or redirect stdout", USAGE_ERROR
        )
    with client_from(ctx) as client, reporting_errors(ctx):
        vectors = client.embed(model, given, batch_size=batch_size, version=version, progress=True)
        if fmt is None:
            _summary(model, given, vectors, rows)
            return
        data = (
            _npy(vectors)
            if fmt is EmbedFormat.npy
            else (json.dumps(vectors.tolist()) + "\n").encode()
        )
        if output is not None:
            output.write_bytes(data)
            typer.echo(
                f"wrote {len(vectors)} embedding{'s' if len(vectors) != 1 else ''} of "
                f"{vectors.shape[1]} dimensions to {output}",
                err=True,
            )
        elif fmt is EmbedFormat.json:
            typer.echo(data.decode(), nl=False)
        else:
            sys.stdout.buffer.write(data)
            sys.stdout.flush()
