"""The ``maas`` client commands, driven by typer's CliRunner against real servers."""

from __future__ import annotations

import io
import json
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import typer
from typer.testing import CliRunner, Result

from maas_cli import app
from maas_server import Settings, default_repository
from tests import models
from tests.client.test_client import mlp_reference
from tests.conftest import RunningServer, start_server

runner = CliRunner()
X = np.random.default_rng(11).standard_normal((3, 64)).astype(np.float32)


def maas(url: str | None, *args: str, **kwargs: Any) -> Result:
    prefix = ["--url", url] if url else []
    return runner.invoke(app, [*prefix, *args], **kwargs)


def ok(result: Result) -> str:
    assert result.exit_code == 0, (result.exit_code, result.output, result.exception)
    return result.stdout


@pytest.fixture(scope="module")
def explicit_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("cli-repository")
    models.save(models.mlp_model(), root / "mlp" / "1" / "model.onnx")
    (root / "mlp" / "config.json").write_text(json.dumps({"max_batch_size": 64}))
    running = start_server(
        Settings(repository=root, model_control="explicit", strict_readiness=False)
    )
    yield running
    running.stop()


def test_importing_the_cli_leaves_the_server_out() -> None:
    code = (
        "import sys, maas_cli._app; "
        "print([m for m in ('onnxruntime', 'maas_server', 'pandas') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _commands(group: Any, path: list[str]) -> Iterator[list[str]]:
    for name, command in group.commands.items():
        if hasattr(command, "commands"):  # a group (typer's own click or click's)
            yield from _commands(command, [*path, name])
        else:
            yield [*path, name]


def test_every_command_has_help_with_an_example() -> None:
    paths = list(_commands(typer.main.get_command(app), []))
    assert {"health", "predict", "bench", "serve"} <= {p[0] for p in paths}
    assert ["models", "unload"] in paths
    for path in paths:
        text = ok(runner.invoke(app, [*path, "--help"]))
        assert "Example: maas " in " ".join(text.split()), path


# --- health and models -------------------------------------------------------------------------


def test_health(server_url: str) -> None:
    out = ok(maas(server_url, "health", "--model", "mlp"))
    assert "live: yes, ready: yes" in out and "model mlp: ready: yes" in out
    report = json.loads(ok(maas(server_url, "health", "--json")))
    assert report["live"] is True and report["server"] == "maas"
    missing = maas(server_url, "health", "--model", "no_such_model")
    assert missing.exit_code == 1 and "error: " in missing.stderr


def test_health_not_ready(explicit_server: RunningServer) -> None:
    result = maas(explicit_server.url, "health", "--model", "mlp")
    assert result.exit_code == 1
    assert "model mlp: ready: no" in result.stdout and "is not ready" in result.stderr


def test_models_list_show_config_stats(server_url: str) -> None:
    listing = ok(maas(server_url, "models", "list"))
    assert "mlp" in listing and "READY" in listing and "UNAVAILABLE" in listing
    rows = json.loads(ok(maas(server_url, "models", "list", "--ready", "--json")))
    assert {"name": "mlp", "version": "1", "state": "READY", "reason": ""} in rows
    assert all(row["state"] == "READY" for row in rows)
    shown = ok(maas(server_url, "models", "show", "mlp"))
    assert "providers in use: CPUExecutionProvider" in shown and "[-1, 64]" in shown
    metadata = json.loads(ok(maas(server_url, "models", "show", "mlp", "--json")))
    assert metadata["inputs"][0] == {"name": "input", "datatype": "FP32", "shape": [-1, 64]}
    config = json.loads(ok(maas(server_url, "models", "config", "mlp")))
    assert config["max_batch_size"] == 64
    ok(maas(server_url, "predict", "mlp", "--data", json.dumps({"input": X.tolist()})))
    stats = json.loads(ok(maas(server_url, "models", "stats", "mlp", "--json")))
    assert stats["model_stats"][0]["name"] == "mlp"
    assert "mlp" in ok(maas(server_url, "models", "stats"))


def test_load_and_unload(explicit_server: RunningServer) -> None:
    url = explicit_server.url
    assert "loaded mlp" in ok(
        maas(url, "models", "load", "mlp", "--config", '{"max_batch_size": 8}')
    )
    assert json.loads(ok(maas(url, "models", "config", "mlp")))["max_batch_size"] == 8
    assert "unloaded mlp" in ok(maas(url, "models", "unload", "mlp"))
    bad = maas(url, "models", "load", "mlp", "--config", "{not json")
    assert bad.exit_code == 2


# --- predict -----------------------------------------------------------------------------------


def outputs_of(result: Result) -> np.ndarray[Any, Any]:
    document = json.loads(ok(result))
    return np.array(document["outputs"]["output"]["data"])


@pytest.mark.parametrize("kind", ["npy", "npz", "npz-unnamed", "json", "json-named", "csv"])
def test_predict_from_files(server_url: str, tmp_path: Path, kind: str) -> None:
    if kind == "npy":
        np.save(tmp_path / "x.npy", X)
        spec = f"input={tmp_path / 'x.npy'}"
    elif kind == "npz":
        np.savez(tmp_path / "x.npz", anything=X)
        spec = f"input={tmp_path / 'x.npz'}"
    elif kind == "npz-unnamed":
        np.savez(tmp_path / "x.npz", input=X)
        spec = str(tmp_path / "x.npz")
    elif kind == "json":
        (tmp_path / "x.json").write_text(json.dumps(X.tolist()))
        spec = f"input={tmp_path / 'x.json'}"
    elif kind == "json-named":
        (tmp_path / "x.json").write_text(json.dumps({"input": X.tolist()}))
        spec = str(tmp_path / "x.json")
    else:
        header = ",".join(f"f{i}" for i in range(64))
        np.savetxt(tmp_path / "x.csv", X, delimiter=",", header=header, comments="")
        spec = f"input={tmp_path / 'x.csv'}"
    got = outputs_of(maas(server_url, "predict", "mlp", "--input", spec, "--json"))
    np.testing.assert_allclose(got, mlp_reference(X), rtol=1e-4, atol=1e-4)


def test_predict_inline_and_stdin(server_url: str) -> None:
    inline = f"input={json.dumps(X.tolist())}"
    expected = mlp_reference(X)
    got = outputs_of(maas(server_url, "predict", "mlp", "-i", inline, "--json"))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    data = json.dumps({"input": X.tolist()})
    got = outputs_of(maas(server_url, "predict", "mlp", "--data", data, "--json"))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    got = outputs_of(maas(server_url, "predict", "mlp", "--json", input=json.dumps(X.tolist())))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    v2 = {
        "inputs": [
            {"name": "input", "shape": [3, 64], "datatype": "FP32", "data": X.ravel().tolist()}
        ]
    }
    got = outputs_of(maas(server_url, "predict", "mlp", "--json", input=json.dumps(v2)))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    buffer = io.BytesIO()
    np.save(buffer, X)
    got = outputs_of(maas(server_url, "predict", "mlp", "--json", input=buffer.getvalue()))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_predict_table_and_npz(server_url: str, tmp_path: Path) -> None:
    table = ok(maas(server_url, "predict", "mlp", "--data", json.dumps(X.tolist())))
    assert "mlp version 1" in table and "request id" in table and "row" in table
    out = tmp_path / "out.npz"
    result = maas(server_url, "predict", "mlp", "--data", json.dumps(X.tolist()), "-o", str(out))
    ok(result)
    assert "wrote output to" in result.stderr
    with np.load(out) as saved:
        np.testing.assert_allclose(saved["output"], mlp_reference(X), rtol=1e-4, atol=1e-4)
    many = np.zeros((15, 64)).tolist()
    assert "5 more rows" in ok(maas(server_url, "predict", "mlp", "--data", json.dumps(many)))


def test_predict_classifier_shows_top_k_labels(server_url: str, tmp_path: Path) -> None:
    image = np.random.default_rng(0).random((2, 3, 48, 192)).astype(np.float32)
    np.save(tmp_path / "image.npy", image)
    spec = f"x={tmp_path / 'image.npy'}"
    table = ok(maas(server_url, "predict", "ppocr_cls", "-i", spec, "--top-k", "2"))
    assert "(top classes)" in table
    first_row = next(line for line in table.splitlines() if line.strip("│ ").startswith("0 "))
    labels = [part.split()[0] for part in first_row.split("│")[2].split(",")]
    assert sorted(labels) == ["0", "180"]  # both labels of labels.txt, with their scores
    document = json.loads(ok(maas(server_url, "predict", "ppocr_cls", "-i", spec, "--json")))
    scores = np.array(document["outputs"]["save_infer_model/scale_0.tmp_1"]["data"])
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, rtol=1e-5)


