"""``maas train DATASET --target COL --name NAME``: train a model on a dataset the server holds,
follow its epochs, and print the held-out metrics as a table."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from maas_client import Job

from ._common import client_from, console, fail, reporting_errors

__all__ = ["metrics_table", "train"]


def _widths(text: str) -> list[int]:
    try:
        widths = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise typer.BadParameter(
            f"{text!r} is not a list of layer widths such as 128,64", param_hint="--hidden"
        ) from None
    if not widths:
        raise typer.BadParameter("give at least one layer width", param_hint="--hidden")
    return widths


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "-" if value is None else str(value)


def metrics_table(job: Job) -> Any:
    """The held-out metrics of a finished training as a rich table (and, for a classifier, its
    confusion matrix as a second one)."""
    from rich.table import Table

    result = job.info.result or {}
    metrics = dict(result.get("metrics") or {})
    confusion = metrics.pop("confusion_matrix", None)
    metrics.pop("export_check", None)
    table = Table(title=f"{result.get('model')} version {result.get('version')}: held-out metrics")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in metrics.items():
        table.add_row(name, _number(value))
    for name in ("epochs", "best_epoch"):
        if name in result:
            table.add_row(name.replace("_", " "), str(result[name]))
    tables = [table]
    if confusion:
        labels = [str(label) for label in confusion["labels"]]
        matrix = Table(title="confusion matrix (rows: true, columns: predicted)")
        matrix.add_column("")
        for label in labels:
            matrix.add_column(label, justify="right")
        for label, row in zip(labels, confusion["matrix"], strict=True):
            matrix.add_row(label, *(str(n) for n in row))
        tables.append(matrix)
    return tables


def train(
    ctx: typer.Context,
    dataset: Annotated[str, typer.Argument(help="The dataset to train on (held by the server).")],
    target: Annotated[str, typer.Option("--target", "-t", help="The column to predict.")],
    name: Annotated[str, typer.Option("--name", "-n", help="The model to publish it as.")],
    kind: Annotated[str, typer.Option("--kind", help="mlp or linear.")] = "mlp",
    task: Annotated[
        str | None,
        typer.Option(help="classification or regression (default: from the target column)."),
    ] = None,
    features: Annotated[
        str | None,
        typer.Option(help="Columns to learn from, comma-separated (default: all but the target)."),
    ] = None,
    hidden: Annotated[
        str | None, typer.Option(help="Hidden layer widths, such as 128,64 (the default).")
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs at most (default 50).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Rows per step (default 64).")] = None,
    learning_rate: Annotated[float | None, typer.Option(help="Default 0.001.")] = None,
    weight_decay: Annotated[float | None, typer.Option(help="L2 penalty.")] = None,
    activation: Annotated[
        str | None, typer.Option(help="relu (default), tanh, logistic or identity.")
    ] = None,
    optimizer: Annotated[str | None, typer.Option(help="adam (default) or sgd.")] = None,
    early_stopping: Annotated[
        bool,
        typer.Option(
            "--early-stopping/--no-early-stopping",
            help="Stop when the validation loss stops improving (and keep the best epoch).",
        ),
    ] = True,
    patience: Annotated[int | None, typer.Option(help="Epochs without improvement.")] = None,
    validation_split: Annotated[float | None, typer.Option(help="Default 0.1.")] = None,
    test_split: Annotated[float | None, typer.Option(help="Held out; default 0.2.")] = None,
    seed: Annotated[int | None, typer.Option(help="Default 0.")] = None,
    engine: Annotated[str | None, typer.Option(help="sklearn (default) or torch.")] = None,
    on_restart: Annotated[
        str | None, typer.Option(help="fail (default) or restart, after a server restart.")
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait/--no-wait", help="Follow the training until it is over.")
    ] = True,
    as_json: Annotated[bool, typer.Option("--json", help="The finished job as JSON.")] = False,
) -> None:
    """Train a model on DATASET to predict --target and publish it as the next version of
    --name; shows each epoch's loss, then the held-out metrics.

    Example: maas train digits --target digit --name digits --hidden 128,64 --epochs 30
    """
    params: dict[str, Any] = {
        "task": task,
        "epochs": epochs,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "weight_decay": weight_decay,
        "activation": activation,
        "optimizer": optimizer,
        "patience": patience,
        "validation_split": validation_split,
        "test_split": test_split,
        "seed": seed,
        "engine": engine,
        "on_restart": on_restart,
    }
    if not early_stopping:
        params["early_stopping"] = False
    with client_from(ctx) as client, reporting_errors(ctx):
        job = client.jobs.create_training(
            dataset,
            target=target,
            name=name,
            model=kind,
            features=[f.strip() for f in features.split(",")] if features else None,
            hidden_layers=_widths(hidden) if hidden is not None else None,
            **params,
        )
        if not wait:
            typer.echo(json.dumps(job.info.model_dump()) if as_json else job.id)
            return
        if not as_json:
            console(stderr=True).print(f"training job {job.id}", highlight=False)
        job.wait(progress=not as_json)
    if as_json:
        typer.echo(json.dumps(job.info.model_dump(), indent=2))
    elif job.state == "succeeded":
        out = console()
        for table in metrics_table(job):
            out.print(table)
    if job.state != "succeeded":
        raise fail(f"training job {job.id} {job.state}: {job.info.error or 'no reason given'}")
