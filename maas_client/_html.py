"""Plain-text and HTML building blocks of the notebook display (no knowledge of the client)."""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

__all__ = ["LINE_WIDTH", "block", "e", "one_line", "preview", "table"]

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


def e(value: Any) -> str:
    return html.escape(str(value))


def table(head: Sequence[str], rows: Iterable[Sequence[Any]], caption: str = "") -> str:
    head_html = "".join(f"<th {_CELL}>{e(h)}</th>" for h in head)
    body_html = "".join(
        "<tr>" + "".join(f"<td {_CELL}>{cell}</td>" for cell in row) + "</tr>" for row in rows
    )
    cap = f"<caption {_CAPTION}>{caption}</caption>" if caption else ""
    return _TABLE.format(caption=cap, head=head_html, body=body_html)


def block(title: str, facts: Sequence[tuple[str, str]], tables: Sequence[str] = ()) -> str:
    lines = "".join(f"<div><b>{e(k)}</b>: {v}</div>" for k, v in facts)
    body = "".join(tables)
    return f'<div class="maas"><div style="font-weight:bold">{title}</div>{lines}{body}</div>'


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
