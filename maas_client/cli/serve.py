"""``maas serve``: run the server (needs the ``server`` extra)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

__all__ = ["serve"]


def serve(
    repository: Annotated[
        Path | None,
        typer.Argument(help="Model repository folder (default: the bundled examples)."),
    ] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    model_control: Annotated[
        str,
        typer.Option(help="'none': load every model at start; 'explicit': only through the API."),
    ] = "none",
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
    max_body_size: Annotated[
        int, typer.Option(help="Largest request body accepted, in bytes (413 above it).")
    ] = 64 * 1024 * 1024,
) -> None:
    """Serve a model repository over the Open Inference Protocol (KServe V2 / Triton).

    Example: maas serve ./models --port 8000 --model-control explicit
    """
    try:
        import uvicorn

        from maas_server import Settings, create_app, default_repository
    except ImportError as exc:
        typer.echo(
            f"maas serve needs the server extra: pip install 'maas[server]' ({exc})", err=True
        )
        raise typer.Exit(2) from None
    if model_control not in ("none", "explicit"):
        raise typer.BadParameter("use 'none' or 'explicit'", param_hint="--model-control")
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = Settings(
        repository=repository or default_repository(),
        model_control=model_control,  # type: ignore[arg-type]
        max_body_bytes=max_body_size,
    )
    uvicorn.run(create_app(settings), host=host, port=port, log_level=log_level.lower())
