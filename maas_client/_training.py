"""Training jobs on the client side, without I/O: the spec a create sends, and how a training's
epochs are shown while ``job.wait(progress=True)`` follows it.

Each ``epoch`` event of the job moves the bar one epoch and writes the live loss in its postfix
(tqdm); in a notebook with matplotlib (``pip install 'maas[plot]'``), a loss curve, training and
validation, is drawn again as each epoch arrives. Nothing here imports matplotlib until a
notebook shows a training.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Mapping, Sequence
from typing import Any

from maas_wire.jobs import JobEvent, JobInfo

from ._batched import in_notebook
from ._exceptions import InputError

__all__ = ["EpochWatcher", "LossCurve", "training_metrics", "training_spec"]

PLOT_MISSING = "the loss curve needs matplotlib: pip install 'maas[plot]'"


def training_spec(
    dataset: str,
    *,
    target: str,
    model: str,
    name: str,
    features: Sequence[str] | None,
    hidden_layers: Sequence[int] | None,
    params: Mapping[str, Any],
) -> dict[str, Any]:
    """The body of ``POST /v2/jobs`` for a training (the server checks every parameter and
    names the one it refuses)."""
    if not isinstance(dataset, str) or not dataset:
        raise InputError("a training needs the name of a dataset on the server")
    spec: dict[str, Any] = {
        "type": "training",
        "dataset": dataset,
        "target": target,
        "model": model,
        "name": name,
    }
    if features is not None:
        spec["features"] = list(features)
    if hidden_layers is not None:
        spec["hidden_layers"] = [int(n) for n in hidden_layers]
    spec.update({k: v for k, v in params.items() if v is not None})
    return spec


def training_metrics(info: JobInfo) -> dict[str, Any] | None:
    """A finished training's held-out metrics (None before it succeeded)."""
    if info.result is None:
        return None
    metrics = info.result.get("metrics")
    return dict(metrics) if isinstance(metrics, Mapping) else None


class LossCurve:
    """Training and validation loss per epoch, drawn in a notebook cell and redrawn as epochs
    arrive (matplotlib, imported here, on first use)."""

    def __init__(self, title: str) -> None:
        if importlib.util.find_spec("matplotlib") is None:
            raise ImportError(PLOT_MISSING)
        pyplot: Any = importlib.import_module("matplotlib.pyplot")
        display: Any = importlib.import_module("IPython.display")
        self._pyplot = pyplot
        self._display = display
        self.figure, self.axes = pyplot.subplots(figsize=(6, 3.5))
        pyplot.close(self.figure)  # shown through the display handle only
        self.title = title
        self.epochs: list[int] = []
        self.train: list[float] = []
        self.validation: list[float] = []
        self._handle: Any = None

    def add(self, epoch: int, train_loss: float, val_loss: float) -> None:
        self.epochs.append(epoch)
        self.train.append(train_loss)
        self.validation.append(val_loss)
        axes = self.axes
        axes.clear()
        axes.plot(self.epochs, self.train, label="training loss")
        axes.plot(self.epochs, self.validation, label="validation loss")
        axes.set_xlabel("epoch")
        axes.set_ylabel("loss")
        axes.set_title(self.title)
        axes.legend()
        if self._handle is None:
            self._handle = self._display.display(self.figure, display_id=True)
        else:
            self._handle.update(self.figure)


class EpochWatcher:
    """Shows a training's epochs on ``bar`` (its postfix) and, in a notebook, a loss curve."""

    def __init__(self, bar: Any, title: str, *, curve: bool | None = None) -> None:
        self.bar = bar
        self.title = title
        self.curve: LossCurve | None = None
        self._want_curve = in_notebook() if curve is None else curve
        self.last: dict[str, Any] | None = None

    def event(self, event: JobEvent) -> None:
        if event.type != "epoch":
            return
        data = event.data
        self.last = dict(data)
        postfix = {
            "loss": _short(data.get("train_loss")),
            "val_loss": _short(data.get("val_loss")),
            str(data.get("metric") or "val_metric"): _short(data.get("val_metric")),
        }
        set_postfix = getattr(self.bar, "set_postfix", None)
        if set_postfix is not None:
            set_postfix(postfix, refresh=True)
        if self._want_curve:
            try:
                if self.curve is None:
                    self.curve = LossCurve(self.title)
                self.curve.add(
                    int(data["epoch"]), float(data["train_loss"]), float(data["val_loss"])
                )
            except ImportError:
                self._want_curve = False  # no matplotlib: the bar alone


def _short(value: Any) -> str:
    if isinstance(value, (int, float)):
        return f"{value:.4g}"
    return "-"
