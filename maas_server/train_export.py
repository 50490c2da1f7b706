"""A trained model as one ONNX graph that takes the dataset's columns raw.

The graph has one input per feature column, named as :mod:`maas_server.train_preprocess` planned
(``[batch]`` for a scalar column, ``[batch, 8, 8]`` for an 8x8 image), with the datatype a client
sends for it (``FP32``, ``INT64``, ``BOOL``, ``BYTES``). Each input is cast to float where it is
numeric and reshaped to the ``[batch, width]`` slice the preprocessing expects; then come the
preprocessing (imputation, standardisation, one-hot encoding) and the estimator. Outputs:
``label`` ``[batch]`` (the class, in the target's own values) and ``probabilities``
``[batch, classes]`` for a classifier; ``prediction`` ``[batch]`` for a regressor (in the
target's units: the standardisation of the target learnt in training is undone in the graph).

The scikit-learn pipeline is converted by ``skl2onnx``
(:func:`sklearn_model`); a PyTorch network is exported by ``torch.onnx`` and joined behind the
preprocessing converted by ``skl2onnx`` (:func:`joined_model`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .train_preprocess import FeatureColumn

__all__ = ["OPSET", "joined_model", "preprocessor_model", "sklearn_model"]

OPSET = 17
ML_OPSET = 3
BATCH = "batch"


def _internal(i: int) -> str:
    return f"maas_raw_{i}"


def _initial_types(features: Sequence[FeatureColumn]) -> list[tuple[str, Any]]:
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType

    types: list[tuple[str, Any]] = []
    for i, feature in enumerate(features):
        if feature.kind == "categorical":
            types.append((_internal(i), StringTensorType([None, 1])))
        else:
            types.append((_internal(i), FloatTensorType([None, feature.width])))
    return types


def _convert(estimator: Any, features: Sequence[FeatureColumn], classifier: bool) -> Any:
    from skl2onnx import convert_sklearn

    options: dict[Any, Any] | None = None
    if classifier:
        options = {id(estimator.steps[-1][1]): {"zipmap": False}}
    return convert_sklearn(
        estimator,
        initial_types=_initial_types(features),
        target_opset={"": OPSET, "ai.onnx.ml": ML_OPSET},
        options=options,
    )


def sklearn_model(
    pipeline: Any,
    features: Sequence[FeatureColumn],
    task: str,
    *,
    target_scale: tuple[float, float] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> bytes:
    """A fitted ``Pipeline([("preprocess", ColumnTransformer), ("model", estimator)])`` as
    ONNX bytes (see the module's documentation). ``target_scale``: the (mean, std) the
    regression target was standardised with."""
    classifier = task == "classification"
    model = _convert(pipeline, features, classifier)
    graph = model.graph
    if classifier:
        produced = [o.name for o in graph.output]
        if produced != ["label", "probabilities"]:
            raise RuntimeError(f"skl2onnx produced outputs {produced}, not label, probabilities")
    else:
        (output,) = graph.output
        _regression_output(model, output.name, target_scale)
    _attach_raw_inputs(model, features)
    _set_metadata(model, metadata)
    return _checked(model)


def preprocessor_model(preprocessor: Any, features: Sequence[FeatureColumn]) -> Any:
    """The fitted ``ColumnTransformer`` alone as an ONNX model whose one output,
    ``features`` ``[batch, n]`` (float), is what the network takes."""
    from skl2onnx import convert_sklearn

    model = convert_sklearn(
        preprocessor,
        initial_types=_initial_types(features),
        target_opset={"": OPSET, "ai.onnx.ml": ML_OPSET},
    )
    (output,) = model.graph.output
    _rename(model.graph, output.name, "features")
    _attach_raw_inputs(model, features)
    return model


def joined_model(
    preprocessor: Any,
    network: bytes,
    features: Sequence[FeatureColumn],
    task: str,
    *,
    classes: Sequence[Any] | None = None,
    target_scale: tuple[float, float] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> bytes:
    """The preprocessing (``skl2onnx``) joined to a network exported by ``torch.onnx`` with
    one input ``features`` and one output: ``probabilities`` (softmax) for a classifier,
    ``prediction`` ``[batch]`` (standardised target) for a regressor."""
    import onnx
    from onnx import TensorProto, compose, helper, numpy_helper

    pre = preprocessor_model(preprocessor, features)
    net = onnx.load_model_from_string(network)
    net = compose.add_prefix(net, "net_", rename_inputs=True, rename_outputs=False)
    pre.ir_version = max(pre.ir_version, net.ir_version)
    net.ir_version = pre.ir_version
    _align_opsets(pre, net)
    merged = compose.merge_models(pre, net, io_map=[("features", "net_features")])
    graph = merged.graph
    if task == "classification":
        assert classes is not None
        labels = np.asarray(list(classes))
        if labels.dtype.kind in "iub":
            table = numpy_helper.from_array(labels.astype(np.int64), "maas_classes")
            label_type = TensorProto.INT64
        else:
            table = numpy_helper.from_array(
                np.array([str(c).encode() for c in labels], dtype=object), "maas_classes"
            )
            label_type = TensorProto.STRING
        graph.initializer.append(table)
        graph.node.extend(
            [
                helper.make_node("ArgMax", ["probabilities"], ["maas_index"], axis=1, keepdims=0),
                helper.make_node("Gather", ["maas_classes", "maas_index"], ["label"], axis=0),
            ]
        )
        probabilities = [o for o in graph.output if o.name == "probabilities"]
        del graph.output[:]
        graph.output.extend(
            [helper.make_tensor_value_info("label", label_type, [BATCH]), *probabilities]
        )
    else:
        _regression_output(merged, "prediction", target_scale)
    _set_metadata(merged, metadata)
    return _checked(merged)


def _align_opsets(*models: Any) -> None:
    """Every model imports each domain at the highest version any of them does
    (``merge_models`` requires equal opsets)."""
    versions: dict[str, int] = {}
    for model in models:
        for opset in model.opset_import:
            versions[opset.domain] = max(versions.get(opset.domain, 0), opset.version)
    for model in models:
        del model.opset_import[:]
        for domain, version in versions.items():
            entry = model.opset_import.add()
            entry.domain = domain
            entry.version = version


def _regression_output(model: Any, produced: str, target_scale: tuple[float, float] | None) -> None:
    """``prediction`` ``[batch]`` from the ``produced`` output, in the target's units."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    raw = "maas_raw_prediction"
    _rename(graph, produced, raw)
    graph.initializer.append(numpy_helper.from_array(np.array([-1], dtype=np.int64), "maas_flat"))
    nodes = [helper.make_node("Reshape", [raw, "maas_flat"], ["maas_flat_prediction"])]
    mean, std = target_scale if target_scale is not None else (0.0, 1.0)
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array(std, dtype=np.float32), "maas_target_std"),
            numpy_helper.from_array(np.array(mean, dtype=np.float32), "maas_target_mean"),
        ]
    )
    nodes += [
        helper.make_node("Mul", ["maas_flat_prediction", "maas_target_std"], ["maas_scaled"]),
        helper.make_node("Add", ["maas_scaled", "maas_target_mean"], ["prediction"]),
    ]
    graph.node.extend(nodes)
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info("prediction", TensorProto.FLOAT, [BATCH]))


