"""A pipeline model: declared steps (:mod:`maas_server.pipeline_config`) wired around the ONNX
session of one model version, so that the model takes text or encoded images (BYTES) and
answers embeddings, or labels and scores.

A request goes through three stages:

1. :meth:`Pipeline.prepare`, before the request is queued (on a worker thread when it is
   large): texts are checked to be UTF-8 (and, without truncation, short enough), images are
   decoded, resized and normalised. A bad element fails its own request alone, with a 400 or 413
   that names the input and the element.
2. The version's pipeline scheduler (the ordinary :class:`~maas_server.batching.Scheduler`, over
   a :class:`PipelineRunner`): requests that wait are merged by the dynamic batcher, *texts
   before tokenization*, so that a merged batch is tokenized in one call and padded to its own
   longest text. The runner, on its own threads, tokenizes, runs the session and applies the
   output steps (pooling and normalisation, or softmax/sigmoid), in chunks of at most the
   batch size; the tokenizing and output steps count as compute_input and compute_output in the
   statistics. (Tokenizing each request on arrival and merging the ids, ``"merge": "after"``,
   takes twice the CPU per text and was no faster through the server: see
   ``benchmarks/embeddings.py``.)
3. :meth:`Pipeline.finish`: what depends on the request (``top_k`` and labels, the embedding
   ``dimensions``) is applied to its own rows.

A request with the parameter ``"pipeline": false`` bypasses all of this and runs the model's
own tensors through the version's ordinary scheduler.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from maas_wire.types import InferenceRequest

from .batching import TimedOutputs
from .config import DynamicBatching, ModelConfig
from .errors import BadRequestError, ModelUnavailableError
from .image_steps import ImagePreprocessor
from .output_steps import activate, l2_normalize, pool, top_k, truncate_dimensions
from .pipeline_config import PipelineSteps
from .pipeline_hooks import Hooks, load_hooks
from .runtime import ModelLoadError, OnnxModel, TensorSpec, read_labels, wait_in_pool
from .text_steps import TextEncoder, find_model_file

__all__ = [
    "DEFAULT_PIPELINE_BATCH",
    "PIPELINE_PARAMETER",
    "Pipeline",
    "PipelineRunner",
    "wants_pipeline",
]

PIPELINE_PARAMETER = "pipeline"
"""The request parameter that turns the steps off (``false``): the model's raw tensors."""
DEFAULT_PIPELINE_BATCH = 32
"""Rows run at once when the configuration sets no ``max_batch_size`` (the graph's batch
dimension must be variable)."""

Array = np.ndarray[Any, Any]
_TOKENS = "tokens"  # internal output: tokens of each text, for usage counts
_OFFLOAD_TEXTS = 64  # texts checked on a worker thread from this many


def wants_pipeline(request: InferenceRequest) -> bool:
    """Whether a request to a pipeline model runs through the steps (the ``pipeline``
    parameter, default true)."""
    flag = (request.parameters or {}).get(PIPELINE_PARAMETER, True)
    if not isinstance(flag, bool):
        raise BadRequestError(f"parameter {PIPELINE_PARAMETER!r} must be true or false")
    return flag


def _now() -> int:
    return time.monotonic_ns()


class PipelineRunner:
    """What the pipeline scheduler runs batches on: the steps and the session, on threads of
    its own (one per instance). It looks to the scheduler like a model whose outputs are the
    pipeline's intermediate results (embeddings or class scores, and token counts)."""

    def __init__(self, pipeline: Pipeline, onnx: OnnxModel) -> None:
        self._pipeline = pipeline
        self._onnx = onnx
        self.name = onnx.name
        self.version = onnx.version
        base = onnx.config
        batch = base.max_batch_size
        if not batch and all(s.shape and s.shape[0] == -1 for s in onnx.inputs):
            batch = DEFAULT_PIPELINE_BATCH
        self.chunk = max(1, batch)
        updates: dict[str, Any] = {"max_batch_size": batch}
        if batch and base.dynamic_batching is None:
            updates["dynamic_batching"] = DynamicBatching()
        self.config: ModelConfig = base.model_copy(update=updates)
        self.max_batch_size = batch
        self.outputs = [pipeline.main_output, TensorSpec(_TOKENS, "INT64", (-1,))]
        self._executor = ThreadPoolExecutor(
            max_workers=base.instance_count, thread_name_prefix=f"maas-steps-{self.name}"
        )
        self._closed = False

    async def run(
        self,
        feeds: dict[str, Array],
        output_names: list[str],
        on_late_return: Callable[[], None] | None = None,
    ) -> dict[str, Array]:
        if self._closed:
            raise ModelUnavailableError(
                f"model {self.name!r} version {self.version} was unloaded or replaced; retry"
            )
        loop = asyncio.get_running_loop()
        future = self._executor.submit(self.run_sync, feeds)
        return await wait_in_pool(future, loop, on_late_return)

    def run_sync(self, feeds: dict[str, Array]) -> TimedOutputs:
        """Run a (merged) batch in chunks of at most the batch size."""
        rows = len(next(iter(feeds.values())))
        parts: list[tuple[Array, Array]] = []
        out = TimedOutputs()
        for start in range(0, rows, self.chunk):
            part = {k: v[start : start + self.chunk] for k, v in feeds.items()}
            main, tokens, input_ns, output_ns = self._pipeline.run_chunk(self._onnx, part)
            parts.append((main, tokens))
            out.input_ns += input_ns
            out.output_ns += output_ns
        if len(parts) == 1:
            out[self._pipeline.main_output.name], out[_TOKENS] = parts[0]
        else:
            out[self._pipeline.main_output.name] = np.concatenate([p[0] for p in parts])
            out[_TOKENS] = np.concatenate([p[1] for p in parts])
        return out

    def close(self) -> None:
        self._closed = True
        self._executor.shutdown(wait=True)


