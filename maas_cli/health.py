"""``maas health``: is the server up and ready (and a model, with ``--model``)?"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from ._common import client_from, fail, reporting_errors

__all__ = ["health"]


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def health(
    ctx: typer.Context,
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Also check that this model is ready.")
    ] = None,
    version: Annotated[str | None, typer.Option(help="The model's version.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document.")] = False,
) -> None:
    """Check that the server is live and ready; exit status 1 when it is not.

    Example: maas health --model digits
    """
    with client_from(ctx) as client, reporting_errors(ctx):
        live = client.server.live()
        ready = client.server.ready()
        metadata = client.server.metadata()
        model_ready = client.models.ready(model, version) if model is not None else None
    report: dict[str, object] = {
        "url": client.base_url,
        "server": metadata.name,
        "version": metadata.version,
        "live": live,
        "ready": ready,
    }
    if model is not None:
        report["model"] = model
        report["model_ready"] = model_ready
    if as_json:
        typer.echo(json.dumps(report))
    else:
        typer.echo(
            f"{client.base_url}: {metadata.name} {metadata.version}, live: {_yes(live)}, "
            f"ready: {_yes(ready)}"
        )
        if model is not None:
            typer.echo(f"model {model}: ready: {_yes(bool(model_ready))}")
    if not (live and ready and model_ready is not False):
        raise fail("not ready" if model_ready is not False else f"model {model} is not ready")