_ONNX_TYPES = {"FP32": 1, "INT64": 7, "BOOL": 9, "BYTES": 8}
"""TensorProto element types: FLOAT, INT64, BOOL, STRING."""


def _attach_raw_inputs(model: Any, features: Sequence[FeatureColumn]) -> None:
    """Replace the converter's ``[None, width]`` inputs by one input per column in the
    column's own datatype and shape, cast and reshaped into them."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    for feature in features:
        if feature.input_name in _names(graph):
            _rename(graph, feature.input_name, f"maas_inner_{feature.input_name}")
    nodes = []
    inputs = []
    for i, feature in enumerate(features):
        inner = _internal(i)
        inputs.append(
            helper.make_tensor_value_info(
                feature.input_name, _ONNX_TYPES[feature.datatype], [BATCH, *feature.shape]
            )
        )
        source = feature.input_name
        if feature.kind == "numeric" and feature.datatype != "FP32":
            nodes.append(
                helper.make_node("Cast", [source], [f"{inner}_float"], to=TensorProto.FLOAT)
            )
            source = f"{inner}_float"
        graph.initializer.append(
            numpy_helper.from_array(np.array([-1, feature.width], dtype=np.int64), f"{inner}_shape")
        )
        nodes.append(helper.make_node("Reshape", [source, f"{inner}_shape"], [inner]))
    existing = list(graph.node)
    del graph.node[:]
    graph.node.extend([*nodes, *existing])
    del graph.input[:]
    graph.input.extend(inputs)


def _names(graph: Any) -> set[str]:
    names = {v.name for v in (*graph.input, *graph.output, *graph.value_info)}
    names |= {t.name for t in graph.initializer}
    for node in graph.node:
        names.update(node.input)
        names.update(node.output)
    return names


def _rename(graph: Any, old: str, new: str) -> None:
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
        for i, name in enumerate(node.output):
            if name == old:
                node.output[i] = new
    for value in (*graph.input, *graph.output, *graph.value_info):
        if value.name == old:
            value.name = new
    for tensor in graph.initializer:
        if tensor.name == old:
            tensor.name = new


def _set_metadata(model: Any, metadata: Mapping[str, Any] | None) -> None:
    for value in (*model.graph.input, *model.graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_param = BATCH
    model.producer_name = "maas training"
    for key, value in (metadata or {}).items():
        entry = model.metadata_props.add()
        entry.key = key
        entry.value = value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def _checked(model: Any) -> bytes:
    import onnx

    onnx.checker.check_model(model)
    data: bytes = model.SerializeToString()
    return data
