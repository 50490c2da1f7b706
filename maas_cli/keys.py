"""``maas keys create|list|revoke``: manage the API keys file the server reads.

The file holds hashes only; ``create`` prints the new key once. The server notices the change
within about a second, so keys are added and revoked without a restart. The file format lives
with the server (:mod:`maas_server.keys_file`, standard library only), imported when a command
runs, so these commands work without the server extra.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

__all__ = ["keys_app"]

keys_app = typer.Typer(
    name="keys",
    help="Create, list and revoke API keys (the keys file holds their hashes only).",
    no_args_is_help=True,
)

KeysFile = Annotated[
    Path,
    typer.Option(
        "--file",
        "-f",
        envvar="MAAS_SERVER_API_KEYS_FILE",
        help="The keys file (what 'maas serve --api-keys-file' reads).",
    ),
]
_DEFAULT_FILE = Path("maas-keys.json")


def _keys_file() -> Any:
    from maas_server import keys_file

    return keys_file


def _split(text: str | None) -> list[str] | None:
    if text is None:
        return None
    return [part.strip() for part in text.split(",") if part.strip()]


@keys_app.command("create")
def create(
    name: Annotated[str, typer.Option("--name", help="Who the key is for (shown in logs).")],
    scopes: Annotated[
        str, typer.Option("--scopes", help="Comma-separated: infer, read, admin, jobs.")
    ] = "infer,read",
    models: Annotated[
        str | None,
        typer.Option("--models", help="Comma-separated models the key may use (default: all)."),
    ] = None,
    rate: Annotated[
        str | None, typer.Option("--rate", help="Requests allowed, like 50/s, 600/m or 100/h.")
    ] = None,
    burst: Annotated[
        int | None, typer.Option("--burst", help="Requests allowed at once (default: 1 s worth).")
    ] = None,
    concurrency: Annotated[
        int | None, typer.Option("--concurrency", help="Requests in flight at once.")
    ] = None,
    file: KeysFile = _DEFAULT_FILE,
) -> None:
    """Make a key, append its hash to the keys file and print the key (shown only this once).

    Example: maas keys create --name ci --scopes infer,read --models mlp --rate 50/s
    """
    kf = _keys_file()
    try:
        per_second = kf.parse_rate(rate) if rate is not None else None
        key, entry = kf.add_key(
            file,
            name,
            _split(scopes) or [],
            models=_split(models),
            rate=per_second,
            burst=burst,
            concurrency=concurrency,
        )
    except kf.KeysFileError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(key)
    typer.echo(
        f"key {entry.name!r} ({', '.join(entry.scopes)}) added to {file}; it is shown only once",
        err=True,
    )


@keys_app.command("list")
def list_keys(
    file: KeysFile = _DEFAULT_FILE,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document.")] = False,
) -> None:
    """List the keys of the file: names, scopes, models and limits (never the keys).

    Example: maas keys list --file maas-keys.json
    """
    kf = _keys_file()
    try:
        entries = kf.read_keys(file)
    except kf.KeysFileError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    if as_json:
        rows = [{k: v for k, v in e.to_json().items() if k != "hash"} for e in entries]
        typer.echo(json.dumps(rows, indent=2))
        return
    if not entries:
        typer.echo(f"no keys in {file}")
        return
    for e in entries:
        limits = []
        if e.rate is not None:
            limits.append(f"rate={e.rate:g}/s" + (f" burst={e.burst}" if e.burst else ""))
        if e.concurrency is not None:
            limits.append(f"concurrency={e.concurrency}")
        models = ",".join(e.models) if e.models is not None else "*"
        typer.echo(
            f"{e.name}\tscopes={','.join(e.scopes)}\tmodels={models}\t"
            f"{' '.join(limits) or 'unlimited'}\tcreated={e.created or '-'}"
        )


@keys_app.command("revoke")
def revoke(
    name: Annotated[str, typer.Argument(help="The name of the key to remove.")],
    file: KeysFile = _DEFAULT_FILE,
) -> None:
    """Remove a key; a running server refuses it within about a second.

    Example: maas keys revoke ci --file maas-keys.json
    """
    kf = _keys_file()
    try:
        removed = kf.revoke_key(file, name)
    except kf.KeysFileError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    if not removed:
        typer.echo(f"error: no key named {name!r} in {file}", err=True)
        raise typer.Exit(1)
    typer.echo(f"revoked {name!r}")
