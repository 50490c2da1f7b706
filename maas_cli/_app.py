"""The typer application behind the ``maas`` command; each command group lives in its own module."""

from __future__ import annotations

import typer

from ._common import root
from .bench import bench
from .generate import generate
from .health import health
from .keys import keys_app
from .models import models_app
from .predict import predict
from .serve import serve

__all__ = ["app", "main"]

app = typer.Typer(
    name="maas",
    help="Models as a service: serve ONNX models and call them over the Open Inference Protocol.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


app.callback()(root)
app.command(name="serve")(serve)
app.command(name="generate")(generate)
app.add_typer(keys_app, name="keys")
app.command(name="health")(health)
app.add_typer(models_app, name="models")
app.command(name="predict")(predict)
app.command(name="bench")(bench)


def main() -> None:
    """Entry point of the ``maas`` console script."""
    app()
