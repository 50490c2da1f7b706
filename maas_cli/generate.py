"""``maas generate MODEL PROMPT``: generate text with a served model, printing it as it arrives.

The text goes to stdout piece by piece (each piece flushed at once), then a newline; with
``--stats``, the finish reason, token counts and times go to stderr. ``--param KEY=VALUE``
passes any other parameter the server understands. The server, key, timeout and retries are the
global options (``maas --url URL generate ...``). Errors end it as for every command; Ctrl-C
closes the stream (the server stops generating) and exits with 130.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ._common import client_from, reporting_errors

if TYPE_CHECKING:
    from maas_client import GenerateOptions

__all__ = ["generate"]


def generate(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="A text-generation model the server serves.")],
    prompt: Annotated[str, typer.Argument(help="The text to continue.")],
    version: Annotated[
        str | None, typer.Option(help="Model version (default: the server's choice).")
    ] = None,
    max_tokens: Annotated[int | None, typer.Option(help="New tokens at most.")] = None,
    temperature: Annotated[float | None, typer.Option(help="0 is greedy decoding.")] = None,
    top_k: Annotated[int | None, typer.Option(help="Sample among the k likeliest tokens.")] = None,
    top_p: Annotated[float | None, typer.Option(help="Nucleus sampling threshold.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for reproducible sampling.")] = None,
    stop: Annotated[
        list[str] | None,
        typer.Option(help="A string that ends the generation (repeat for several)."),
    ] = None,
    param: Annotated[
        list[str] | None,
        typer.Option(
            help="Another parameter, KEY=VALUE (VALUE read as JSON when it is, e.g. "
            "ignore_eos=true); repeat for several."
        ),
    ] = None,
    stream: Annotated[
        bool, typer.Option(help="Print the text as it arrives (--no-stream: all at the end).")
    ] = True,
    stats: Annotated[
        bool, typer.Option(help="Print finish reason, token counts and times to stderr.")
    ] = False,
) -> None:
    """Generate text with a text-generation model, printing the tokens as they arrive.

    Example: maas generate tiny_gpt "Licensed under the" --max-tokens 32
    """
    from maas_client import Generation

    params: GenerateOptions = {
        "max_tokens": max_tokens,
        "temperature": temperature,
        "top_k": top_k,
        "top_p": top_p,
        "seed": seed,
        "stop": stop or None,
    }
    if param:
        params["parameters"] = _parameters(param)
    started = time.monotonic()
    first_at: float | None = None
    result: Generation
    try:
        with client_from(ctx) as client, reporting_errors(ctx):
            try:
                if stream:
                    with client.generate_stream(model, prompt, version=version, **params) as chunks:
                        for chunk in chunks:
                            if chunk.text:
                                first_at = first_at or time.monotonic()
                                typer.echo(chunk.text, nl=False)
                        result = chunks.get_final()
                else:
                    result = client.generate(model, prompt, version=version, **params)
                    typer.echo(result.text, nl=False)
            except BaseException:
                if first_at is not None:
                    typer.echo("")  # end the partial line before the error message
                raise
    except KeyboardInterrupt:  # the with blocks closed the stream: the server stops
        typer.echo("")
        raise typer.Exit(130) from None
    typer.echo("")
    if stats:
        line = (
            f"finish_reason={result.finish_reason} prompt_tokens={result.prompt_tokens} "
            f"completion_tokens={result.completion_tokens} seconds={result.timing.seconds:.3f}"
        )
        if first_at is not None:
            line += f" first_text_seconds={first_at - started:.3f}"
        typer.echo(line, err=True)


def _parameters(items: list[str]) -> dict[str, Any]:
    parameters: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--param")
        try:
            parameters[key] = json.loads(text)
        except ValueError:
            parameters[key] = text
    return parameters
