"""``maas predict MODEL --text/--image`` and ``maas embed``, driven by typer's CliRunner against
the real pipeline server (tests/pipelines.py: MiniLM, PaddleOCR's direction classifier, a text
classifier)."""

from __future__ import annotations

import io
import json
import re
import shlex
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner, Result

from maas_cli import app
from maas_server import Settings
from tests.conftest import RunningServer, start_server
from tests.pipelines import reference_embeddings, text_image

runner = CliRunner()
TEXTS = ["a cat sat on the mat", "Ünïcödé and emoji 🙂 too", "the stock market fell"]


@pytest.fixture(scope="module")
def url(pipeline_server: RunningServer) -> str:
    return pipeline_server.url


@pytest.fixture
def lines(tmp_path: Path) -> tuple[Path, Path]:
    up, down = tmp_path / "up.png", tmp_path / "down.jpg"
    up.write_bytes(text_image("Hello World 12345"))
    down.write_bytes(text_image("The quick brown fox", rotate=True, fmt="JPEG"))
    return up, down


def maas(url: str, *args: str, **kwargs: Any) -> Result:
    return runner.invoke(app, ["--url", url, *args], **kwargs)


def ok(result: Result) -> str:
    assert result.exit_code == 0, (result.exit_code, result.output, result.exception)
    return result.stdout


def usage_error(result: Result) -> str:
    """The output of a command that ended with a usage error, on one line (rich boxes it)."""
    assert result.exit_code == 2, (result.exit_code, result.output)
    return " ".join(result.output.replace("│", " ").split())


