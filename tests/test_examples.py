"""Every example runs against a real server on the bundled example repository: each script as a
process, and the notebook's code cells in order in one namespace (parsed from the .ipynb JSON, no
Jupyter kernel), with what each cell would display rendered as Jupyter renders it."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from maas_server import Settings, default_repository
from tests.conftest import RunningServer, start_server

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
SCRIPTS = {
    "classify.py": ["top 3: ", "request id"],
    "embed.py": ["image 0: nearest", "requests"],
    "batch_csv.py": ["wrote 5000 predictions to predictions.csv", "img-00000"],
    "async_fanout.py": ["200 requests in", "labels seen"],
}


@pytest.fixture(scope="module")
def examples_server() -> Iterator[RunningServer]:
    running = start_server(Settings(repository=default_repository()))
    yield running
    running.stop()


def test_every_example_script_is_tested() -> None:
    scripts = {
        p.name for p in EXAMPLES.glob("*.py") if not p.name.startswith(("build_", "fetch_"))
    }
    assert scripts == set(SCRIPTS)


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_example_script(script: str, examples_server: RunningServer, tmp_path: Path) -> None:
    env = {**os.environ, "MAAS_BASE_URL": examples_server.url}
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    for expected in SCRIPTS[script]:
        assert expected in done.stdout, done.stdout


def test_classify_runs_the_server_in_process(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "classify.py"), "--local"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "image 3: label" in done.stdout


def _cells(path: Path) -> list[str]:
    notebook = json.loads(path.read_text())
    assert notebook["nbformat"] == 4
    return ["".join(cell["source"]) for cell in notebook["cells"] if cell["cell_type"] == "code"]


def _run_cell(source: str, namespace: dict[str, Any], name: str) -> Any:
    """Run a cell as IPython does: the value of a last bare expression is what it displays."""
    tree = ast.parse(source)
    last = tree.body[-1] if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    if last is not None:
        tree.body.pop()
    exec(compile(tree, name, "exec"), namespace)
    if last is None:
        return None
    return eval(compile(ast.Expression(last.value), name, "eval"), namespace)


def test_notebook(examples_server: RunningServer, monkeypatch: pytest.MonkeyPatch) -> None:
    formatters = pytest.importorskip("IPython.core.formatters")
    from tests.client.test_display import Page

    monkeypatch.setenv("MAAS_BASE_URL", examples_server.url)
    formatter = formatters.DisplayFormatter()
    namespace: dict[str, Any] = {"__name__": "__notebook__"}
    shown: list[str] = []
    for index, source in enumerate(_cells(EXAMPLES / "notebook.ipynb")):
        value = _run_cell(source, namespace, f"notebook.ipynb[{index}]")
        if value is None:
            continue
        data, _ = formatter.format(value)
        html = data.get("text/html")
        assert html, f"cell {index} displays {type(value).__name__} without HTML"
        shown.append(Page(html).plain)
    assert len(shown) == 6
    assert "model digits" in shown[1] and "providers in use" in shown[1]
    assert "InferResult of digits" in shown[2]
    assert "probabilities_0" in shown[3] and "label" in shown[4]
    assert "ModelNotFoundError" in shown[5] and "what to try" in shown[5]
