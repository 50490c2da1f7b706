"""What the client commands share: the global options, the client they make, and how errors end
a command.

``maas --url URL --api-key KEY --timeout S --max-retries N [--debug] COMMAND ...``: each option
also comes from ``MAAS_BASE_URL``, ``MAAS_API_KEY``, ``MAAS_TIMEOUT``, ``MAAS_MAX_RETRIES`` and
``MAAS_DEBUG``, and is also taken after the command (``maas models list --url URL``), where it
wins over the same option given before the command or by the environment. A failed call ends the
command with status 1 and one line on stderr (two with what to try), the traceback only with
``--debug``; inputs that do not fit the model end it with status 2, like any usage error.
"""

from __future__ import annotations

import dataclasses
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from rich.console import Console

    from maas_client import AsyncClient, Client

__all__ = [
    "GlobalOptions",
    "accept_global_options",
    "async_client_from",
    "client_from",
    "console",
    "fail",
    "reporting_errors",
    "root",
]

USAGE_ERROR = 2
CALL_ERROR = 1
GLOBAL_PANEL = "Global options (also accepted before the command)"


@dataclass(frozen=True)
class GlobalOptions:
    """The options given before the command (or by the environment), overridden by those given
    after it."""

    url: str | None = None
    api_key: str | None = None
    timeout: float | None = None
    max_retries: int | None = None
    debug: bool = False

    def client_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {}
        if self.api_key is not None:
            options["api_key"] = self.api_key
        if self.timeout is not None:
            options["timeout"] = self.timeout
        if self.max_retries is not None:
            options["max_retries"] = self.max_retries
        return options


def root(
    ctx: typer.Context,
    url: Annotated[
        str | None,
        typer.Option(
            "--url",
            envvar="MAAS_BASE_URL",
            help="The server (default http://127.0.0.1:8000); several, comma-separated, spread "
            "the requests.",
        ),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option("--api-key", envvar="MAAS_API_KEY", help="API key, sent as a bearer token."),
    ] = None,
    timeout: Annotated[
        float | None,
        typer.Option(
            "--timeout", envvar="MAAS_TIMEOUT", min=0, help="Seconds each network phase may take."
        ),
    ] = None,
    max_retries: Annotated[
        int | None,
        typer.Option(
            "--max-retries", envvar="MAAS_MAX_RETRIES", min=0, help="Retries after a failure."
        ),
    ] = None,
    debug: Annotated[
        bool, typer.Option("--debug", envvar="MAAS_DEBUG", help="Show tracebacks of errors.")
    ] = False,
) -> None:
    """Models as a service: serve ONNX models and call them over the Open Inference Protocol.

    Example: maas --url http://127.0.0.1:8000 models list
    """
    ctx.obj = GlobalOptions(url, api_key, timeout, max_retries, debug)


def _given_after_the_command(ctx: typer.Context, param: typer.CallbackParam, value: Any) -> Any:
    """A global option given after the command replaces the value it had before the command."""
    if value is not None and value is not False and param.name is not None:
        ctx.obj = dataclasses.replace(_options(ctx), **{param.name: value})
    return value


def _after_the_command(
    url: Annotated[
        str | None,
        typer.Option(
            "--url",
            help="The server (default http://127.0.0.1:8000); several, comma-separated, spread "
            "the requests.",
            callback=_given_after_the_command,
            rich_help_panel=GLOBAL_PANEL,
        ),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            help="API key, sent as a bearer token.",
            callback=_given_after_the_command,
            rich_help_panel=GLOBAL_PANEL,
        ),
    ] = None,
    timeout: Annotated[
        float | None,
        typer.Option(
            "--timeout",
            min=0,
            help="Seconds each network phase may take.",
            callback=_given_after_the_command,
            rich_help_panel=GLOBAL_PANEL,
        ),
    ] = None,
    max_retries: Annotated[
        int | None,
        typer.Option(
            "--max-retries",
            min=0,
            help="Retries after a failure.",
            callback=_given_after_the_command,
            rich_help_panel=GLOBAL_PANEL,
        ),
    ] = None,
    debug: Annotated[
        bool,
        typer.Option(
            "--debug",
            help="Show tracebacks of errors.",
            callback=_given_after_the_command,
            rich_help_panel=GLOBAL_PANEL,
        ),
    ] = False,
) -> None:
    """The global options as a command takes them: no environment variables (those are read
    once, before the command), and the values go to the context's GlobalOptions, not to the
    command's function. Never called: only its parameters are used."""


def accept_global_options(command: Any) -> None:
    """Let ``command`` (a click command or group built by typer) and every command below it take
    the global options after their name, unless the command has an option of that name itself."""
    probe = typer.Typer(add_completion=False)
    probe.command()(_after_the_command)
    taken = {opt for param in command.params for opt in param.opts}
    for param in typer.main.get_command(probe).params:
        if not taken.intersection(param.opts):
            param.expose_value = False  # the callback has recorded it
            command.params.append(param)
    for sub in getattr(command, "commands", {}).values():
        accept_global_options(sub)


def _options(ctx: typer.Context) -> GlobalOptions:
    found = ctx.find_object(GlobalOptions)
    return found if found is not None else GlobalOptions()


def client_from(ctx: typer.Context) -> Client:
    """A blocking client with the global options."""
    from maas_client import Client

    options = _options(ctx)
    with reporting_errors(ctx):
        return Client(options.url, **options.client_options())


def async_client_from(ctx: typer.Context) -> AsyncClient:
    """An asynchronous client with the global options."""
    from maas_client import AsyncClient

    options = _options(ctx)
    with reporting_errors(ctx):
        return AsyncClient(options.url, **options.client_options())


def console(stderr: bool = False) -> Console:
    """A rich console on the streams of the moment (test runners swap them)."""
    from rich.console import Console

    return Console(file=sys.stderr if stderr else sys.stdout, soft_wrap=False)


def fail(message: str, code: int = CALL_ERROR) -> typer.Exit:
    """Print ``message`` on stderr; raise what this returns to end with ``code``."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


@contextmanager
def reporting_errors(ctx: typer.Context) -> Iterator[None]:
    """Turn the client's errors into a message on stderr and an exit status."""
    from maas_client import InputError, MaasError

    try:
        yield
    except (typer.Exit, typer.Abort, KeyboardInterrupt):
        raise
    except (MaasError, ValueError, OSError) as exc:
        if _options(ctx).debug:
            traceback.print_exc(file=sys.stderr)
        code = USAGE_ERROR if isinstance(exc, InputError) else CALL_ERROR
        if isinstance(exc, MaasError):
            typer.echo(f"error: {exc}", err=True)
            typer.echo(f"hint: {exc.hint}", err=True)
        elif isinstance(exc, OSError):
            typer.echo(f"error: {exc}", err=True)
        else:  # a bad value given on the command line (a URL, a number...)
            code = USAGE_ERROR
            typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code) from None
