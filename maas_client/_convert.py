"""From what a caller wants to publish to the bytes of one ONNX model: :func:`to_onnx`.

``client.models.upload(name, source)`` calls :func:`to_onnx` on everything that is not already
a version folder. It takes:

- an ONNX model: a path to an ``.onnx`` file, its bytes, or an ``onnx.ModelProto``; checked
  with ``onnx.checker`` and passed through unchanged;
- a fitted scikit-learn estimator or ``Pipeline``, converted with ``skl2onnx``
  (``pip install 'maas[sklearn]'``);
- a ``torch.nn.Module`` with ``example_inputs=``, exported with the TorchScript exporter of
  ``torch.onnx`` (``pip install 'maas[torch]'``).

The names that come out are the ones a caller of the served model reads:

==================  ===============================  ===========================================
source              inputs                           outputs
==================  ===============================  ===========================================
classifier          ``input`` FP32 [batch, n]        ``label`` [batch] (what ``predict`` says,
                                                     INT64 or BYTES), ``probabilities`` FP32
                                                     [batch, n_classes] (``predict_proba``)
regressor           ``input`` FP32 [batch, n]        ``prediction`` FP32 [batch, n_targets]
other estimators    ``input`` FP32 [batch, n]        ``output`` (one) or as skl2onnx names them
torch module        ``input`` (``input_0``, ...)     ``output`` (``output_0``, ...)
==================  ===============================  ===========================================

The first dimension of every input and output is dynamic and named ``batch``. A classifier's
classes come back in :attr:`ConvertedModel.labels`, in the order of the columns of
``probabilities`` (the labels file the server's classification extension reads).

An estimator fitted on a pandas DataFrame still gets one tensor input: the columns in the order
of ``feature_names_in_`` (kept in :attr:`ConvertedModel.feature_names`), all numeric. One tensor
keeps the served model callable with a plain array, the same as the bundled ``digits`` model; a
pipeline that needs string columns is converted by the caller with ``skl2onnx`` and published as
an ONNX model.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import Any

from ._exceptions import InputError

__all__ = ["ConvertedModel", "to_onnx"]

BATCH_DIM = "batch"
"""The name given to the dynamic first dimension of every input and output."""

_SKLEARN_MISSING = "converting a scikit-learn model needs skl2onnx: pip install 'maas[sklearn]'"
_TORCH_MISSING = "exporting a torch module needs torch and onnx: pip install 'maas[torch]'"
_ONNX_MISSING = "checking an ONNX model needs the onnx package: pip install onnx"


@dataclass(frozen=True)
class ConvertedModel:
    """One ONNX model ready to publish, with where it came from.

    Example::

        converted = to_onnx(pipeline)  # a fitted scikit-learn Pipeline
        converted.outputs              # ('label', 'probabilities')
        converted.write(repository / "digits_v2", version=1)
    """

    model_bytes: bytes
    framework: str
    """``"onnx"``, ``"sklearn"`` or ``"torch"``: what the caller handed over."""
    framework_version: str | None
    """The version of that framework (for ``"onnx"``: the producer's, when the file says)."""
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    labels: tuple[str, ...] | None = None
    """A classifier's classes, in the order of the columns of ``probabilities``."""
    feature_names: tuple[str, ...] | None = None
    """The columns, in order, of an estimator fitted on a DataFrame."""
    converter: str | None = None
    """What made the ONNX graph, e.g. ``"skl2onnx 1.20.0"``; ``None`` for an ONNX source."""
    opset: int | None = None
    """The default-domain opset the graph imports."""
    seconds: float = field(default=0.0, compare=False)
    """How long the conversion and the check took."""

    @property
    def sha256(self) -> str:
        """The hex sha256 of :attr:`model_bytes` (what an upload sends as its checksum)."""
        return hashlib.sha256(self.model_bytes).hexdigest()

    def labels_text(self) -> str | None:
        """The labels file: one class a line, or ``None`` when the model has no labels."""
        return None if self.labels is None else "".join(f"{label}\n" for label in self.labels)

    def provenance(self) -> dict[str, str]:
        """What an upload records about the model's origin (framework, versions)."""
        found = {
            "framework": self.framework,
            "framework_version": self.framework_version,
            "converter": self.converter,
        }
        return {key: value for key, value in found.items() if value is not None}

    def write(
        self, model_dir: str | os.PathLike[str], *, version: int = 1, max_batch_size: int = 1024
    ) -> Path:
        """Write a model repository entry: ``<model_dir>/<version>/model.onnx``, ``config.json``
        and, for a classifier, ``labels.txt``; return the path of ``model.onnx``."""
        root = Path(model_dir)
        path = root / str(version) / "model.onnx"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.model_bytes)
        config: dict[str, Any] = {"max_batch_size": max_batch_size}
        text = self.labels_text()
        if text is not None:
            (root / "labels.txt").write_text(text, encoding="utf-8")
            config["labels"] = "labels.txt"
        (root / "config.json").write_text(json.dumps(config) + "\n", encoding="utf-8")
        return path


