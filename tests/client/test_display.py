"""How results, metadata, the repository index and errors show: rendered here, as Jupyter does."""

from __future__ import annotations

from collections.abc import Iterator
from html.parser import HTMLParser
from typing import Any

import numpy as np
import pytest

from maas_client import (
    APIConnectionError,
    BatchError,
    ChunkFailure,
    Client,
    InputError,
    ModelNotFoundError,
)
from maas_client._display import LINE_WIDTH, one_line, preview

VOID = {"br", "hr", "img", "meta", "input", "col"}


class Page(HTMLParser):
    """Checks that tags nest and close, and keeps the text and the table cells."""

    def __init__(self, markup: str) -> None:
        super().__init__()
        self.open: list[str] = []
        self.text: list[str] = []
        self.cells: list[str] = []
        self._cell: list[str] | None = None
        self.feed(markup)
        self.close()
        assert self.open == [], f"unclosed tags: {self.open}"

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag not in VOID:
            self.open.append(tag)
        if tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        assert self.open and self.open[-1] == tag, f"</{tag}> closes {self.open[-1:]}"
        self.open.pop()
        if tag in ("td", "th") and self._cell is not None:
            self.cells.append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)

    @property
    def plain(self) -> str:
        return " ".join("".join(self.text).split())


def render(obj: Any) -> tuple[str, Page]:
    """What Jupyter shows for ``obj``: its text/plain and text/html, through IPython's own
    display formatter."""
    formatters = pytest.importorskip("IPython.core.formatters")
    data, _ = formatters.DisplayFormatter().format(obj)
    assert "text/html" in data, f"{type(obj).__name__} has no HTML"
    plain = data["text/plain"]
    assert "\n" not in plain and len(plain) <= LINE_WIDTH, plain
    return plain, Page(data["text/html"])


@pytest.fixture(scope="module")
def client(server_url: str) -> Iterator[Client]:
    with Client(server_url) as client:
        yield client


def test_model_metadata(client: Client) -> None:
    plain, page = render(client.models.get("mlp"))
    assert plain.startswith("ModelMetadata(name='mlp'")
    assert "inputs=[input FP32[-1,64]], outputs=[output FP32[-1,10]]" in plain
    assert page.cells[:4] == ["", "name", "datatype", "shape"]
    assert page.cells[4:8] == ["input", "input", "FP32", "[-1, 64]"]
    assert page.cells[8:12] == ["output", "output", "FP32", "[-1, 10]"]
    assert "providers in use: CPUExecutionProvider" in page.plain
    assert "platform: onnx_onnxv1" in page.plain and "versions: 1" in page.plain
    assert "max batch size: 64" in page.plain


def test_infer_result(client: Client) -> None:
    x = np.arange(5 * 64, dtype=np.float32).reshape(5, 64) / 100
    result = client.infer("mlp", x)
    plain, page = render(result)
    assert plain == "InferResult(model='mlp', version='1', outputs={output: float32[5, 10]})"
    assert page.cells[:4] == ["output", "dtype", "shape", "preview"]
    assert page.cells[4:7] == ["output", "float32", "[5, 10]"]
    assert "(2 more)" in page.cells[7]  # three rows shown of five
    assert f"request id: {result.request_id}" in page.plain
    assert "attempts: 1" in page.plain and " ms" in page.plain


def test_batch_result(client: Client) -> None:
    result = client.infer_batched("mlp", np.zeros((130, 64), dtype=np.float32), progress=False)
    plain, page = render(result)
    assert plain.startswith("BatchResult(model='mlp'")
    assert "requests: 3" in page.plain and "[130, 10]" in page.cells


def test_repository_index(client: Client) -> None:
    plain, page = render(client.models.list())
    assert plain.startswith("RepositoryIndex([") and plain.endswith(("])", "…"))
    assert page.cells[:4] == ["model", "version", "state", "reason"]
    rows = [page.cells[i : i + 4] for i in range(4, len(page.cells), 4)]
    assert ["mlp", "1", "READY", ""] in rows
    corrupt = next(row for row in rows if row[0] == "corrupt")
    assert corrupt[2] == "UNAVAILABLE" and "onnxruntime" in corrupt[3]


def test_status_error(client: Client) -> None:
    with pytest.raises(ModelNotFoundError) as caught:
        client.infer("no_such_model", np.zeros((1, 64)))
    plain, page = render(caught.value)
    assert plain.startswith(f"<ModelNotFoundError 404 request_id={caught.value.request_id}")
    assert "status: 404" in page.plain
    assert f"request id: {caught.value.request_id}" in page.plain
    assert "what to try: check the name and version against client.models.list()" in page.plain
    assert "no_such_model" in page.plain


def test_connection_and_input_errors(client: Client) -> None:
    with (
        Client("http://127.0.0.1:9", max_retries=0) as offline,
        pytest.raises(APIConnectionError) as caught,
    ):
        offline.server.live()
    _, page = render(caught.value)
    assert "status: no connection" in page.plain
    assert "is a server running at http://127.0.0.1:9/v2/health/live?" in page.plain
    with pytest.raises(InputError) as bad:
        client.infer("mlp", np.zeros((1, 63)))
    plain, page = render(bad.value)
    assert plain.startswith("<InputError: input 'input'")
    assert "client.models.get(model)" in bad.value.hint


def test_batch_error() -> None:
    error = BatchError(
        [ChunkFailure(10, 20, RuntimeError("boom"))],
        rows=30,
        result=None,
        succeeded_rows=np.arange(10),
    )
    plain, page = render(error)
    assert "10 of 30 rows failed in 1 request(s); first: rows 10-19: boom" in plain
    assert "what to try" in page.plain


def test_html_is_escaped(client: Client) -> None:
    with pytest.raises(InputError) as caught:
        client.infer("mlp", {"<script>": np.zeros((1, 64))})
    _, page = render(caught.value)
    assert "<script>" in page.plain  # as text, not as a tag (the parser checked the nesting)


def test_one_line_and_preview() -> None:
    assert one_line("a\n  b") == "a b"
    assert one_line("x" * 200, width=10) == "x" * 9 + "…"
    assert preview(np.arange(3)) == "[0, 1, 2]"
    assert preview(np.float32(1.5)) == "1.5"
