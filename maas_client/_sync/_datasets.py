# generated from maas_client/_async/_datasets.py by scripts/unasync.py; do not edit
"""``client.datasets``: upload, list, show, download and delete the server's datasets (maas).

What is sent and how answers are read lives in :mod:`maas_client._dataset_files`; here are the
calls, through the client's pipeline (retries, several servers, hooks).
"""

from __future__ import annotations

import builtins
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from .._answers import parse_json_object
from .._batched import ProgressLike
from .._dataset_files import (
    DOWNLOAD_SUFFIXES,
    DatasetListing,
    DownloadFile,
    decode_dataset,
    parse_dataset_info,
    parse_dataset_list,
    parse_dataset_preview,
    plan_dataset,
    plan_dataset_data,
    plan_dataset_delete,
    plan_dataset_upload,
    plan_datasets,
    prepare_dataset,
)
from .._endpoints import Endpoint, Route
from .._exceptions import InputError
from .._options import ResolvedOptions
from .._plans import RequestPlan
from .._status import connection_error
from .._types import CallOptions, VersionLike
from ..types import DatasetInfo, DatasetPreview

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from ._pipeline import Pipeline

__all__ = ["Datasets"]


def _given_back(result: Path, route: Route, endpoint: Endpoint) -> None:
    route.release(endpoint, None)


class Datasets:
    """``client.datasets``: tables and arrays stored on the server, for batch jobs and training.

    >>> info = client.datasets.upload("digits", {"pixels": x, "label": y})  # doctest: +SKIP
    >>> client.datasets.download("digits")["pixels"].shape  # doctest: +SKIP
    (1797, 64)
    """

    def __init__(self, pipeline: Pipeline) -> None:
        self._pipeline = pipeline

    def upload(
        self,
        name: str,
        source: Any,
        *,
        format: str | None = None,
        progress: ProgressLike = True,
        **options: Unpack[CallOptions],
    ) -> DatasetInfo:
        """Store ``source`` as the next version of dataset ``name`` and return its info
        (version, schema, rows, sha256).

        ``source`` is a path to a ``.csv``, ``.parquet``, ``.jsonl``, ``.npy`` or ``.npz`` file
        (``format=`` for another suffix), a pandas DataFrame or a pyarrow Table (sent as
        Parquet), or a mapping of names to numpy arrays sharing their first axis (sent as NPZ).
        The body is streamed; a progress bar shows where someone can see it. Not retried once
        it may have reached the server (a second upload would be one more version).
        """
        body, chosen = prepare_dataset(source, name=name, format=format, progress=progress)
        try:
            return self._pipeline.call(
                plan_dataset_upload(name, body, chosen), options, parse_dataset_info
            )
        finally:
            body.close()

    def list(self, **options: Unpack[CallOptions]) -> DatasetListing:
        """``GET /v2/datasets``: the latest version of each dataset the API key may see."""
        return self._pipeline.call(plan_datasets(), options, parse_dataset_list)

    def get(
        self,
        name: str,
        version: VersionLike = None,
        *,
        rows: int = 5,
        **options: Unpack[CallOptions],
    ) -> DatasetPreview:
        """A version of ``name`` (the latest by default): schema, rows, size, sha256, owner,
        the versions on the server, and its first ``rows`` rows (``.preview``)."""
        return self._pipeline.call(
            plan_dataset(name, version, rows), options, parse_dataset_preview
        )

    def download(
        self,
        name: str,
        *,
        version: VersionLike = None,
        format: str | None = None,
        to: str | os.PathLike[str] | None = None,
        **options: Unpack[CallOptions],
    ) -> Any:
        """A version of ``name`` (the latest by default).

        Without ``to``: a pandas DataFrame for a table, a dict of numpy arrays for an array
        dataset (``format="npz"`` gives a table as arrays too). With ``to``: the file written
        there (streamed, renamed into place once complete), as ``format``: ``"original"`` (the
        uploaded bytes, the default), ``"parquet"``, ``"csv"`` or ``"npz"``; its path is
        returned. A folder as ``to`` gets ``<name>-v<version>.<format>`` in it.
        """
        if to is not None:
            return self._save(name, version, format or "original", Path(to), options)
        if format is None or format == "original":
            info = self.get(name, version, rows=0, **options)
            version = info.version
            if format == "original":
                format = info.format
            else:
                format = "npz" if info.kind == "arrays" else "parquet"
        answer = self._pipeline.call(
            plan_dataset_data(name, version, format), options, lambda a: a.content
        )
        return decode_dataset(answer, format)

    def _save(
        self, name: str, version: VersionLike, format: str, to: Path, options: CallOptions
    ) -> Path:
        if to.is_dir():
            if format == "original":
                info = self.get(name, version, rows=0, **options)
                version, suffix = info.version, "." + info.format
            else:
                suffix = DOWNLOAD_SUFFIXES.get(format, "." + format)
            label = f"-v{version}" if version is not None else ""
            to = to / f"{name}{label}{suffix}"
        if not to.parent.is_dir():
            raise InputError(f"no folder {to.parent} to download into")
        pipeline = self._pipeline
        plan = plan_dataset_data(name, version, format)

        def once(
            plan: RequestPlan,
            resolved: ResolvedOptions,
            number: int,
            start: float,
            deadline_at: float | None,
            base_url: str | None,
        ) -> Path:
            request, response, sent_at = pipeline.open(
                plan, resolved, number, deadline_at, base_url
            )
            out = DownloadFile(to)
            try:
                for chunk in response.iter_bytes():
                    out.write(chunk)
            except httpx.TransportError as exc:
                out.discard()
                raise connection_error(
                    exc, request, request_id=resolved.request_id, attempts=number
                ) from exc
            except BaseException:
                out.discard()
                raise
            finally:
                response.close()
            pipeline.log_response(request, response, sent_at)
            return out.commit()

        return pipeline.attempts(plan, pipeline.resolve(options), once, _given_back)

    def delete(
        self, name: str, version: VersionLike = None, **options: Unpack[CallOptions]
    ) -> builtins.list[int]:
        """Delete one version of ``name``, or every version without ``version``; the versions
        deleted. The server refuses (409, :class:`~maas_client.ConflictError`) while a job
        reads one of them."""
        answer = self._pipeline.call(plan_dataset_delete(name, version), options, parse_json_object)
        return [int(v) for v in answer.get("deleted", [])]
