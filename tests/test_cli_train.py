"""``maas train`` against a real server: live epochs, the metrics table, errors named."""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import pytest
from sklearn.datasets import load_digits

from maas_client import Client
from maas_server import Settings
from tests.conftest import RunningServer, start_server
from tests.test_cli import maas, ok


@pytest.fixture(scope="module")
def train_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("cli-train")
    running = start_server(  # nice 0: at 19 a training crawls on a busy shared machine
        Settings(repository=root, data_dir=root.parent / "train-data", training_nice=0)
    )
    digits = load_digits()
    with Client(running.url) as client:
        columns = {"image": digits.images.astype(np.float32), "digit": digits.target}
        client.datasets.upload("digits", columns, progress=False)
    yield running
    running.stop()


def test_train_shows_epochs_and_the_metrics_table(train_server: RunningServer) -> None:
    result = maas(
        train_server.url,
        "train",
        "digits",
        "--target",
        "digit",
        "--name",
        "digits",
        "--hidden",
        "32",
        "--epochs",
        "3",
    )
    out = ok(result)
    assert "held-out metrics" in out and "accuracy" in out and "macro_f1" in out
    assert "confusion matrix" in out
    assert "training job" in result.stderr
    shown = json.loads(
        ok(
            maas(
                train_server.url,
                "train",
                "digits",
                "-t",
                "digit",
                "-n",
                "lin",
                "--kind",
                "linear",
                "--json",
            )
        )
    )
    assert shown["state"] == "succeeded" and shown["result"]["metrics"]["accuracy"] > 0.9


def test_train_errors_are_named(train_server: RunningServer) -> None:
    bad = maas(train_server.url, "train", "digits", "--target", "nope", "--name", "x")
    assert bad.exit_code != 0 and "target column 'nope' is not in the dataset" in bad.output
    widths = maas(train_server.url, "train", "digits", "-t", "digit", "-n", "x", "--hidden", "a")
    assert widths.exit_code != 0 and "layer widths" in widths.output
    diverged = maas(
        train_server.url,
        "train",
        "digits",
        "-t",
        "digit",
        "-n",
        "x",
        "--task",
        "regression",
        "--optimizer",
        "sgd",
        "--learning-rate",
        "10",
        "--epochs",
        "30",
    )
    assert diverged.exit_code != 0 and "training diverged" in diverged.output
