"""A training in its own process: epochs come back through the pipe, a cancel stops it at the
end of the epoch under way, and a failure comes back with its reason."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.datasets import load_diabetes, load_digits

from maas_server.settings import Settings
from maas_server.train_params import TrainingParams
from maas_server.train_preprocess import plan_features
from maas_server.train_process import TrainingProcess, TrainingRequest, write_columns

pytestmark = pytest.mark.asyncio

NICE = 0
"""The tests' trainings take an equal share of the CPU: at the server's default of nice 19 they
yield to every busy process on a shared machine, and crawl when the tests run under load.
``test_the_request_sets_the_niceness`` checks that the niceness asked for is applied."""


def _request(tmp_path: Path, **spec: Any) -> TrainingRequest:
    digits = load_digits()
    columns = {"image": digits.images.astype(np.float32), "digit": digits.target}
    write_columns(tmp_path, columns)
    features = plan_features([("image", "FP32", [8, 8]), ("digit", "INT64", [])], "digit")
    params = TrainingParams.from_spec({"dataset": "d", "target": "digit", "name": "m", **spec})
    return TrainingRequest(
        spec=params.to_spec(),
        features=[f.describe() for f in features],
        target_datatype="INT64",
        task="classification",
        out_dir=str(tmp_path),
        nice=NICE,
        parent_pid=os.getpid(),
    )


async def test_epochs_come_back_and_the_result_at_the_end(tmp_path: Path) -> None:
    epochs: list[dict[str, Any]] = []
    request = replace(_request(tmp_path, epochs=3), threads=1)
    outcome = await TrainingProcess(request).run(epochs.append, lambda: False)
    assert outcome.state == "done", outcome.reason
    assert [e["epoch"] for e in epochs] == [1, 2, 3]
    assert outcome.result is not None and outcome.result["epochs"] == 3
    assert (tmp_path / outcome.result["model_file"]).is_file()
    # the budget: one thread in each numeric pool (the default)
    budget = outcome.result["process"]
    assert budget["thread_pools"] and set(budget["thread_pools"].values()) == {1}


async def test_the_request_sets_the_niceness(tmp_path: Path) -> None:
    """Trainings run at the lowest priority by default (nice 19, the server's setting too);
    the child applies the niceness its request names (here 1 more than this process)."""
    assert TrainingRequest(spec={}, features=[], target_datatype="", task="", out_dir="").nice == 19
    assert Settings(repository=tmp_path).training_nice == 19
    request = replace(_request(tmp_path, epochs=1), nice=1)
    outcome = await TrainingProcess(request).run(lambda _: None, lambda: False)
    assert outcome.state == "done", outcome.reason
    assert outcome.result is not None
    assert outcome.result["process"]["nice"] == min(19, os.nice(0) + 1)


async def test_a_cancel_stops_at_the_end_of_the_epoch_under_way(tmp_path: Path) -> None:
    epochs: list[int] = []
    request = _request(tmp_path, epochs=1000, early_stopping=False)
    outcome = await TrainingProcess(request).run(
        lambda data: epochs.append(data["epoch"]),
        cancelled=lambda: len(epochs) >= 2,  # asked for while epoch 3 could begin
    )
    assert outcome.state == "cancelled"
    assert epochs == [1, 2]
    assert not (tmp_path / "model.onnx").exists()


async def test_a_failure_comes_back_with_its_reason(tmp_path: Path) -> None:
    diabetes = load_diabetes()
    write_columns(tmp_path, {"x": diabetes.data, "y": diabetes.target})
    features = plan_features([("x", "FP64", [10]), ("y", "FP64", [])], "y")
    spec = {"dataset": "d", "target": "y", "name": "m", "optimizer": "sgd", "learning_rate": 10.0}
    request = TrainingRequest(
        spec=TrainingParams.from_spec(spec).to_spec(),
        features=[f.describe() for f in features],
        target_datatype="FP64",
        task="regression",
        out_dir=str(tmp_path),
        nice=NICE,
        parent_pid=os.getpid(),
    )
    outcome = await TrainingProcess(request).run(lambda data: None, lambda: False)
    assert outcome.state == "failed"
    assert outcome.reason is not None and outcome.reason.startswith("training diverged")