def to_onnx(
    source: Any,
    *,
    example_inputs: Any = None,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    target_opset: int | None = None,
) -> ConvertedModel:
    """Turn ``source`` into one checked ONNX model with meaningful input and output names.

    ``source`` is a path to an ``.onnx`` file, its bytes, an ``onnx.ModelProto``, a fitted
    scikit-learn estimator or pipeline, or a ``torch.nn.Module`` (then ``example_inputs``, a
    tensor or a tuple of tensors, is required). ``input_names`` and ``output_names`` replace
    the default names of a converted model; ``target_opset`` picks the ONNX opset.

    Raises :class:`~maas_client.InputError` (a ``ValueError``) for a source that is not a valid
    model, and ``ImportError`` naming the extra to install when a converter is missing.
    """
    start = time.perf_counter()
    if isinstance(source, (bytes, bytearray, memoryview)):
        converted = _from_onnx_bytes(bytes(source), what="the bytes given")
    elif isinstance(source, (str, os.PathLike)):
        converted = _from_onnx_path(Path(source))
    elif _is_onnx_model(source):
        converted = _from_onnx_bytes(source.SerializeToString(), what="the ModelProto given")
    elif _comes_from(source, "torch"):
        converted = _from_torch(source, example_inputs, input_names, output_names, target_opset)
    elif _comes_from(source, "sklearn"):
        converted = _from_sklearn(source, example_inputs, input_names, output_names, target_opset)
    else:
        raise InputError(
            f"cannot make an ONNX model of a {type(source).__qualname__}: pass a path to an "
            ".onnx file, ONNX bytes, an onnx.ModelProto, a fitted scikit-learn estimator or a "
            "torch.nn.Module with example_inputs="
        )
    return replace(converted, seconds=time.perf_counter() - start)


# -- what the source is ------------------------------------------------------------------------


def _comes_from(source: Any, package: str) -> bool:
    """Whether ``source`` is an instance of a class defined in ``package`` (or derived from one).

    Looking at the class's modules needs no import: a torch module can only exist when torch is
    installed, and nothing is imported for a source of another kind.
    """
    return any((klass.__module__ or "").split(".")[0] == package for klass in type(source).__mro__)


def _is_onnx_model(source: Any) -> bool:
    return _comes_from(source, "onnx") and type(source).__name__ == "ModelProto"