class Pipeline:
    """The steps of one model version. Build it with :meth:`load`; the version's pipeline
    scheduler runs :attr:`runner`."""

    def __init__(
        self,
        onnx: OnnxModel,
        task: str,
        steps: PipelineSteps,
        text: TextEncoder | None,
        image: ImagePreprocessor | None,
        labels: list[str] | None,
        hooks: Hooks,
    ) -> None:
        self.task = task
        self.steps = steps
        self.text = text
        self.image = image
        self.labels = labels
        self.hooks = hooks
        assert steps.outputs is not None
        self.output_steps = steps.outputs
        self.output_name = steps.outputs.output or onnx.outputs[0].name
        if self.output_name not in onnx.output_by_name:
            raise ModelLoadError(
                f"pipeline.outputs.output names {self.output_name!r}, which the model does not "
                f"have (its outputs: {', '.join(s.name for s in onnx.outputs)})"
            )
        self.input_name = "image" if task == "image-classification" else "text"
        self.inputs = [TensorSpec(self.input_name, "BYTES", (-1,))]
        raw = onnx.output_by_name[self.output_name]
        if task == "embedding":
            width = raw.shape[-1] if raw.shape and (hooks.post is None) else -1
            self.dimensions = int(width) if width and width > 0 else -1
            self.main_output = TensorSpec("embedding", "FP32", (-1, self.dimensions))
            self.outputs = [self.main_output]
        else:
            self.dimensions = -1
            self.main_output = TensorSpec("scores", "FP32", (-1, -1))
            self.outputs = [
                TensorSpec("label", "BYTES", (-1, -1)),
                TensorSpec("score", "FP32", (-1, -1)),
            ]
        self.output_by_name = {s.name: s for s in self.outputs}
        self._input_types = {s.name: s.datatype for s in onnx.inputs}
        self._image_input = image.input_name if image is not None else ""
        self.runner = PipelineRunner(self, onnx)

    @classmethod
    def load(
        cls,
        onnx: OnnxModel,
        version_dir: Path,
        model_dir: Path,
        labels: list[str] | None,
        allow_code: bool,
    ) -> Pipeline:
        """The pipeline of a version whose configuration names a pipeline task;
        :class:`ModelLoadError` says what does not fit."""
        config = onnx.config
        steps = config.steps()
        assert steps is not None
        hooks = load_hooks(version_dir, onnx.name, onnx.version, allow_code)
        text = image = None
        if steps.text is not None and (
            hooks.pre is None or find_model_file(version_dir, model_dir, steps.text.tokenizer)
        ):
            text = TextEncoder.load(version_dir, model_dir, steps.text)
            if hooks.pre is None:
                _check_text_inputs(onnx, steps)
        if steps.image is not None and hooks.pre is None:
            name = steps.image.input
            if name is None:
                if len(onnx.inputs) != 1:
                    raise ModelLoadError(
                        "the model has several inputs: name the image's in pipeline.image.input"
                    )
                name = onnx.inputs[0].name
            spec = onnx.input_by_name.get(name)
            if spec is None:
                raise ModelLoadError(f"pipeline.image.input names {name!r}, not a model input")
            image = ImagePreprocessor(steps.image, name, spec.datatype, spec.shape)
        if config.task != "embedding" and labels is None:
            found = find_model_file(version_dir, model_dir, "labels.txt")
            if found is not None:
                labels = read_labels(found.parent, found.name)
        return cls(onnx, config.task, steps, text, image, labels, hooks)

    def close(self) -> None:
        self.runner.close()

    # --- before the queue ---------------------------------------------------------------------

    def check_request(
        self, model_name: str, request: InferenceRequest, shapes: dict[str, list[int]] | None
    ) -> None:
        """The request against the pipeline's inputs and outputs (400 naming what is wrong);
        ``shapes``: the decoded arrays' shapes, once decoded."""
        spec = self.inputs[0]
        names = [i.name for i in request.inputs]
        if names != [spec.name]:
            unknown = next((n for n in names if n != spec.name), None)
            problem = f"has no input {unknown!r}" if unknown is not None else "needs one input"
            raise BadRequestError(
                f"model {model_name!r} {problem}; it takes {spec.name!r} (BYTES [-1]: "
                f"{'encoded images' if spec.name == 'image' else 'UTF-8 texts'}), or its own "
                f"tensors with the parameter {PIPELINE_PARAMETER!r}: false"
            )
        entry = request.inputs[0]
        if entry.datatype != "BYTES":
            raise BadRequestError(
                f"input {spec.name!r}: expected datatype BYTES, got {entry.datatype}"
            )
        shape = shapes[spec.name] if shapes is not None else list(entry.shape)
        if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
            raise BadRequestError(
                f"input {spec.name!r}: expected shape [-1] or [-1, 1], got {shape}"
            )
        if shape[0] == 0:
            raise BadRequestError(f"input {spec.name!r} is empty: give at least one element")
        for out in request.outputs or []:
            if out.name not in self.output_by_name:
                known = ", ".join(repr(s.name) for s in self.outputs)
                raise BadRequestError(
                    f"model {model_name!r} has no output {out.name!r}; its outputs are {known}"
                )
        self.top_k(request)

    def top_k(self, request: InferenceRequest) -> int:
        """The ``top_k`` request parameter (default: the configured one), checked."""
        value = (request.parameters or {}).get("top_k", self.output_steps.top_k)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise BadRequestError(f"parameter 'top_k' must be a positive integer, not {value!r}")
        return value

    def prepare(self, name: str, array: Array) -> dict[str, Array]:
        """The scheduler's feeds for one request's input (blocking for images: call it from a
        worker thread)."""
        items = array.reshape(-1)
        if self.input_name == "text":
            texts = np.empty(len(items), dtype=object)
            for index, element in enumerate(items):
                try:
                    texts[index] = (
                        element if isinstance(element, str) else bytes(element).decode("utf-8")
                    )
                except UnicodeDecodeError as exc:
                    raise BadRequestError(
                        f"input {name!r}: element {index} is not valid UTF-8 text "
                        f"(byte {exc.start}: {exc.reason})"
                    ) from None
            if self.text is not None and self.hooks.pre is None:
                self.text.check_lengths(name, list(texts))
                if self.text.steps.merge == "after":
                    return {"token_ids": self.text.token_ids(list(texts))}
            return {"text": texts}
        data = [bytes(x) if not isinstance(x, str) else x.encode("utf-8") for x in items]
        if self.image is None:  # a pre hook decodes
            raw = np.empty(len(data), dtype=object)
            raw[:] = data
            return {"image_bytes": raw}
        return {"image": self.image.batch(name, data)}

    def offload(self, count: int) -> bool:
        """Whether preparing ``count`` elements belongs on a worker thread: images, texts
        tokenized on arrival, or many texts."""
        text = self.text.steps if self.text is not None else None
        return (
            self.input_name == "image"
            or (text is not None and (text.merge == "after" or not text.truncation))
            or count >= _OFFLOAD_TEXTS
        )

    def prepare_ids(self, sequences: Sequence[Sequence[int]]) -> dict[str, Array]:
        """The scheduler's feeds for token ids given by the caller (the OpenAI route)."""
        if self.text is None or self.hooks.pre is not None:
            raise BadRequestError("this model takes text, not token ids")
        vocabulary = self.text.vocab_size
        limit = None if self.text.steps.truncation else self.text.steps.max_length
        ids = np.empty(len(sequences), dtype=object)
        for index, seq in enumerate(sequences):
            array = np.asarray(seq, dtype=np.int64)
            if not array.size:
                raise BadRequestError(f"input 'input': element {index} holds no token ids")
            if array.min() < 0 or array.max() >= vocabulary:
                raise BadRequestError(
                    f"input 'input': element {index} holds token ids outside the model's "
                    f"vocabulary (0 to {vocabulary - 1})"
                )
            if limit is not None and array.size > limit:
                raise BadRequestError(
                    f"input 'input': element {index} has {array.size} tokens; the model takes "
                    f"at most {limit} (truncation is off)"
                )
            ids[index] = array
        return {"token_ids": ids}

    # --- in the runner ------------------------------------------------------------------------

    def run_chunk(self, onnx: OnnxModel, part: dict[str, Array]) -> tuple[Array, Array, int, int]:
        """Steps and session over at most one batch of rows: the main output, each row's
        tokens, and the nanoseconds spent before and after the session."""
        start = _now()
        mask: Array | None = None
        if "text" in part or "token_ids" in part:
            if "text" in part and self.hooks.pre is not None:
                feeds = self.hooks.pre(list(part["text"]))
                mask_name = self.steps.text.attention_mask if self.steps.text else None
                mask = feeds.get(mask_name) if mask_name else None
            else:
                assert self.text is not None
                if "text" in part:
                    batch = self.text.encode(list(part["text"]))
                else:
                    batch = self.text.from_ids(list(part["token_ids"]))
                feeds = self.text.feeds(batch, self._input_types)
                mask = batch.mask
        elif "image_bytes" in part:
            assert self.hooks.pre is not None
            feeds = self.hooks.pre(list(part["image_bytes"]))
        else:
            feeds = {self._image_input: part["image"]}
        rows = len(next(iter(part.values())))
        wanted = [self.output_name] if self.hooks.post is None else None
        prepared = _now()
        names = wanted or [s.name for s in onnx.outputs]
        raw = onnx.run_sync(feeds, names)
        ran = _now()
        if self.hooks.post is not None:
            main = np.asarray(self.hooks.post(raw, feeds), dtype=np.float32)
            if main.ndim != 2 or main.shape[0] != rows:
                raise ValueError(
                    f"post.py returned an array of shape {list(main.shape)}; expected [{rows}, -1]"
                )
        elif self.task == "embedding":
            main = pool(raw[self.output_name], mask, self.output_steps.pooling)
            if self.output_steps.normalize == "l2":
                main = l2_normalize(main)
        else:
            main = activate(raw[self.output_name], self.output_steps.activation)
        tokens = (
            np.asarray(mask).sum(axis=1).astype(np.int64)
            if mask is not None
            else np.zeros(rows, dtype=np.int64)
        )
        done = _now()
        return main, tokens, prepared - start, done - ran

    # --- after the queue ----------------------------------------------------------------------

    def finish(
        self, results: dict[str, Array], top: int, dimensions: int | None = None
    ) -> dict[str, Array]:
        """The pipeline's outputs of one request from its rows of the runner's results."""
        main = results[self.main_output.name]
        if self.task == "embedding":
            if dimensions is not None:
                main = truncate_dimensions(main, dimensions, self.output_steps.normalize == "l2")
            return {"embedding": np.ascontiguousarray(main, dtype=np.float32)}
        labels, scores = top_k(main, self.labels, top)
        return {"label": labels, "score": scores}

    def check_dimensions(self, dimensions: int | None) -> None:
        """400 unless the model allows ``dimensions`` (Matryoshka-trained, and no more than its
        embedding has)."""
        if dimensions is None:
            return
        if not self.output_steps.matryoshka:
            raise BadRequestError(
                "this model does not support 'dimensions' (its configuration does not set "
                "pipeline.outputs.matryoshka)"
            )
        if dimensions < 1 or (self.dimensions > 0 and dimensions > self.dimensions):
            raise BadRequestError(
                f"'dimensions' must be from 1 to {self.dimensions}, not {dimensions}"
            )

    def metadata(self) -> dict[str, Any]:
        """What model metadata adds under ``parameters`` for a pipeline model."""
        found: dict[str, Any] = {"task": self.task, "pipeline": True}
        if self.task == "embedding":
            found["dimensions"] = self.dimensions
            found["matryoshka"] = self.output_steps.matryoshka
        else:
            found["top_k"] = self.output_steps.top_k
            found["labels"] = list(self.labels or [])
        return found


def _check_text_inputs(onnx: OnnxModel, steps: PipelineSteps) -> None:
    """Every input of the model is fed by the text steps, and the ids go somewhere."""
    text = steps.text
    assert text is not None
    fed = {text.input_ids, text.attention_mask, text.token_type_ids} - {None}
    if text.input_ids not in onnx.input_by_name:
        raise ModelLoadError(
            f"the model has no input {text.input_ids!r} for the token ids (its inputs: "
            f"{', '.join(s.name for s in onnx.inputs)}); name it in pipeline.text.input_ids"
        )
    unfed = [s.name for s in onnx.inputs if s.name not in fed]
    if unfed:
        raise ModelLoadError(
            f"model input(s) {', '.join(repr(n) for n in unfed)} are not fed by the text steps; "
            "map them in pipeline.text (input_ids, attention_mask, token_type_ids)"
        )
