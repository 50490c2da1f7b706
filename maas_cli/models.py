"""``maas models list|show|config|stats|load|unload|push|versions|delete|default``: the
server's model repository and publishing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from ._common import client_from, console, reporting_errors

__all__ = ["models_app"]

models_app = typer.Typer(
    name="models",
    help="List, describe, load and unload the server's models.",
    no_args_is_help=True,
)

AsJson = Annotated[bool, typer.Option("--json", help="One JSON document.")]
Version = Annotated[
    str | None, typer.Option("--version", "-v", help="Model version (default: the newest).")
]
Model = Annotated[str, typer.Argument(help="The model's name.")]


def _dump(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2))


def _config_option(config: str | None) -> Any:
    """``--config``: JSON, or ``@FILE`` (or a path to a file) holding JSON; None when absent."""
    if config is None:
        return None
    if config.startswith("@"):
        text = Path(config[1:]).read_text()
    elif not config.lstrip().startswith("{") and Path(config).is_file():
        text = Path(config).read_text()
    else:
        text = config
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"not JSON: {exc}", param_hint="--config") from None


@models_app.command("list")
def list_models(
    ctx: typer.Context,
    ready: Annotated[bool, typer.Option("--ready", help="Only the ready models.")] = False,
    as_json: AsJson = False,
) -> None:
    """List the repository's models with their versions and states.

    Example: maas models list --ready
    """
    with client_from(ctx) as client, reporting_errors(ctx):
        index = client.models.list(ready=ready)
    if as_json:
        _dump([row.model_dump(exclude_none=True) for row in index])
        return
    from rich.table import Table

    table = Table("model", "version", "state", "reason")
    for row in index:
        table.add_row(row.name, row.version or "-", row.state or "-", row.reason or "")
    console().print(table)


@models_app.command("show")
def show(
    ctx: typer.Context, model: Model, version: Version = None, as_json: AsJson = False
) -> None:
    """Show a model's inputs, outputs, platform, versions and the providers running it.

    Example: maas models show digits
    """
    with client_from(ctx) as client, reporting_errors(ctx):
        metadata = client.models.get(model, version)
    if as_json:
        _dump(metadata.model_dump(exclude_none=True))
        return
    from rich.table import Table

    parameters = metadata.parameters or {}
    providers = ", ".join(str(p) for p in parameters.get("providers", [])) or "not reported"
    out = console()
    out.print(
        f"[bold]{metadata.name}[/bold]  platform: {metadata.platform or '-'}", highlight=False
    )
    out.print(f"versions: {', '.join(metadata.versions or []) or '-'}", highlight=False)
    out.print(f"providers in use: {providers}", highlight=False)
    if "max_batch_size" in parameters:
        out.print(f"max batch size: {parameters['max_batch_size']}", highlight=False)
    table = Table("", "name", "datatype", "shape")
    for kind, specs in (("input", metadata.inputs), ("output", metadata.outputs)):
        for spec in specs:
            table.add_row(kind, spec.name, spec.datatype, str(spec.shape))
    out.print(table)


@models_app.command("config")
def config(ctx: typer.Context, model: Model, version: Version = None) -> None:
    """Print a model's configuration (Triton's model_config, as JSON).

    Example: maas models config digits
    """
    with client_from(ctx) as client, reporting_errors(ctx):
        configuration = client.models.config(model, version)
    _dump(configuration.model_dump(exclude_none=True))


@models_app.command("stats")
def stats(
    ctx: typer.Context,
    model: Annotated[str | None, typer.Argument(help="One model (default: all).")] = None,
    version: Version = None,
    as_json: AsJson = False,
) -> None:
    """Show request counts and times per model version (Triton's statistics).

    Example: maas models stats digits
    """
    with client_from(ctx) as client, reporting_errors(ctx):
        statistics = client.models.stats(model, version)
    if as_json:
        _dump(statistics.model_dump())
        return
    from rich.table import Table

    table = Table("model", "version", "requests", "failed", "rows", "batches", "mean ms")
    for entry in statistics.model_stats:
        success = entry.inference_stats.get("success", {})
        failed = entry.inference_stats.get("fail", {})
        count = int(success.get("count", 0))
        mean = int(success.get("ns", 0)) / count / 1e6 if count else 0.0
        table.add_row(
            entry.name,
            entry.version or "-",
            str(count),
            str(failed.get("count", 0)),
            str(entry.inference_count),
            str(entry.execution_count),
            f"{mean:.2f}",
        )
    console().print(table)


@models_app.command("load")
def load(
    ctx: typer.Context,
    model: Model,
    config: Annotated[
        str | None,
        typer.Option(
            "--config", help="Configuration to load it with: JSON, or @FILE holding JSON."
        ),
    ] = None,
) -> None:
    """Load (or reload) a model.

    Example: maas models load digits --config '{"max_batch_size": 64}'
    """
    override = _config_option(config)
    with client_from(ctx) as client, reporting_errors(ctx):
        client.models.load(model, config=override)
    typer.echo(f"loaded {model}")


@models_app.command("unload")
def unload(ctx: typer.Context, model: Model) -> None:
    """Unload a model; it stops serving until loaded again.

    Example: maas models unload digits
    """
    with client_from(ctx) as client, reporting_errors(ctx):
        client.models.unload(model)
    typer.echo(f"unloaded {model}")


@models_app.command("push")
def push(
    ctx: typer.Context,
    model: Model,
    path: Annotated[Path, typer.Argument(help="An .onnx file, or a version folder.")],
    version: Annotated[
        str | None, typer.Option("--version", "-v", help="Version number (default: the next).")
    ] = None,
    config: Annotated[
        str | None,
        typer.Option("--config", help="The model's configuration: JSON, FILE or @FILE."),
    ] = None,
    no_default: Annotated[
        bool,
        typer.Option("--no-default", help="Publish without making it the default version."),
    ] = False,
) -> None:
    """Publish a model version (streamed, checked by the server before it serves).

    Example: maas models push digits model.onnx --config config.json
    """
    settings = _config_option(config)
    with client_from(ctx) as client, reporting_errors(ctx):
        meta = client.models.upload(
            model, path, version=version, config=settings, make_default=not no_default
        )
    typer.echo(f"published {model} version {(meta.versions or ['?'])[-1]}")


@models_app.command("versions")
def versions(ctx: typer.Context, model: Model, as_json: AsJson = False) -> None:
    """List a model's versions with their state, size, sha256, creation time and provenance.

    Example: maas models versions digits
    """
    with client_from(ctx) as client, reporting_errors(ctx):
        found = client.models.versions(model)
    if as_json:
        _dump(found.model_dump(mode="json"))
        return
    from rich.table import Table

    table = Table("version", "state", "default", "size", "sha256", "created", "framework", "by")
    for entry in found.versions:
        table.add_row(
            entry.version,
            entry.state,
            "*" if entry.default else "",
            str(entry.size or ""),
            (entry.sha256 or "")[:12],
            entry.created or "",
            entry.framework or "",
            entry.key_name or "",
        )
    console().print(table)
    for attempt in found.failed_attempts:
        console().print(f"failed {attempt.created}: {attempt.reason}")


@models_app.command("delete")
def delete(
    ctx: typer.Context,
    model: Model,
    version: Annotated[
        str | None, typer.Option("--version", "-v", help="Only this version.")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Also the only serving version, or a whole model.")
    ] = False,
) -> None:
    """Delete a model version, or a whole model.

    Example: maas models delete digits --version 2
    """
    with client_from(ctx) as client, reporting_errors(ctx):
        client.models.delete(model, version, force=force)
    typer.echo(f"deleted {model}" + (f" version {version}" if version else ""))


@models_app.command("default")
def default(
    ctx: typer.Context,
    model: Model,
    version: Annotated[str, typer.Argument(help="The version unversioned requests reach.")],
) -> None:
    """Make a version the default: rollout and rollback are one command each.

    Example: maas models default digits 1
    """
    with client_from(ctx) as client, reporting_errors(ctx):
        client.models.set_default(model, version)
    typer.echo(f"{model} now answers with version {version}")