def _import(name: str, missing: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise ImportError(missing) from exc


# -- ONNX sources ------------------------------------------------------------------------------


def _from_onnx_path(path: Path) -> ConvertedModel:
    if path.is_dir():
        raise InputError(
            f"{path} is a folder: a version folder is uploaded as it is; to_onnx takes one "
            ".onnx file"
        )
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read the ONNX model {path}: {exc.strerror}") from None
    return _from_onnx_bytes(data, what=str(path))


def _from_onnx_bytes(data: bytes, *, what: str) -> ConvertedModel:
    model = _parse_checked(data, what)
    producer = model.producer_version or None
    return ConvertedModel(
        model_bytes=data,
        framework="onnx",
        framework_version=f"{model.producer_name} {producer}".strip() if producer else None,
        inputs=_graph_inputs(model),
        outputs=tuple(value.name for value in model.graph.output),
        opset=_default_opset(model),
    )


def _parse_checked(data: bytes, what: str) -> Any:
    """Parse and check ONNX bytes; an :class:`InputError` says what is wrong with them."""
    onnx = _import("onnx", _ONNX_MISSING)
    if not data:
        raise InputError(f"{what}: not an ONNX model (empty)")
    try:
        model = onnx.load_model_from_string(data)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise InputError(f"{what}: not an ONNX model ({type(exc).__name__}: {exc})") from None
    if not model.graph.node and not model.graph.output:
        # protobuf parses many byte strings as an empty message: that is no model either
        raise InputError(f"{what}: not an ONNX model (no graph)")
    if any(tensor.data_location == onnx.TensorProto.EXTERNAL for tensor in model.graph.initializer):
        raise InputError(
            f"{what}: the model keeps its weights in external data files; upload its folder"
        )
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise InputError(f"{what}: not a valid ONNX model ({_first_line(exc)})") from None
    return model


def _first_line(exc: BaseException) -> str:
    """The first line of an error's message (converters explain at length below it)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _graph_inputs(model: Any) -> tuple[str, ...]:
    initializers = {tensor.name for tensor in model.graph.initializer}
    return tuple(value.name for value in model.graph.input if value.name not in initializers)


def _default_opset(model: Any) -> int | None:
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            return int(opset.version)
    return None


# -- graph edits -------------------------------------------------------------------------------


def _rename(model: Any, renames: dict[str, str]) -> None:
    """Rename graph inputs and outputs (and every use of them) in place."""
    graph = model.graph
    renames = {old: new for old, new in renames.items() if old != new}
    if not renames:
        return
    taken = (
        {name for node in graph.node for name in (*node.input, *node.output)}
        | {value.name for value in (*graph.input, *graph.output)}
        | {tensor.name for tensor in graph.initializer}
    ) - set(renames)
    clashes = sorted(set(renames.values()) & taken)
    if clashes:
        raise InputError(f"cannot rename to {clashes}: the graph already uses those names")
    for node in graph.node:
        node.input[:] = [renames.get(name, name) for name in node.input]
        node.output[:] = [renames.get(name, name) for name in node.output]
    for value in (*graph.input, *graph.output, *graph.value_info):
        value.name = renames.get(value.name, value.name)


def _name_batch_dim(model: Any) -> None:
    """Name the first dimension of every input and output ``batch`` when it has no name."""
    for value in (*model.graph.input, *model.graph.output):
        if not value.type.HasField("tensor_type"):
            continue
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value") and not dims[0].dim_param:
            dims[0].dim_param = BATCH_DIM


def _names(given: Sequence[str] | None, defaults: Sequence[str], what: str) -> tuple[str, ...]:
    if given is None:
        return tuple(defaults)
    names = tuple(given)
    if len(names) != len(defaults):
        raise InputError(f"{len(names)} {what} names given for {len(defaults)} {what}s")
    if len(set(names)) != len(names) or not all(names):
        raise InputError(f"the {what} names must be distinct and not empty: {list(names)}")
    return names


def _numbered(stem: str, count: int) -> list[str]:
    return [stem] if count == 1 else [f"{stem}_{i}" for i in range(count)]


# -- scikit-learn ------------------------------------------------------------------------------


def _from_sklearn(
    estimator: Any,
    example_inputs: Any,
    input_names: Sequence[str] | None,
    output_names: Sequence[str] | None,
    target_opset: int | None,
) -> ConvertedModel:
    sklearn = _import("sklearn", _SKLEARN_MISSING)
    skl2onnx = _import("skl2onnx", _SKLEARN_MISSING)
    data_types = _import("skl2onnx.common.data_types", _SKLEARN_MISSING)
    base = _import("sklearn.base", _SKLEARN_MISSING)
    validation = _import("sklearn.utils.validation", _SKLEARN_MISSING)
    exceptions = _import("sklearn.exceptions", _SKLEARN_MISSING)
    try:
        validation.check_is_fitted(estimator)
    except exceptions.NotFittedError:
        raise InputError(
            f"the {type(estimator).__name__} is not fitted: call fit() before converting it"
        ) from None
    except TypeError as exc:  # not an estimator at all
        raise InputError(f"cannot convert a {type(estimator).__name__}: {exc}") from None
    n_features = _n_features(estimator, example_inputs)
    (input_name,) = _names(input_names, ["input"], "input")
    initial = [(input_name, data_types.FloatTensorType([None, n_features]))]
    is_classifier = bool(base.is_classifier(estimator))
    try:
        model = skl2onnx.convert_sklearn(
            estimator,
            initial_types=initial,
            target_opset=target_opset,
            # a dense [batch, n_classes] tensor, not a sequence of maps
            options={"zipmap": False} if is_classifier else None,
        )
    except Exception as exc:  # skl2onnx raises RuntimeError, NameError, ... for what it lacks
        raise InputError(
            f"skl2onnx cannot convert this {type(estimator).__name__}: "
            f"{type(exc).__name__}: {_first_line(exc)}"
        ) from None
    produced = [value.name for value in model.graph.output]
    meaningful = _sklearn_output_names(produced, is_classifier, bool(base.is_regressor(estimator)))
    renames = dict(zip(produced, _names(output_names, meaningful, "output"), strict=True))
    _rename(model, renames)
    _name_batch_dim(model)
    data = model.SerializeToString()
    checked = _parse_checked(data, f"the ONNX graph of the {type(estimator).__name__}")
    feature_names = getattr(estimator, "feature_names_in_", None)
    return ConvertedModel(
        model_bytes=data,
        framework="sklearn",
        framework_version=str(sklearn.__version__),
        inputs=_graph_inputs(checked),
        outputs=tuple(value.name for value in checked.graph.output),
        labels=_class_labels(estimator) if is_classifier else None,
        feature_names=None if feature_names is None else tuple(str(f) for f in feature_names),
        converter=f"skl2onnx {skl2onnx.__version__}",
        opset=_default_opset(checked),
    )


def _n_features(estimator: Any, example_inputs: Any) -> int:
    if example_inputs is not None:
        shape = getattr(example_inputs, "shape", None)
        if shape is None or len(shape) != 2:
            raise InputError(
                "example_inputs for a scikit-learn model is a 2-D array (rows, features)"
            )
        return int(shape[1])
    n_features = getattr(estimator, "n_features_in_", None)
    if n_features is None:
        raise InputError(
            f"the {type(estimator).__name__} does not say how many features it takes: "
            "pass example_inputs= (a 2-D array)"
        )
    return int(n_features)


def _sklearn_output_names(produced: list[str], classifier: bool, regressor: bool) -> list[str]:
    if classifier and len(produced) == 2:
        return ["label", "probabilities"]
    if regressor and len(produced) == 1:
        return ["prediction"]
    if len(produced) == 1:
        return ["output"]
    return produced


def _class_labels(estimator: Any) -> tuple[str, ...] | None:
    classes = getattr(estimator, "classes_", None)
    if classes is None or getattr(classes, "ndim", 1) != 1:
        return None  # multi-output classifiers have one array of classes per output
    labels = tuple(str(c) for c in classes)
    if any("\n" in label or "\r" in label or not label.strip() for label in labels):
        raise InputError(f"class labels cannot be written one a line: {list(labels)}")
    return labels


# -- torch -------------------------------------------------------------------------------------


def _from_torch(
    module: Any,
    example_inputs: Any,
    input_names: Sequence[str] | None,
    output_names: Sequence[str] | None,
    target_opset: int | None,
) -> ConvertedModel:
    torch = _import("torch", _TORCH_MISSING)
    _import("onnx", _TORCH_MISSING)
    if not isinstance(module, torch.nn.Module):
        raise InputError(f"a {type(module).__name__} is not a torch.nn.Module")
    if example_inputs is None:
        raise InputError(
            "exporting a torch module needs example_inputs=: a tensor, or a tuple of tensors, "
            "with a batch dimension first"
        )
    args = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    if not args or not all(isinstance(arg, torch.Tensor) and arg.ndim >= 1 for arg in args):
        raise InputError("example_inputs holds tensors with a batch dimension first")
    with torch.no_grad():
        produced = module(*args)
    n_outputs = len(produced) if isinstance(produced, (tuple, list)) else 1
    inputs = _names(input_names, _numbered("input", len(args)), "input")
    outputs = _names(output_names, _numbered("output", n_outputs), "output")
    dynamic = {name: {0: BATCH_DIM} for name in (*inputs, *outputs)}
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # dynamo=False is a choice: the TorchScript exporter is deprecated but makes one
        # self-contained graph with a named dynamic batch from any traceable module
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        try:
            torch.onnx.export(
                module,
                args,
                buffer,
                dynamo=False,
                input_names=list(inputs),
                output_names=list(outputs),
                dynamic_axes=dynamic,
                **({} if target_opset is None else {"opset_version": target_opset}),
            )
        except Exception as exc:
            raise InputError(
                f"torch.onnx.export cannot export this {type(module).__name__}: "
                f"{type(exc).__name__}: {_first_line(exc)}"
            ) from None
    data = buffer.getvalue()
    checked = _parse_checked(data, f"the ONNX graph of the {type(module).__name__}")
    version = str(torch.__version__)
    return ConvertedModel(
        model_bytes=data,
        framework="torch",
        framework_version=version,
        inputs=_graph_inputs(checked),
        outputs=tuple(value.name for value in checked.graph.output),
        converter=f"torch.onnx {version}",
        opset=_default_opset(checked),
    )