def test_predict_errors(server_url: str, tmp_path: Path) -> None:
    nothing = maas(server_url, "predict", "mlp")
    assert nothing.exit_code == 2 and "give inputs" in nothing.output
    (tmp_path / "x.txt").write_text("1")
    assert maas(server_url, "predict", "mlp", "-i", f"input={tmp_path / 'x.txt'}").exit_code == 2
    wrong = maas(server_url, "predict", "mlp", "--data", "[[1, 2]]")
    assert wrong.exit_code == 2 and "expects shape [-1, 64]" in wrong.stderr
    missing = maas(server_url, "predict", "no_such_model", "--data", "[[1]]")
    assert missing.exit_code == 1
    assert "error: 404" in missing.stderr and "hint: check the name" in missing.stderr
    assert "Traceback" not in missing.output
    debug = runner.invoke(
        app, ["--url", server_url, "--debug", "predict", "no_such_model", "-d", "[[1]]"]
    )
    assert debug.exit_code == 1 and "Traceback" in debug.stderr


# --- bench -------------------------------------------------------------------------------------


def test_bench_count_and_duration(server_url: str) -> None:
    summary = json.loads(ok(maas(server_url, "bench", "mlp", "-n", "40", "-c", "4", "--json")))
    assert summary["requests"] == 40 and summary["errors"] == 0
    assert summary["p50_ms"] <= summary["p90_ms"] <= summary["p99_ms"]
    assert summary["requests_per_s"] > 0
    table = ok(maas(server_url, "bench", "mlp", "-t", "0.5", "-b", "16", "--encoding", "json"))
    assert "16 rows per request, json" in table and "req/s" in table and "p99 ms" in table


