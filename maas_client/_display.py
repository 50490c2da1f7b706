"""How the client's objects show in a notebook (``_repr_html_``) and at a prompt (one line).

Model metadata, inference results and the repository index each render as a small HTML table;
the plain ``repr`` of each fits on one line. Errors render themselves (:mod:`._exceptions`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ._html import LINE_WIDTH, block, e, one_line, preview, table

if TYPE_CHECKING:
    from maas_wire.datasets import DatasetInfo
    from maas_wire.types import ModelMetadata, RepositoryModel, TensorMetadata

__all__ = [
    "LINE_WIDTH",
    "ClassificationsLike",
    "ResultLike",
    "classifications_html",
    "classifications_repr",
    "dataset_info_html",
    "dataset_info_repr",
    "dataset_list_html",
    "infer_result_html",
    "model_metadata_html",
    "model_metadata_repr",
    "one_line",
    "preview",
    "repository_index_html",
]


class _TimingLike(Protocol):
    @property
    def seconds(self) -> float: ...
    @property
    def attempts(self) -> int: ...


class ResultLike(Protocol):
    """What the display reads of an inference result."""

    @property
    def outputs(self) -> Mapping[str, np.ndarray[Any, Any]]: ...
    @property
    def model_name(self) -> str: ...
    @property
    def model_version(self) -> str | None: ...
    @property
    def request_id(self) -> str | None: ...
    @property
    def timing(self) -> _TimingLike: ...


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
        (kind, e(t.name), e(t.datatype), e(t.shape))
        for kind, specs in (("input", meta.inputs), ("output", meta.outputs))
        for t in specs
    ]
    facts = [
        ("platform", e(meta.platform or "-")),
        ("versions", e(", ".join(meta.versions or []) or "-")),
        ("providers in use", e(", ".join(_providers(meta)) or "not reported")),
    ]
    batch = (meta.parameters or {}).get("max_batch_size")
    if batch is not None:
        facts.append(("max batch size", e(batch)))
    return block(
        f"model {e(meta.name)}",
        facts,
        [table(("", "name", "datatype", "shape"), rows)],
    )


# --- results ---------------------------------------------------------------------------------


def infer_result_html(result: ResultLike) -> str:
    rows = [
        (e(name), e(array.dtype), e(list(array.shape)), f"<pre>{e(preview(array))}</pre>")
        for name, array in result.outputs.items()
    ]
    timing = result.timing
    facts = [
        ("version", e(result.model_version or "-")),
        ("latency", f"{timing.seconds * 1000:.1f} ms"),
        ("attempts", e(timing.attempts)),
        ("request id", f"<code>{e(result.request_id or '-')}</code>"),
    ]
    chunks = getattr(result, "chunks", None)
    if chunks is not None:
        facts.insert(1, ("requests", e(len(chunks))))
    return block(
        f"{e(type(result).__name__)} of {e(result.model_name)}",
        facts,
        [table(("output", "dtype", "shape", "preview"), rows)],
    )


# --- classifications -------------------------------------------------------------------------


class ClassificationsLike(Protocol):
    """What the display reads of a classification result."""

    @property
    def kind(self) -> str: ...
    @property
    def sources(self) -> list[Any]: ...
    @property
    def labels(self) -> np.ndarray[Any, Any]: ...
    @property
    def scores(self) -> np.ndarray[Any, Any]: ...
    @property
    def model_name(self) -> str: ...
    @property
    def model_version(self) -> str | None: ...
    @property
    def timing(self) -> _TimingLike: ...
    @property
    def request_ids(self) -> list[str | None]: ...

    def __len__(self) -> int: ...
    def describe(self, index: int) -> str: ...


_HTML_ROWS = 50
"""Inputs shown in a notebook; the rest are counted."""


def _classes_text(labels: np.ndarray[Any, Any], scores: np.ndarray[Any, Any]) -> str:
    return ", ".join(
        f"{label} {float(score):.3f}" for label, score in zip(labels, scores, strict=True)
    )


def classifications_repr(result: ClassificationsLike, rows: int) -> str:
    """A header line, then one line per input (the first ``rows`` of them)."""
    count = len(result)
    version = f" version {result.model_version}" if result.model_version else ""
    lines = [
        f"Classifications of {result.model_name!r}{version}: {count} "
        f"{result.kind}{'s' if count != 1 else ''}, top {result.labels.shape[1] if count else 0}"
    ]
    for index in range(min(count, rows)):
        classes = _classes_text(result.labels[index], result.scores[index])
        lines.append("  " + one_line(f"[{index}] {result.describe(index)!r}: {classes}"))
    if count > rows:
        lines.append(f"  … {count - rows} more")
    return "\n".join(lines)


def _bar(score: float) -> str:
    width = max(0.0, min(1.0, score)) * 60
    return (
        f'<span style="display:inline-block;width:{width:.0f}px;height:0.7em;'
        'background:#4c78a8;margin-right:4px"></span>'
    )


def _input_cell(result: ClassificationsLike, index: int) -> str:
    from ._thumbnails import thumbnail_uri

    name = e(result.describe(index))
    if result.kind != "image":
        return name
    uri = thumbnail_uri(result.sources[index])
    if uri is None:
        return name
    return f'<img src="{uri}" alt="{name}" style="max-width:160px;max-height:96px"><br>{name}'


def classifications_html(result: ClassificationsLike) -> str:
    count = len(result)
    rows = []
    for index in range(min(count, _HTML_ROWS)):
        classes = "<br>".join(
            f"{_bar(float(score))}{'<b>' if rank == 0 else ''}{e(label)}"
            f"{'</b>' if rank == 0 else ''} {float(score):.3f}"
            for rank, (label, score) in enumerate(
                zip(result.labels[index], result.scores[index], strict=True)
            )
        )
        rows.append((e(index), _input_cell(result, index), classes))
    facts = [
        ("version", e(result.model_version or "-")),
        ("inputs", e(count)),
        ("requests", e(len(result.request_ids))),
        ("latency", f"{result.timing.seconds * 1000:.1f} ms"),
    ]
    if count > _HTML_ROWS:
        facts.append(("shown", f"the first {_HTML_ROWS}"))
    return block(
        f"Classifications of {e(result.model_name)}",
        facts,
        [table(("#", result.kind, "top classes"), rows)],
    )


# --- repository index ------------------------------------------------------------------------


def repository_index_html(models: Sequence[RepositoryModel]) -> str:
    rows = [(e(m.name), e(m.version or "-"), e(m.state or "-"), e(m.reason or "")) for m in models]
    return block(
        f"{len(models)} model versions",
        [],
        [table(("model", "version", "state", "reason"), rows)],
    )


# --- datasets --------------------------------------------------------------------------------


def _field_text(name: str, datatype: str, shape: Sequence[int]) -> str:
    return f"{name} {datatype}" + (f"[{','.join(str(d) for d in shape)}]" if shape else "")


def _size(size: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024  # type: ignore[assignment]
    return f"{size} B"  # pragma: no cover


def dataset_info_repr(info: DatasetInfo) -> str:
    fields = ", ".join(_field_text(f.name, f.datatype, f.shape) for f in info.schema_)
    return one_line(
        f"{type(info).__name__}(name={info.name!r}, version={info.version}, "
        f"format={info.format!r}, rows={info.rows}, schema=[{fields}])"
    )


def dataset_info_html(info: DatasetInfo) -> str:
    facts = [
        ("version", e(info.version)),
        ("format", e(f"{info.format} ({info.kind})")),
        ("rows", e(f"{info.rows:,}")),
        ("size", e(_size(info.size_bytes))),
        ("sha256", f"<code>{e(info.sha256[:16])}…</code>"),
        ("created", e(info.created)),
        ("owner", e(info.owner or "-")),
    ]
    versions = getattr(info, "versions", None)
    if versions:
        facts.insert(1, ("versions", e(", ".join(str(v) for v in versions))))
    tables = [
        table(
            ("field", "datatype", "shape per row"),
            [(e(f.name), e(f.datatype), e(f.shape)) for f in info.schema_],
        )
    ]
    rows: list[dict[str, Any]] = getattr(info, "preview", None) or []
    if rows:
        names = list(rows[0])
        tables.append(
            table(
                names,
                [[e(one_line(str(row.get(n)), 40)) for n in names] for row in rows],
                caption=f"first {len(rows)} rows",
            )
        )
    return block(f"dataset {e(info.name)}", facts, tables)


def dataset_list_html(datasets: Sequence[DatasetInfo]) -> str:
    rows = [
        (
            e(d.name),
            e(d.version),
            e(d.format),
            e(f"{d.rows:,}"),
            e(_size(d.size_bytes)),
            e(", ".join(_field_text(f.name, f.datatype, f.shape) for f in d.schema_)),
            e(d.owner or "-"),
        )
        for d in datasets
    ]
    return block(
        f"{len(datasets)} datasets",
        [],
        [table(("dataset", "version", "format", "rows", "size", "schema", "owner"), rows)],
    )
