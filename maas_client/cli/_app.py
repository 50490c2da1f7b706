"""The typer application behind the ``maas`` command; each command group lives in its own module."""

from __future__ import annotations

import typer

from .keys import keys_app
from .serve import serve

__all__ = ["app", "main"]

app = typer.Typer(
    name="maas",
    help="Models as a service: serve ONNX models and call them over the Open Inference Protocol.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Models as a service: serve ONNX models and call them over the Open Inference Protocol."""


app.command(name="serve")(serve)
app.add_typer(keys_app, name="keys")


def main() -> None:
    """Entry point of the ``maas`` console script."""
    app()
