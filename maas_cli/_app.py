"""The typer application behind the ``maas`` command; each command group lives in its own module."""

from __future__ import annotations

from typing import Any

import typer
from typer.core import TyperGroup

from ._common import accept_global_options, root
from .bench import bench
from .datasets import datasets_app
from .embed import embed
from .generate import generate
from .health import health
from .jobs import jobs_app
from .keys import keys_app
from .models import models_app
from .predict import predict
from .serve import serve
from .train import train

__all__ = ["app", "main"]


class _Maas(TyperGroup):
    """The ``maas`` group: every command below it also takes the global options after its name
    (``maas predict digits --url URL``), where they win over those given before it."""

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        for command in self.commands.values():
            accept_global_options(command)


app = typer.Typer(
    cls=_Maas,
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
app.add_typer(datasets_app, name="datasets")
app.add_typer(jobs_app, name="jobs")
app.command(name="predict")(predict)
app.command(name="embed")(embed)
app.command(name="bench")(bench)
app.command(name="train")(train)


def main() -> None:
    """Entry point of the ``maas`` console script."""
    app()