def test_bench_errors(server_url: str) -> None:
    assert maas(server_url, "bench", "mlp", "--encoding", "xml").exit_code == 2
    missing = maas(server_url, "bench", "no_such_model", "-n", "1")
    assert missing.exit_code == 1 and "error: " in missing.stderr


# --- global options ----------------------------------------------------------------------------


def test_options_from_the_environment(server_url: str) -> None:
    result = runner.invoke(app, ["health"], env={"MAAS_BASE_URL": server_url})
    assert "live: yes" in ok(result)
    bad = runner.invoke(app, ["health"], env={"MAAS_BASE_URL": server_url, "MAAS_TIMEOUT": "x"})
    assert bad.exit_code == 2


def test_network_error_is_one_line_and_status_1() -> None:
    result = maas("http://127.0.0.1:9", "--max-retries", "0", "--timeout", "2", "models", "list")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: connection error")
    assert "hint: is a server running" in result.stderr and "Traceback" not in result.output
    assert maas("not-a-url", "health").exit_code == 2
    assert runner.invoke(app, ["models", "frobnicate"]).exit_code == 2


UNREACHABLE = "http://127.0.0.1:9"


def test_every_command_takes_the_global_options_after_its_name() -> None:
    for path in _commands(typer.main.get_command(app), []):
        text = ok(runner.invoke(app, [*path, "--help"]))
        for option in ("--url", "--api-key", "--timeout", "--max-retries", "--debug"):
            assert option in text, (path, option)
    bad = runner.invoke(app, ["models", "list", "--timeout", "-1"])
    assert bad.exit_code == 2 and "--timeout" in bad.output  # validated as before the command


def test_global_options_before_or_after_the_command(server_url: str) -> None:
    before = json.loads(ok(runner.invoke(app, ["--url", server_url, "models", "list", "--json"])))
    after = json.loads(ok(runner.invoke(app, ["models", "list", "--json", "--url", server_url])))
    assert after == before and {row["name"] for row in after} >= {"mlp"}
    data = json.dumps({"input": X.tolist()})
    predicted = ok(
        runner.invoke(app, ["predict", "mlp", "--data", data, "--json", "--url", server_url])
    )
    assert json.loads(predicted)["model_name"] == "mlp"
    assert "mlp" in ok(runner.invoke(app, ["models", "--url", server_url, "list"]))  # after a group
    assert "live: yes" in ok(runner.invoke(app, ["health", f"--url={server_url}"]))
    failed = runner.invoke(app, ["health", "--url", UNREACHABLE, "--max-retries", "0", "--debug"])
    assert failed.exit_code == 1 and "Traceback" in failed.stderr  # --debug after the command


def test_global_options_after_the_command_win(server_url: str) -> None:
    # over the same option before the command
    won = runner.invoke(app, ["--url", UNREACHABLE, "models", "list", "--url", server_url])
    assert "mlp" in ok(won)
    lost = runner.invoke(
        app, ["--url", server_url, "models", "list", "--url", UNREACHABLE, "--max-retries", "0"]
    )
    assert lost.exit_code == 1 and "127.0.0.1:9" in lost.stderr
    # the innermost wins: root, then the group, then the command
    nested = ["--url", UNREACHABLE, "models", "--url", UNREACHABLE, "list", "--url", server_url]
    assert "mlp" in ok(runner.invoke(app, nested))
    # over the environment
    env = {"MAAS_BASE_URL": UNREACHABLE, "MAAS_MAX_RETRIES": "0"}
    assert "mlp" in ok(runner.invoke(app, ["models", "list", "--url", server_url], env=env))
    # and the ones not repeated after the command still apply
    kept = runner.invoke(app, ["--max-retries", "0", "--debug", "health", "--url", UNREACHABLE])
    assert kept.exit_code == 1 and "Traceback" in kept.stderr


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("cli-keyed-repository")
    models.save(models.mlp_model(), root / "mlp" / "1" / "model.onnx")
    running = start_server(Settings(repository=root, admin_api_key="k-admin"))
    yield running
    running.stop()