def cosines(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    return (a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def table_rows(text: str) -> list[list[str]]:
    """The cells of each body row of a rich table (not the lines a wrapped cell continues on)."""
    rows = [
        [cell.strip() for cell in line.split("│")[1:-1]]
        for line in text.splitlines()
        if line.startswith("│")
    ]
    return [row for row in rows if row[0]]


# --- predict --text / --image -------------------------------------------------------------------


def test_predict_images_prints_labels_and_scores(url: str, lines: tuple[Path, Path]) -> None:
    up, down = lines
    out = ok(maas(url, "predict", "ppocr_dir", "--image", str(up), "--image", str(down)))
    assert out.startswith("ppocr_dir version 1, ")
    rows = table_rows(out)
    assert [row[:3] for row in rows] == [["0", "up.png", "0"], ["1", "down.jpg", "180"]]
    assert all(float(row[3]) > 0.99 for row in rows)
    assert rows[0][4].startswith("180 ") and rows[1][4].startswith("0 ")


def test_predict_texts_with_a_classifier_sends_top_k(url: str) -> None:
    out = ok(maas(url, "predict", "sentiment", "--text", "great movie", "-t", "x", "-k", "2"))
    rows = table_rows(out)
    assert [row[1] for row in rows] == ["great movie", "x"]
    assert all(len(row[4].split(", ")) == 1 for row in rows)  # the second of 2 classes
    document = json.loads(ok(maas(url, "predict", "sentiment", "-t", "great movie", "--json")))
    assert document["outputs"]["label"]["shape"] == [1, 3]
    assert document["outputs"]["score"]["datatype"] == "FP32"


def test_predict_texts_with_an_embedding_model(url: str) -> None:
    args = [arg for text in TEXTS for arg in ("--text", text)]
    out = ok(maas(url, "predict", "minilm", *args))
    assert "3 embeddings of 384 dimensions (float32)" in out
    rows = table_rows(out)
    assert [row[1] for row in rows] == TEXTS and all(row[2] == "1.0000" for row in rows)
    document = json.loads(ok(maas(url, "predict", "minilm", *args, "--json")))
    vectors = np.array(document["outputs"]["embedding"]["data"], dtype=np.float32)
    assert cosines(vectors, reference_embeddings(TEXTS)).min() >= 0.9999


def test_predict_images_to_npz_and_global_options_after_the_command(
    url: str, lines: tuple[Path, Path], tmp_path: Path
) -> None:
    _, down = lines
    target = tmp_path / "out.npz"
    result = runner.invoke(
        app, ["predict", "ppocr_dir", "--image", str(down), "-o", str(target), "--url", url]
    )
    ok(result)
    with np.load(target, allow_pickle=True) as saved:
        assert saved["label"][0, 0] == b"180"


def test_predict_text_and_image_errors(url: str, lines: tuple[Path, Path], tmp_path: Path) -> None:
    up, _ = lines
    both = usage_error(maas(url, "predict", "minilm", "--text", "x", "--image", str(up)))
    assert "give --text or --image, not both" in both
    mixed = usage_error(maas(url, "predict", "minilm", "--text", "x", "--data", "[[1]]"))
    assert "replace --input and --data" in mixed
    missing = usage_error(maas(url, "predict", "ppocr_dir", "--image", str(tmp_path / "no.png")))
    assert "does not exist" in missing
    wrong = usage_error(maas(url, "predict", "ppocr_dir", "--text", "hello"))
    assert "has no input 'text'" in wrong and "'image' (BYTES [-1])" in wrong
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(up.read_bytes()[:40])
    failed = maas(url, "predict", "ppocr_dir", "--image", str(corrupt))
    assert failed.exit_code == 1 and "element 0" in failed.stderr


# --- embed --------------------------------------------------------------------------------------


def test_embed_prints_a_summary(url: str) -> None:
    out = ok(maas(url, "embed", "minilm", *TEXTS))
    assert out.startswith("minilm: 3 embeddings of 384 dimensions (float32)")
    rows = table_rows(out)
    assert [row[1] for row in rows] == TEXTS and all(row[2] == "1.0000" for row in rows)


def test_embed_as_json_equals_the_reference(url: str) -> None:
    vectors = np.array(json.loads(ok(maas(url, "embed", "minilm", *TEXTS, "--format", "json"))))
    assert vectors.shape == (3, 384)
    assert cosines(vectors, reference_embeddings(TEXTS)).min() >= 0.9999


def test_embed_to_files(url: str, tmp_path: Path) -> None:
    npy, as_json = tmp_path / "vectors.npy", tmp_path / "vectors.json"
    result = maas(url, "embed", "minilm", *TEXTS, "-o", str(npy), "--batch-size", "2")
    ok(result)
    assert f"wrote 3 embeddings of 384 dimensions to {npy}" in result.stderr
    vectors = np.load(npy)
    assert vectors.dtype == np.float32 and vectors.shape == (3, 384)
    assert cosines(vectors, reference_embeddings(TEXTS)).min() >= 0.9999
    ok(maas(url, "embed", "minilm", *TEXTS, "--output", str(as_json)))
    np.testing.assert_allclose(np.array(json.loads(as_json.read_text())), vectors, atol=1e-6)


def test_embed_npy_to_stdout(url: str) -> None:
    result = maas(url, "embed", "minilm", TEXTS[0], "--format", "npy")
    ok(result)
    vectors = np.load(io.BytesIO(result.stdout_bytes))
    assert vectors.shape == (1, 384)


def test_embed_texts_from_stdin(url: str) -> None:
    out = ok(maas(url, "embed", "minilm", "-f", "json", input="\n".join(TEXTS) + "\n\n"))
    vectors = np.array(json.loads(out))
    assert cosines(vectors, reference_embeddings(TEXTS)).min() >= 0.9999


def test_embed_errors(url: str) -> None:
    assert "stdin holds no texts" in usage_error(maas(url, "embed", "minilm", input=""))
    wrong = usage_error(maas(url, "embed", "sentiment", "hello"))
    assert "'sentiment' is a model of task 'text-classification'" in wrong
    bad = usage_error(maas(url, "embed", "minilm", "x", "--format", "csv"))
    assert "'csv' is not one of 'json', 'npy'" in bad
    long = maas(url, "embed", "minilm_short", "short", "word " * 40)
    assert long.exit_code == 1 and "at most 16" in long.stderr
    unknown = maas(url, "embed", "no_such_model", "x")
    assert unknown.exit_code == 1 and "no_such_model" in unknown.stderr


# --- the commands of the pipelines guide --------------------------------------------------------

DOCS = Path(__file__).resolve().parent.parent.parent / "docs"
SECTION = "## From Python and the command line"


def guide_commands() -> list[tuple[list[str], str | None]]:
    """Each ``maas ...`` line of the bash blocks in the guide's section on the client and the
    CLI, with the file it reads on stdin (``< FILE``)."""
    pages = [p for p in sorted(DOCS.glob("*.md")) if SECTION in p.read_text(encoding="utf-8")]
    assert len(pages) == 1, pages
    text = pages[0].read_text(encoding="utf-8").split(SECTION, 1)[1]
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, re.DOTALL | re.MULTILINE):
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            if words[:1] == ["maas"]:
                stdin = None
                if "<" in words:
                    at = words.index("<")
                    stdin, words = words[at + 1], words[:at] + words[at + 2 :]
                commands.append((words[1:], stdin))
    return commands


@pytest.fixture(scope="module")
def guide_server(
    pipeline_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    """The models of the guide under its names: ``minilm`` and ``text_direction``."""
    root = tmp_path_factory.mktemp("guide")
    shutil.copytree(pipeline_repository / "minilm", root / "minilm")
    shutil.copytree(pipeline_repository / "ppocr_dir", root / "text_direction")
    running = start_server(Settings(repository=root))
    yield running
    running.stop()


def test_the_guide_commands_run(
    guide_server: RunningServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    commands = guide_commands()
    assert len(commands) >= 7
    (tmp_path / "line.png").write_bytes(text_image("Hello World 12345"))
    (tmp_path / "sentences.txt").write_text("\n".join(f"sentence {i}" for i in range(40)))
    monkeypatch.chdir(tmp_path)
    for words, stdin in commands:
        given = (tmp_path / stdin).read_text() if stdin else None
        result = runner.invoke(app, words, input=given, env={"MAAS_BASE_URL": guide_server.url})
        assert result.exit_code == 0, (words, result.output)
    assert np.load(tmp_path / "vectors.npy").shape == (2, 384)
    assert np.array(json.loads((tmp_path / "vectors.json").read_text())).shape == (40, 384)
