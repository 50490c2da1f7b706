"""Every ```python block of README.md and docs/*.md runs, top to bottom, one namespace per file,
against a real server on the bundled example repository (with the pipeline models of
tests/pipelines.py beside it). The blocks are written for a server at
http://127.0.0.1:8000; the test points them at its own server instead."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from maas_server import Settings, default_repository
from tests.conftest import RunningServer, start_server
from tests.pipelines import build_pipeline_repository

ROOT = Path(__file__).resolve().parent.parent
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)
DEFAULT_URL = "http://127.0.0.1:8000"


def python_blocks(path: Path) -> list[str]:
    return _BLOCK.findall(path.read_text(encoding="utf-8"))


ALL_DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
DOC_FILES = [p for p in ALL_DOCS if python_blocks(p)]
"""The pages with python blocks (others, such as the CLI reference, are run elsewhere)."""


@pytest.fixture
def docs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    # a copy: docs/publishing.md publishes and deletes models
    repository = tmp_path_factory.mktemp("docs") / "repository"
    shutil.copytree(default_repository(), repository)
    build_pipeline_repository(repository)  # minilm, for the README's embed example
    # nice 0: at 19 the guides' trainings crawl when the tests share a busy machine
    running = start_server(Settings(repository=repository, training_nice=0))
    yield running
    running.stop()


def test_docs_have_python_blocks() -> None:
    assert ROOT / "README.md" in DOC_FILES
    assert sum(len(python_blocks(p)) for p in DOC_FILES) >= 5


@pytest.mark.parametrize("path", DOC_FILES, ids=[p.name for p in DOC_FILES])
def test_python_blocks_run(
    path: Path,
    docs_server: RunningServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    blocks = python_blocks(path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MAAS_BASE_URL", docs_server.url)
    namespace: dict[str, object] = {"__name__": "__docs__"}
    for index, block in enumerate(blocks):
        code = compile(block.replace(DEFAULT_URL, docs_server.url), f"{path.name}[{index}]", "exec")
        exec(code, namespace)
