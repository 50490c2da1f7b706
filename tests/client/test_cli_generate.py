"""``maas generate MODEL PROMPT`` against a real server: what it prints, its options and errors,
and (in a subprocess, reading its stdout as it comes) that the text appears while the model is
still generating."""

from __future__ import annotations

import os
import subprocess
import sys

from typer.testing import CliRunner

from maas_cli import app
from maas_client import Client
from tests.waiting import StepGate

PROMPT = "Licensed under the"


def run(url: str, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["--url", url, "generate", *args], env=env)
    return result.exit_code, result.stdout, result.stderr


def test_prints_the_generation(generation_url: str) -> None:
    with Client(generation_url) as client:
        expected = client.generate("tiny_gpt", PROMPT, max_tokens=16)
        stopped = client.generate("tiny_gpt", PROMPT, max_tokens=16, stop=expected.text[4:7])
        sampled = client.generate(
            "tiny_gpt", PROMPT, max_tokens=8, temperature=0.9, top_k=50, top_p=0.9, seed=3
        )
    for streaming in ("--stream", "--no-stream"):
        code, out, err = run(generation_url, "tiny_gpt", PROMPT, "--max-tokens", "16", streaming)
        assert (code, out, err) == (0, expected.text + "\n", "")

    code, out, err = run(
        generation_url, "tiny_gpt", PROMPT, "--max-tokens=16", "--stats", "--version=1"
    )
    assert code == 0 and out == expected.text + "\n"
    assert "finish_reason=length prompt_tokens=5 completion_tokens=16" in err
    assert "first_text_seconds=" in err

    code, out, _ = run(
        generation_url, "tiny_gpt", PROMPT, "--max-tokens=16",
        "--stop", "never appears", "--stop", expected.text[4:7],
    )  # fmt: skip
    assert (code, out) == (0, stopped.text + "\n")

    code, out, _ = run(
        generation_url, "tiny_gpt", PROMPT, "--max-tokens=8",
        "--temperature=0.9", "--top-k=50", "--top-p=0.9", "--seed=3",
    )  # fmt: skip
    assert (code, out) == (0, sampled.text + "\n")


def test_url_from_the_environment_and_extra_parameters(generation_url: str) -> None:
    result = CliRunner().invoke(
        app,
        ["generate", "tiny_gpt", "a", "--max-tokens=40", "--param", "ignore_eos=true", "--stats"],
        env={"MAAS_BASE_URL": generation_url},
    )
    assert result.exit_code == 0, result.output
    assert "completion_tokens=40" in result.stderr
    code, _, err = run(generation_url, "tiny_gpt", "a", "--param", "no-equals-sign")
    assert code == 2 and "KEY=VALUE" in err


def test_errors_go_to_stderr(generation_url: str) -> None:
    code, out, err = run(generation_url, "no_such_model", PROMPT)
    assert (code, out) == (1, "")
    assert err.startswith("error: 404") and "no_such_model" in err
    code, _, err = run(generation_url, "tiny_gpt", PROMPT, "--top-p=3")
    assert code == 1 and "top_p" in err
    code, _, err = run("http://127.0.0.1:9", "tiny_gpt", PROMPT, env={"MAAS_MAX_RETRIES": "0"})
    assert code == 1 and err.startswith("error: connection error")


def test_tokens_are_printed_as_they_arrive(engine_gate: StepGate, generation_url: str) -> None:
    engine = engine_gate.engine
    with Client(generation_url) as client:
        expected = client.generate("tiny_gpt", "Copyright", max_tokens=120).text
    command = [
        sys.executable, "-m", "maas_cli", f"--url={generation_url}", "generate",
        "tiny_gpt", "Copyright", "--max-tokens=120",
    ]  # fmt: skip
    # no PYTHONUNBUFFERED: the command itself flushes each piece
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    env["PYTHONIOENCODING"] = "utf-8"
    engine_gate.pause_after(10)  # the engine pauses after 10 of the 120 steps
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env) as proc:
        assert proc.stdout is not None
        # a raw read (a buffered one would keep bytes that communicate() then misses)
        first = os.read(proc.stdout.fileno(), 1)  # blocks until the command prints something
        # the model is still at work (paused) when the text shows
        assert first and engine.active_sequences == 1 and proc.poll() is None
        engine_gate.open()
        rest, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert (first + rest).decode() == expected + "\n"
