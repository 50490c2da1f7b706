"""What the decode loop needs to know about a decoder graph in Hugging Face Optimum's layout.

``input_ids``, ``attention_mask`` (optional), ``position_ids`` (optional), ``use_cache_branch``
(older merged exports) and ``past_key_values.{i}.key/.value`` ``[batch, heads, past, head_dim]``
in; ``logits`` and ``present.{i}.key/.value`` out. :meth:`DecoderLayout.of` reads these from a
loaded model and says in :class:`DecoderLayoutError` what does not fit.

>>> layout = DecoderLayout.of(model)
>>> layout.past_names[:2]
('past_key_values.0.key', 'past_key_values.0.value')
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .runtime import OnnxModel

__all__ = ["DecoderLayout", "DecoderLayoutError"]

_PAST = re.compile(r"^past_key_values\.(\d+)\.(key|value)$")
_KV_DTYPES = {"FP32": np.float32, "FP16": np.float16}
_IDS_DTYPES = {"INT64": np.int64, "INT32": np.int32}


class DecoderLayoutError(Exception):
    """A graph the decode loop cannot drive; the message says what is missing."""


@dataclass(frozen=True)
class DecoderLayout:
    """What the decode loop needs to know about a decoder graph; :meth:`of` reads and checks it."""

    ids_dtype: Any
    past_names: tuple[str, ...]
    present_names: tuple[str, ...]
    empty_past: tuple[np.ndarray[Any, Any], ...]
    has_attention_mask: bool
    has_position_ids: bool
    has_cache_branch: bool
    batchable: bool
    vocab_size: int | None
    output_names: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, model: OnnxModel) -> DecoderLayout:
        inputs = model.input_by_name
        outputs = model.output_by_name
        if "input_ids" not in inputs or "logits" not in outputs:
            raise DecoderLayoutError(
                "its graph lacks the 'input_ids' input or the 'logits' output of a decoder"
            )
        ids_spec = inputs["input_ids"]
        if ids_spec.datatype not in _IDS_DTYPES:
            raise DecoderLayoutError(f"'input_ids' is {ids_spec.datatype}; expected INT64 or INT32")
        past: list[tuple[int, str, str]] = []
        known = {"input_ids", "attention_mask", "position_ids", "use_cache_branch"}
        for name in inputs:
            match = _PAST.match(name)
            if match:
                past.append((int(match.group(1)), match.group(2), name))
            elif name not in known:
                raise DecoderLayoutError(f"the decode loop does not know its input {name!r}")
        if not past:
            raise DecoderLayoutError("its graph has no 'past_key_values.N.key/value' inputs")
        past.sort()
        past_names = tuple(name for _, _, name in past)
        present_names = tuple(f"present.{layer}.{kind}" for layer, kind, _ in past)
        empty = []
        for name, present in zip(past_names, present_names, strict=True):
            if present not in outputs:
                raise DecoderLayoutError(f"its graph has {name!r} but no {present!r} output")
            spec = inputs[name]
            if spec.datatype not in _KV_DTYPES or len(spec.shape) != 4:
                raise DecoderLayoutError(f"{name!r} is {spec.datatype} {list(spec.shape)}")
            if spec.shape[1] < 0 or spec.shape[3] < 0:
                raise DecoderLayoutError(f"{name!r} has a variable head count or head size")
            empty.append(
                np.zeros((1, spec.shape[1], 0, spec.shape[3]), dtype=_KV_DTYPES[spec.datatype])
            )
        logits_shape = outputs["logits"].shape
        return cls(
            ids_dtype=_IDS_DTYPES[ids_spec.datatype],
            past_names=past_names,
            present_names=present_names,
            empty_past=tuple(empty),
            has_attention_mask="attention_mask" in inputs,
            has_position_ids="position_ids" in inputs,
            has_cache_branch="use_cache_branch" in inputs,
            batchable="attention_mask" in inputs and ids_spec.shape[:1] == (-1,),
            vocab_size=logits_shape[-1] if logits_shape and logits_shape[-1] > 0 else None,
            output_names=["logits", *present_names],
        )
