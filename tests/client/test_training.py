"""Training from the client against a real server (sync and async): ``create_training``, the
live loss while ``wait(progress=True)`` follows it, ``job.metrics``, ``job.model`` ready to
infer, ``client.train(df, ...)``, and the notebook loss curve."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_digits, load_iris

from maas_client import (
    AsyncClient,
    AsyncJob,
    AsyncTrainedModel,
    BadRequestError,
    Client,
    Job,
    JobError,
    TrainedModel,
)
from maas_client._training import EpochWatcher, LossCurve
from maas_server import Settings
from maas_wire.jobs import JobEvent
from tests.conftest import RunningServer, start_server

DIGITS = load_digits()


@pytest.fixture(scope="module")
def training_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("training-models")
    running = start_server(  # nice 0: at 19 a training crawls on a busy shared machine
        Settings(repository=root, data_dir=root.parent / "training-data", training_nice=0)
    )
    with Client(running.url) as client:
        client.datasets.upload(
            "digits",
            {"image": DIGITS.images.astype(np.float32), "digit": DIGITS.target},
            progress=False,
        )
    yield running
    running.stop()


def test_create_training_wait_metrics_and_model(
    training_server: RunningServer, capsys: pytest.CaptureFixture[str]
) -> None:
    with Client(training_server.url) as client:
        job = client.jobs.create_training(
            "digits", target="digit", name="digits-small", hidden_layers=[32], epochs=4
        )
        assert isinstance(job, Job) and job.info.type == "training"
        assert job.info.spec["hidden_layers"] == [32] and job.info.spec["epochs"] == 4
        with pytest.raises(JobError, match="published no model"):
            job.model  # noqa: B018  (not trained yet)
        job.wait(progress="always")
        assert job.state == "succeeded", job.info.error
        shown = capsys.readouterr().err
        assert "epochs" in shown and "loss=" in shown and "val_loss=" in shown
        assert "accuracy=" in shown
        metrics = job.metrics
        assert metrics is not None and metrics["accuracy"] > 0.6  # 4 small epochs
        assert np.array(metrics["confusion_matrix"]["matrix"]).shape == (10, 10)
        model = job.model
        assert isinstance(model, TrainedModel)
        assert (model.name, model.version) == ("digits-small", "1")
        meta = model.metadata()
        assert [(i.name, i.shape) for i in meta.inputs] == [("image", [-1, 8, 8])]
        result = model.infer({"image": DIGITS.images[:20].astype(np.float32)})
        assert result["label"].shape == (20,)
        assert (result["label"] == DIGITS.target[:20]).mean() > 0.5


def test_create_training_bad_parameter_is_a_400(training_server: RunningServer) -> None:
    with Client(training_server.url) as client:
        with pytest.raises(BadRequestError, match="target column 'nope' is not in the dataset"):
            client.jobs.create_training("digits", target="nope", name="x")
        with pytest.raises(BadRequestError, match="unknown training parameter 'epoch'"):
            client.jobs.create_training("digits", target="digit", name="x", epoch=3)


def test_train_a_dataframe_returns_the_served_metadata(training_server: RunningServer) -> None:
    iris = load_iris(as_frame=True)
    frame = iris.frame.rename(columns={"target": "species"})
    frame["species"] = iris.target_names[iris.target]
    with Client(training_server.url) as client:
        meta = client.train(frame, target="species", name="iris", epochs=30, progress=False)
        assert meta.name == "iris"
        assert [i.name for i in meta.inputs] == list(iris.feature_names)
        assert {i.datatype for i in meta.inputs} == {"FP32"}
        # the served model takes the DataFrame's own columns, raw
        result = client.infer("iris", frame.drop(columns="species"))
        labels = np.array([label.decode() for label in result["label"]])  # BYTES: bytes
        assert (labels == frame["species"].to_numpy()).mean() > 0.8
        with pytest.raises(BadRequestError, match="has one class"):
            client.train(
                pd.DataFrame({"x": [1.0, 2.0] * 20, "y": ["a"] * 40}),
                target="y",
                name="constant",
                progress=False,
            )


async def test_async_create_training_and_infer(training_server: RunningServer) -> None:
    async with AsyncClient(training_server.url) as client:
        job = await client.jobs.create_training(
            "digits", target="digit", name="digits-linear", model="linear"
        )
        assert isinstance(job, AsyncJob)
        await job.wait(progress=False)
        assert job.state == "succeeded", job.info.error
        assert job.metrics is not None and job.metrics["accuracy"] > 0.9
        assert isinstance(job.model, AsyncTrainedModel)
        result = await job.model.infer({"image": DIGITS.images[:5].astype(np.float32)})
        assert result["probabilities"].shape == (5, 10)


def _epoch(n: int, loss: float) -> JobEvent:
    return JobEvent(
        seq=n,
        time="now",
        type="epoch",
        data={
            "epoch": n,
            "train_loss": loss,
            "val_loss": loss * 1.5,
            "val_metric": 0.5,
            "metric": "accuracy",
            "elapsed_s": 0.1,
        },
    )


class Bar:
    def __init__(self) -> None:
        self.postfix: dict[str, Any] = {}

    def set_postfix(self, postfix: dict[str, Any], refresh: bool = True) -> None:
        self.postfix = postfix


def test_epoch_watcher_writes_the_live_loss() -> None:
    bar = Bar()
    watcher = EpochWatcher(bar, "job", curve=False)
    watcher.event(JobEvent(seq=1, time="now", type="progress", data={}))
    assert bar.postfix == {}
    watcher.event(_epoch(1, 0.25))
    assert bar.postfix == {"loss": "0.25", "val_loss": "0.375", "accuracy": "0.5"}


def test_loss_curve_redraws_as_epochs_arrive(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("matplotlib", reason="the loss curve needs matplotlib (maas[plot])")
    pytest.importorskip("IPython")
    import matplotlib

    matplotlib.use("Agg")
    import IPython.display

    shown: list[Any] = []

    class Handle:
        def update(self, figure: Any) -> None:
            shown.append(("update", figure))

    def display(figure: Any, display_id: bool = False) -> Handle:
        shown.append(("display", figure))
        return Handle()

    monkeypatch.setattr(IPython.display, "display", display)
    watcher = EpochWatcher(Bar(), "job 1", curve=True)
    for n, loss in enumerate([1.0, 0.5, 0.25], start=1):
        watcher.event(_epoch(n, loss))
    assert [kind for kind, _ in shown] == ["display", "update", "update"]
    curve = watcher.curve
    assert isinstance(curve, LossCurve)
    train_line, validation_line = curve.axes.get_lines()
    assert list(train_line.get_ydata()) == [1.0, 0.5, 0.25]
    assert list(validation_line.get_ydata()) == [1.5, 0.75, 0.375]
