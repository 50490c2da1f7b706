"""How the client's objects show in a notebook (``_repr_html_``) and at a prompt (one line).

Model metadata, inference results, the repository index and errors each render as a small HTML
table; the plain ``repr`` of each fits on one line. Errors also say what to try next
(:func:`error_hint`).
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ._exceptions import (
    APIConnectionError,
    APIError,
    APIResponseValidationError,
    APIStatusError,
    APITimeoutError,
    InputError,
    MaasError,
)

if TYPE_CHECKING:
    from maas_wire.types import ModelMetadata, RepositoryModel, TensorMetadata

    from ._result import InferResult

__all__ = [
    "LINE_WIDTH",
    "error_hint",
    "error_html",
    "error_repr",
    "infer_result_html",
    "model_metadata_html",
    "model_metadata_repr",
    "one_line",
    "preview",
    "repository_index_html",
]

LINE_WIDTH = 120
"""The longest plain ``repr``; longer ones end in an ellipsis."""

_TABLE = (
    '<table style="border-collapse:collapse;text-align:left;font-size:0.9em">'
    "{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
)
_CELL = 'style="padding:2px 8px;border-bottom:1px solid #ddd;vertical-align:top"'
_CAPTION = 'style="text-align:left;font-weight:bold"'


def one_line(text: str, width: int = LINE_WIDTH) -> str:
    """``text`` on one line, cut to ``width`` characters with an ellipsis."""
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _e(value: Any) -> str:
    return html.escape(str(value))


def _table(head: Sequence[str], rows: Iterable[Sequence[Any]], caption: str = "") -> str:
    head_html = "".join(f"<th {_CELL}>{_e(h)}</th>" for h in head)
    body_html = "".join(
        "<tr>" + "".join(f"<td {_CELL}>{cell}</td>" for cell in row) + "</tr>" for row in rows
    )
    cap = f"<caption {_CAPTION}>{caption}</caption>" if caption else ""
    return _TABLE.format(caption=cap, head=head_html, body=body_html)


def _block(title: str, facts: Sequence[tuple[str, str]], tables: Sequence[str] = ()) -> str:
    lines = "".join(f"<div><b>{_e(k)}</b>: {v}</div>" for k, v in facts)
    body = "".join(tables)
    return f'<div class="maas"><div style="font-weight:bold">{title}</div>{lines}{body}</div>'


# --- model metadata --------------------------------------------------------------------------


def _tensor_text(spec: TensorMetadata) -> str:
    return f"{spec.name} {spec.datatype}[{','.join(str(d) for d in spec.shape)}]"


def _providers(meta: ModelMetadata) -> list[str]:
    providers = (meta.parameters or {}).get("providers")
    return [str(p) for p in providers] if isinstance(providers, list) else []


def model_metadata_repr(meta: ModelMetadata) -> str:
    inputs = ", ".join(_tensor_text(t) for t in meta.inputs)
    outputs = ", ".join(_tensor_text(t) for t in meta.outputs)
    return one_line(
        f"ModelMetadata(name={meta.name!r}, versions={meta.versions}, inputs=[{inputs}], "
        f"outputs=[{outputs}])"
    )


def model_metadata_html(meta: ModelMetadata) -> str:
    rows = [
        (kind, _e(t.name), _e(t.datatype), _e(t.shape))
        for kind, specs in (("input", meta.inputs), ("output", meta.outputs))
        for t in specs
    ]
    facts = [
        ("platform", _e(meta.platform or "-")),
        ("versions", _e(", ".join(meta.versions or []) or "-")),
        ("providers in use", _e(", ".join(_providers(meta)) or "not reported")),
    ]
    batch = (meta.parameters or {}).get("max_batch_size")
    if batch is not None:
        facts.append(("max batch size", _e(batch)))
    return _block(
        f"model {_e(meta.name)}",
        facts,
        [_table(("", "name", "datatype", "shape"), rows)],
    )


# --- results ---------------------------------------------------------------------------------


def preview(array: np.ndarray[Any, Any], rows: int = 3, width: int = 60) -> str:
    """The first ``rows`` rows of ``array``, short enough to read at a glance."""
    shown = array[:rows] if array.ndim >= 1 else array
    text = np.array2string(
        shown,
        threshold=8,
        edgeitems=2,
        precision=4,
        max_line_width=width,
        separator=", ",
    )
    if array.ndim >= 1 and array.shape[0] > rows:
        text += f" … ({array.shape[0] - rows} more)"
    return text


def infer_result_html(result: InferResult) -> str:
    rows = [
        (_e(name), _e(array.dtype), _e(list(array.shape)), f"<pre>{_e(preview(array))}</pre>")
        for name, array in result.outputs.items()
    ]
    timing = result.timing
    facts = [
        ("version", _e(result.model_version or "-")),
        ("latency", f"{timing.seconds * 1000:.1f} ms"),
        ("attempts", _e(timing.attempts)),
        ("request id", f"<code>{_e(result.request_id or '-')}</code>"),
    ]
    chunks = getattr(result, "chunks", None)
    if chunks is not None:
        facts.insert(1, ("requests", _e(len(chunks))))
    return _block(
        f"{_e(type(result).__name__)} of {_e(result.model_name)}",
        facts,
        [_table(("output", "dtype", "shape", "preview"), rows)],
    )


# --- repository index ------------------------------------------------------------------------


def repository_index_html(models: Sequence[RepositoryModel]) -> str:
    rows = [
        (_e(m.name), _e(m.version or "-"), _e(m.state or "-"), _e(m.reason or "")) for m in models
    ]
    return _block(
        f"{len(models)} model versions",
        [],
        [_table(("model", "version", "state", "reason"), rows)],
    )


# --- errors ----------------------------------------------------------------------------------


def error_hint(error: BaseException) -> str:
    """What to try after ``error``, in a sentence."""
    if isinstance(error, InputError):
        return "compare the inputs with client.models.get(model): names, shapes and datatypes"
    if isinstance(error, APITimeoutError):
        return "the server did not answer in time: raise timeout= or deadline=, or send less"
    if isinstance(error, APIConnectionError):
        url = error.request.url if error.request is not None else "the base URL"
        return f"is a server running at {url}? start one with 'maas serve', or check the URL"
    if isinstance(error, APIResponseValidationError):
        return "the server's answer is not the Open Inference Protocol: is the URL right?"
    if isinstance(error, APIStatusError):
        status = error.status_code
        hints = {
            400: "the server refused the request: check the inputs against client.models.get",
            401: "pass api_key= (or set MAAS_API_KEY) with a key the server knows",
            403: "the API key lacks the scope or the model: ask for one that has it",
            404: "check the name and version against client.models.list()",
            409: "the model is changing state: try again when it is loaded or unloaded",
            413: "the request is too large: send fewer rows, e.g. client.infer_batched(...)",
            422: "the server understood the request but cannot run it: see the message",
            429: "too many requests: slow down (retries already honour Retry-After)",
            503: "the server or model is not ready: check client.server.ready() and "
            "client.models.ready(model), or try later",
        }
        if status in hints:
            return hints[status]
        if status >= 500:
            return "the server failed: its log has the request id of this call"
    return "see the message"


def _status(error: BaseException) -> str:
    if isinstance(error, APIStatusError):
        return str(error.status_code)
    if isinstance(error, APITimeoutError):
        return "timeout"
    if isinstance(error, APIConnectionError):
        return "no connection"
    return "-"


def error_repr(error: MaasError) -> str:
    request_id = getattr(error, "request_id", None)
    rid = f" request_id={request_id}" if request_id else ""
    message = error.message if isinstance(error, APIError) else str(error)
    status = _status(error)
    status = "" if status == "-" else f" {status}"
    return one_line(f"<{type(error).__name__}{status}{rid}: {message}>")


def error_html(error: MaasError) -> str:
    facts = [
        ("status", _e(_status(error))),
        ("message", _e(error.error if isinstance(error, APIStatusError) else str(error))),
    ]
    if isinstance(error, APIError):
        facts.append(("request id", f"<code>{_e(error.request_id or '-')}</code>"))
        facts.append(("attempts", _e(error.attempts)))
    facts.append(("what to try", _e(error_hint(error))))
    return _block(f'<span style="color:#b00">{_e(type(error).__name__)}</span>', facts)