def test_api_key_after_the_command_wins(keyed_server: RunningServer) -> None:
    url = keyed_server.url
    refused = runner.invoke(app, ["--url", url, "models", "list", "--api-key", "wrong"])
    assert refused.exit_code == 1 and "error: " in refused.stderr
    listed = ["--url", url, "--api-key", "wrong", "models", "list", "--api-key", "k-admin"]
    assert "mlp" in ok(runner.invoke(app, listed))
    overridden = ["--api-key", "k-admin", "models", "list", "--url", url, "--api-key", "wrong"]
    assert runner.invoke(app, overridden).exit_code == 1
    env = {"MAAS_API_KEY": "wrong"}
    by_env = runner.invoke(app, ["models", "list", "--url", url, "--api-key", "k-admin"], env=env)
    assert "mlp" in ok(by_env)


# --- the commands shown in the docs ------------------------------------------------------------

DOCS = Path(__file__).resolve().parent.parent / "docs"
_BASH = re.compile(r"^```bash\n(.*?)^```", re.DOTALL | re.MULTILINE)


def documented_commands() -> list[list[str]]:
    """Every ``maas ...`` line of the bash blocks of the quickstart and the CLI reference, but
    ``maas serve`` (the test starts its own server) and syntax summaries."""
    commands = []
    for name in ("quickstart.md", "cli.md"):
        for block in _BASH.findall((DOCS / name).read_text()):
            for line in block.splitlines():
                words = shlex.split(line, comments=True)
                if words[:1] == ["maas"] and words[1:2] != ["serve"] and "[" not in line:
                    commands.append(words[1:])
    return commands


@pytest.fixture(scope="module")
def examples_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    # a copy: the CLI reference publishes and deletes models
    repository = tmp_path_factory.mktemp("cli-docs") / "repository"
    shutil.copytree(default_repository(), repository)
    running = start_server(Settings(repository=repository))
    yield running
    running.stop()


def test_documented_commands_run(
    examples_server: RunningServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    commands = documented_commands()
    assert len(commands) >= 15
    images = np.random.default_rng(0).random((4, 64)).astype(np.float32) * 16
    np.save(tmp_path / "images.npy", images)
    header = ",".join(f"px{i}" for i in range(64))
    np.savetxt(tmp_path / "images.csv", images, delimiter=",", header=header, comments="")
    (tmp_path / "request.json").write_text(json.dumps({"input": images.tolist()}))
    shutil.copyfile(default_repository() / "digits" / "1" / "model.onnx", tmp_path / "model.onnx")
    monkeypatch.chdir(tmp_path)
    for words in commands:
        result = runner.invoke(app, words, env={"MAAS_BASE_URL": examples_server.url})
        assert result.exit_code == 0, (words, result.output)


def test_models_push_versions_default_delete(tmp_path: Path) -> None:
    root = tmp_path / "repository"
    root.mkdir()
    running = start_server(Settings(repository=root))
    try:
        url = running.url
        first, second = tmp_path / "first.onnx", tmp_path / "second.onnx"
        models.save(models.mlp_model(seed=1), first)
        models.save(models.mlp_model(seed=2), second)
        config = tmp_path / "config.json"
        config.write_text(json.dumps({"max_batch_size": 16}))
        assert "version 1" in ok(
            maas(url, "models", "push", "m", str(first), "--config", str(config))
        )
        assert "version 2" in ok(maas(url, "models", "push", "m", str(second)))
        ok(maas(url, "models", "push", "m", str(first), "--version", "5", "--no-default"))
        listed = json.loads(ok(maas(url, "models", "versions", "m", "--json")))
        assert [v["version"] for v in listed["versions"]] == ["1", "2", "5"]
        assert listed["default"] == "2" and listed["serving"] == "2"
        assert "now answers with version 1" in ok(maas(url, "models", "default", "m", "1"))
        table = ok(maas(url, "models", "versions", "m"))
        assert "READY" in table and "onnx" in table
        ok(maas(url, "models", "delete", "m", "--version", "5"))
        refused = maas(url, "models", "delete", "m")
        assert refused.exit_code == 1 and "force" in refused.output
        ok(maas(url, "models", "delete", "m", "--force"))
        bad = tmp_path / "bad.onnx"
        bad.write_bytes(models.corrupt_model_bytes())
        failed = maas(url, "models", "push", "m2", str(bad))
        assert failed.exit_code == 1 and "400" in failed.output
    finally:
        running.stop()
