"""``maas datasets push|list|show|pull|delete``: the server's datasets (tables and arrays for
batch jobs and training)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from ._common import client_from, console, reporting_errors

__all__ = ["datasets_app"]

datasets_app = typer.Typer(
    name="datasets",
    help="Upload, list, show, download and delete the server's datasets.",
    no_args_is_help=True,
)

AsJson = Annotated[bool, typer.Option("--json", help="One JSON document.")]
Name = Annotated[str, typer.Argument(help="The dataset's name.")]
Version = Annotated[
    int | None, typer.Option("--version", "-v", help="Dataset version (default: the newest).")
]


def _dump(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2))


def _schema_text(info: Any) -> str:
    return ", ".join(
        f"{f.name} {f.datatype}" + (f"{f.shape}" if f.shape else "") for f in info.schema_
    )


@datasets_app.command("push")
def push(
    ctx: typer.Context,
    name: Name,
    file: Annotated[Path, typer.Argument(help="A .csv, .parquet, .jsonl, .npy or .npz file.")],
    format: Annotated[
        str | None,
        typer.Option("--format", help="csv, parquet, jsonl, npy or npz (default: the suffix)."),
    ] = None,
    as_json: AsJson = False,
) -> None:
    """Upload a file as the next version of a dataset (streamed; the server infers its schema).

    Example: maas datasets push digits digits.npz
    """
    with client_from(ctx) as client, reporting_errors(ctx):
        info = client.datasets.upload(name, file, format=format)
    if as_json:
        _dump(info.model_dump(by_alias=True))
        return
    typer.echo(f"stored {info.name} version {info.version}: {info.rows} rows, {_schema_text(info)}")


@datasets_app.command("list")
def list_datasets(ctx: typer.Context, as_json: AsJson = False) -> None:
    """List the datasets (the newest version of each) with their rows, size and schema.

    Example: maas datasets list
    """
    with client_from(ctx) as client, reporting_errors(ctx):
        found = client.datasets.list()
    if as_json:
        _dump([info.model_dump(by_alias=True) for info in found])
        return
    from rich.table import Table

    table = Table("dataset", "version", "format", "rows", "bytes", "schema", "owner")
    for info in found:
        table.add_row(
            info.name,
            str(info.version),
            info.format,
            str(info.rows),
            str(info.size_bytes),
            _schema_text(info),
            info.owner or "-",
        )
    console().print(table)


@datasets_app.command("show")
def show(
    ctx: typer.Context,
    name: Name,
    version: Version = None,
    rows: Annotated[int, typer.Option("--rows", help="Rows to show (up to 100).")] = 5,
    as_json: AsJson = False,
) -> None:
    """Show a dataset version: schema, rows, size, sha256, owner and its first rows.

    Example: maas datasets show digits --rows 3
    """
    with client_from(ctx) as client, reporting_errors(ctx):
        info = client.datasets.get(name, version, rows=rows)
    if as_json:
        _dump(info.model_dump(by_alias=True))
        return
    from rich.table import Table

    out = console()
    out.print(
        f"[bold]{info.name}[/bold] version {info.version} of "
        f"{', '.join(str(v) for v in info.versions)}",
        highlight=False,
    )
    out.print(
        f"{info.format} ({info.kind}), {info.rows} rows, {info.size_bytes} bytes, "
        f"created {info.created} by {info.owner or '-'}",
        highlight=False,
    )
    out.print(f"sha256 {info.sha256}", highlight=False)
    schema = Table("field", "datatype", "shape per row")
    for field in info.schema_:
        schema.add_row(field.name, field.datatype, str(field.shape))
    out.print(schema)
    if info.preview:
        first = Table(*info.preview[0])
        for row in info.preview:
            first.add_row(*(str(value) for value in row.values()))
        out.print(first)


@datasets_app.command("pull")
def pull(
    ctx: typer.Context,
    name: Name,
    version: Version = None,
    format: Annotated[
        str,
        typer.Option("--format", help="original (the uploaded file), parquet, csv or npz."),
    ] = "original",
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="File or folder (default: the current folder)."),
    ] = None,
) -> None:
    """Download a dataset version, as uploaded or converted.

    Example: maas datasets pull digits --format parquet -o digits.parquet
    """
    with client_from(ctx) as client, reporting_errors(ctx):
        path = client.datasets.download(
            name, version=version, format=format, to=output or Path.cwd()
        )
    typer.echo(f"wrote {path}")


@datasets_app.command("delete")
def delete(ctx: typer.Context, name: Name, version: Version = None) -> None:
    """Delete a dataset version, or every version of a dataset (refused while a job reads it).

    Example: maas datasets delete digits --version 1
    """
    with client_from(ctx) as client, reporting_errors(ctx):
        deleted = client.datasets.delete(name, version)
    typer.echo(
        f"deleted {name} version{'s' if len(deleted) > 1 else ''} " + ", ".join(map(str, deleted))
    )
