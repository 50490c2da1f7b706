"""The PyTorch engine: the same MLP as scikit-learn's, trained with Adam, on CUDA when present.

Optional (``pip install 'maas[torch]'``): nothing imports torch until a training asks for
``"engine": "torch"``, and the job is refused at create time when torch is not installed
(:func:`available`). The network is exported by ``torch.onnx`` and joined behind the
preprocessing in one graph (:func:`maas_server.train_export.joined_model`).

Losses: cross-entropy for a classifier; half the mean squared error of the standardised target
for a regressor (as scikit-learn's MLP, so the engines' curves compare). Weight decay is Adam's.
"""

from __future__ import annotations

import importlib
import importlib.util
import io
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .train_export import OPSET, joined_model
from .train_params import TrainingParams
from .train_preprocess import FeatureColumn

__all__ = ["TorchMLP", "available"]


def available() -> bool:
    """Whether torch (and onnx, for the export) can be imported here."""
    return all(importlib.util.find_spec(name) is not None for name in ("torch", "onnx"))


class TorchMLP:
    """A ``torch.nn`` MLP behind the :class:`maas_server.train_engine.Learner` protocol."""

    def __init__(
        self,
        params: TrainingParams,
        task: str,
        x: np.ndarray[Any, Any],
        y: np.ndarray[Any, Any],
        classes: np.ndarray[Any, Any] | None,
    ) -> None:
        torch: Any = importlib.import_module("torch")

        self.engine, self.engine_version = "torch", str(torch.__version__)
        cuda = torch.cuda.is_available()
        if params.device == "cuda" and not cuda:
            raise RuntimeError("device 'cuda' was asked for, but torch sees no CUDA device")
        self.device = torch.device("cuda" if cuda and params.device != "cpu" else "cpu")
        torch.manual_seed(params.seed)
        self.generator = torch.Generator().manual_seed(params.seed)
        self.task, self.classes = task, classes
        outputs = len(classes) if classes is not None else 1
        activation = {
            "relu": torch.nn.ReLU,
            "tanh": torch.nn.Tanh,
            "logistic": torch.nn.Sigmoid,
            "identity": torch.nn.Identity,
        }[params.activation]
        layers: list[Any] = []
        width = x.shape[1]
        for hidden in params.hidden_layers:
            layers += [torch.nn.Linear(width, hidden), activation()]
            width = hidden
        layers.append(torch.nn.Linear(width, outputs))
        self.network = torch.nn.Sequential(*layers).to(self.device)
        if params.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(
                self.network.parameters(),
                lr=params.learning_rate,
                momentum=0.9,
                weight_decay=params.weight_decay,
            )
        else:
            self.optimizer = torch.optim.Adam(
                self.network.parameters(),
                lr=params.learning_rate,
                weight_decay=params.weight_decay,
            )
        self.x = torch.as_tensor(x, dtype=torch.float32, device=self.device)
        if classes is not None:
            self.y = torch.as_tensor(
                np.searchsorted(classes, y), dtype=torch.int64, device=self.device
            )
        else:
            self.y = torch.as_tensor(y, dtype=torch.float32, device=self.device)
        self.batch_size = min(params.batch_size, len(x))

    def _loss(self, out: Any, y: Any) -> Any:
        torch: Any = importlib.import_module("torch")

        if self.classes is not None:
            return torch.nn.functional.cross_entropy(out, y)
        return torch.nn.functional.mse_loss(out.reshape(-1), y) / 2

    def epoch(self) -> float:
        torch: Any = importlib.import_module("torch")

        self.network.train()
        order = torch.randperm(len(self.x), generator=self.generator).to(self.device)
        total = 0.0
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            self.optimizer.zero_grad()
            loss = self._loss(self.network(self.x[rows]), self.y[rows])
            value = float(loss.detach())
            if not math.isfinite(value):
                return value
            loss.backward()
            self.optimizer.step()
            total += value * len(rows)
        return total / len(self.x)

    def predict(self, x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        torch: Any = importlib.import_module("torch")

        self.network.eval()
        with torch.no_grad():
            out = self.network(torch.as_tensor(x, dtype=torch.float32, device=self.device))
            if self.classes is not None:
                out = torch.softmax(out, dim=1)
            result: np.ndarray[Any, Any] = out.cpu().numpy().astype(np.float64)
        return result if self.classes is not None else result.reshape(-1)

    def snapshot(self) -> Any:
        return {k: v.detach().clone() for k, v in self.network.state_dict().items()}

    def restore(self, state: Any) -> None:
        self.network.load_state_dict(state)

    def estimator(self, preprocessor: Any) -> Any:
        return {
            "preprocessor": preprocessor,
            "network": {k: v.cpu() for k, v in self.network.state_dict().items()},
        }

    def export(
        self,
        preprocessor: Any,
        features: Sequence[FeatureColumn],
        task: str,
        target_scale: tuple[float, float] | None,
        metadata: Mapping[str, Any],
    ) -> bytes:
        torch: Any = importlib.import_module("torch")

        network = self.network.to("cpu").eval()
        if self.classes is not None:
            module: Any = torch.nn.Sequential(network, torch.nn.Softmax(dim=1))
            output = "probabilities"
        else:
            module = network
            output = "prediction"
        buffer = io.BytesIO()
        with warnings.catch_warnings():
            # dynamo=False: the TorchScript exporter is deprecated, but makes one
            # self-contained graph with a dynamic batch (as maas_client's converter does)
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                (torch.zeros(2, self.x.shape[1]),),
                buffer,
                dynamo=False,
                input_names=["features"],
                output_names=[output],
                dynamic_axes={"features": {0: "batch"}, output: {0: "batch"}},
                opset_version=OPSET,
            )
        self.network.to(self.device)
        return joined_model(
            preprocessor,
            buffer.getvalue(),
            features,
            task,
            classes=list(self.classes) if self.classes is not None else None,
            target_scale=target_scale,
            metadata=metadata,
        )
