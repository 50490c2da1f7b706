"""``maas jobs run|list|show|cancel|logs``: batch inference jobs that the server runs."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from maas_client import Job
from maas_client.types import JobEvent, JobInfo

from ._common import client_from, console, fail, reporting_errors

__all__ = ["jobs_app"]

jobs_app = typer.Typer(
    name="jobs",
    help="Run a model over a dataset on the server (batch jobs), and follow the jobs.",
    no_args_is_help=True,
)

AsJson = Annotated[bool, typer.Option("--json", help="One JSON document.")]
JobId = Annotated[str, typer.Argument(help="The job's id.")]


def _dump(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2))


def _pairs(pairs: list[str] | None) -> list[tuple[str, str]]:
    found = []
    for pair in pairs or ():
        left, sep, right = pair.partition("=")
        if not sep or not left or not right:
            raise typer.BadParameter(
                f"{pair!r} is not INPUT=COLUMN (or INPUT=COL1,COL2,...)", param_hint="--input"
            )
        found.append((left, right))
    return found


def _mapping(
    pairs: list[tuple[str, str]], model_inputs: set[str]
) -> dict[str, str | list[str]] | None:
    """``--input INPUT=COLUMN`` (``INPUT=A,B,C`` stacks scalar columns); ``COLUMN=INPUT`` is
    understood too when only its right side names an input of the model."""
    if not pairs:
        return None
    mapping: dict[str, str | list[str]] = {}
    for left, right in pairs:
        if left not in model_inputs and right in model_inputs:
            left, right = right, left
        parts = right.split(",")
        mapping[left] = parts[0] if len(parts) == 1 else parts
    return mapping


def _progress(info: JobInfo) -> str:
    p = info.progress
    text = f"{p.done:g}/{p.total:g} {p.unit}"
    if p.rate and info.state == "running":
        text += f" at {p.rate:,.0f}/s"
        if p.eta_s is not None:
            text += f", {p.eta_s:,.0f} s left"
    return text


def _show(info: JobInfo) -> None:
    out = console()
    out.print(f"[bold]{info.type} job {info.id}[/bold]: {info.state}", highlight=False)
    out.print(f"progress: {_progress(info)}", highlight=False)
    out.print(f"created: {info.created}  owner: {info.owner or '-'}", highlight=False)
    if info.finished:
        out.print(f"finished: {info.finished}", highlight=False)
    if info.error:
        out.print(f"error: {info.error}", highlight=False)
    if info.result:
        out.print(f"result: {json.dumps(info.result)}", highlight=False)
    for chunk in info.chunk_errors[:20]:
        out.print(f"rows {chunk.start}:{chunk.stop} failed: {chunk.error}", highlight=False)
    if len(info.chunk_errors) > 20:
        out.print(f"... and {len(info.chunk_errors) - 20} more failed chunks", highlight=False)


def _finish(job: Job, as_json: bool) -> None:
    if as_json:
        _dump(job.info.model_dump())
    else:
        _show(job.info)
    if job.state != "succeeded":
        raise typer.Exit(1)


@jobs_app.command("run")
def run(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="The model to run.")],
    dataset: Annotated[str, typer.Argument(help="The dataset to run it over.")],
    inputs: Annotated[
        list[str] | None,
        typer.Option("--input", "-i", help="INPUT=COLUMN (INPUT=C1,C2,... stacks scalar columns)."),
    ] = None,
    outputs: Annotated[
        list[str] | None, typer.Option("--output", "-o", help="An output to keep (default: all).")
    ] = None,
    version: Annotated[str | None, typer.Option("--version", "-v", help="Model version.")] = None,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", help="Rows per request (default: the model's).")
    ] = None,
    priority: Annotated[
        int | None, typer.Option("--priority", help="Priority level (default: the lowest).")
    ] = None,
    stop_on_error: Annotated[
        bool, typer.Option("--stop-on-error", help="Fail the job at the first failed chunk.")
    ] = False,
    endpoints: Annotated[
        list[str] | None,
        typer.Option("--endpoint", help="Spread the requests over these servers (repeat)."),
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait/--no-wait", help="Follow the job until it is over.")
    ] = True,
    as_json: AsJson = False,
) -> None:
    """Run MODEL over every row of DATASET on the server; the results become a dataset.

    Example: maas jobs run mlp rows --input input=features --batch-size 64
    """
    pairs = _pairs(inputs)
    with client_from(ctx) as client, reporting_errors(ctx):
        model_inputs = (
            {t.name for t in client.models.get(model, version).inputs} if pairs else set()
        )
        job = client.jobs.create_batch(
            model,
            dataset,
            version=version,
            inputs=_mapping(pairs, model_inputs),
            outputs=outputs or None,
            batch_size=batch_size,
            priority=priority,
            stop_on_error=stop_on_error,
            endpoints=endpoints or None,
        )
        if not wait:
            if as_json:
                _dump(job.info.model_dump())
            else:
                typer.echo(job.id)
            return
        if not as_json:
            console(stderr=True).print(f"job {job.id}", highlight=False)
        job.wait(progress=not as_json)
    _finish(job, as_json)


@jobs_app.command("list")
def list_jobs(ctx: typer.Context, as_json: AsJson = False) -> None:
    """List the jobs (yours; an admin key sees everyone's), newest first.

    Example: maas jobs list
    """
    with client_from(ctx) as client, reporting_errors(ctx):
        jobs = client.jobs.list()
    if as_json:
        _dump([job.info.model_dump() for job in jobs])
        return
    from rich.table import Table

    table = Table()
    table.add_column("id", no_wrap=True, min_width=32)
    for name in ("type", "state", "progress", "created"):
        table.add_column(name)
    for job in jobs:
        info = job.info
        table.add_row(info.id, info.type, info.state, _progress(info), info.created[:19])
    console().print(table)


@jobs_app.command("show")
def show(ctx: typer.Context, job_id: JobId, as_json: AsJson = False) -> None:
    """Show a job: state, progress, result, errors.

    Example: maas jobs show 3f2a...
    """
    with client_from(ctx) as client, reporting_errors(ctx):
        job = client.jobs.get(job_id)
    if as_json:
        _dump(job.info.model_dump())
    else:
        _show(job.info)


@jobs_app.command("cancel")
def cancel(ctx: typer.Context, job_id: JobId) -> None:
    """Cancel a job (a running one stops after its current chunk).

    Example: maas jobs cancel 3f2a...
    """
    with client_from(ctx) as client, reporting_errors(ctx):
        job = client.jobs.get(job_id)
        if job.done:
            raise fail(f"job {job_id} is already {job.state}")
        job.cancel()
    typer.echo(f"job {job_id}: {job.state}")


def _event_line(event: JobEvent) -> str:
    data = event.data
    if event.type == "state":
        text = data.get("state", "")
        if data.get("error"):
            text += f": {data['error']}"
        if data.get("result"):
            text += f" {json.dumps(data['result'])}"
    elif event.type == "progress":
        text = f"{data.get('done', 0):g}/{data.get('total', 0):g} {data.get('unit', '')}"
    elif event.type == "log":
        text = str(data.get("message", ""))
    elif event.type == "chunk_error":
        text = f"rows {data.get('start')}:{data.get('stop')} failed: {data.get('error')}"
    else:
        text = json.dumps(data)
    return f"{event.time} {event.type:<11} {text}"


@jobs_app.command("logs")
def logs(
    ctx: typer.Context,
    job_id: JobId,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing events until the job is over.")
    ] = False,
    as_json: AsJson = False,
) -> None:
    """Print a job's events (state changes, progress, failed chunks, log lines).

    Example: maas jobs logs 3f2a... --follow
    """
    with client_from(ctx) as client, reporting_errors(ctx):
        job = client.jobs.get(job_id)
        for event in job.events(follow=follow):
            typer.echo(event.model_dump_json() if as_json else _event_line(event))
