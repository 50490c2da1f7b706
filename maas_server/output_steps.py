"""Model outputs to answers: pooling over tokens, L2 normalisation, softmax or sigmoid, and the
top k classes with their labels.

>>> pool(hidden, mask, "mean").shape  # hidden [n, tokens, d], mask [n, tokens]
(n, d)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["activate", "l2_normalize", "pool", "top_k", "truncate_dimensions"]

Array = np.ndarray[Any, Any]


def pool(hidden: Array, mask: Array | None, kind: str) -> Array:
    """``hidden`` [n, tokens, d] to [n, d]: ``mean`` or ``max`` over the tokens whose ``mask``
    is 1, ``cls`` the first token; ``none`` (or an output that is already [n, d]) as it is."""
    hidden = np.asarray(hidden, dtype=np.float32)
    if kind == "none" or hidden.ndim == 2:
        return hidden
    if hidden.ndim != 3:
        raise ValueError(f"pooling needs an output of shape [n, tokens, d], not {hidden.shape}")
    if kind == "cls":
        return hidden[:, 0, :]
    if mask is None:
        mask = np.ones(hidden.shape[:2], dtype=np.float32)
    weights = mask[:, : hidden.shape[1]].astype(np.float32)[:, :, None]
    if kind == "max":
        masked = np.where(weights > 0, hidden, -np.inf)
        pooled: Array = masked.max(axis=1)
        return np.where(np.isfinite(pooled), pooled, 0.0).astype(np.float32)
    total = (hidden * weights).sum(axis=1)
    counts = np.clip(weights.sum(axis=1), 1e-9, None)
    result: Array = (total / counts).astype(np.float32)
    return result


def l2_normalize(vectors: Array) -> Array:
    """Each row divided by its Euclidean length (rows of zeros stay zero)."""
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    result: Array = (vectors / np.clip(norms, 1e-12, None)).astype(np.float32)
    return result


def truncate_dimensions(vectors: Array, dimensions: int, normalize: bool) -> Array:
    """The first ``dimensions`` components of each row, normalised again when asked."""
    cut = vectors[:, :dimensions]
    return l2_normalize(cut) if normalize else np.ascontiguousarray(cut)


def activate(logits: Array, kind: str) -> Array:
    """``softmax`` or ``sigmoid`` along the last axis of [n, classes] (``none``: as it is)."""
    values = np.asarray(logits, dtype=np.float32).reshape(len(logits), -1)
    if kind == "softmax":
        shifted = values - values.max(axis=1, keepdims=True)
        exp = np.exp(shifted)
        result: Array = exp / exp.sum(axis=1, keepdims=True)
        return result
    if kind == "sigmoid":
        sigmoid: Array = 1.0 / (1.0 + np.exp(-values))
        return sigmoid
    return values


def top_k(scores: Array, labels: Sequence[str] | None, k: int) -> tuple[Array, Array]:
    """The ``k`` best classes of each row, best first: labels (BYTES, the class index where no
    label is known) [n, k] and scores (FP32) [n, k]; ``k`` is capped at the number of classes."""
    k = max(1, min(k, scores.shape[1]))
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    chosen = np.take_along_axis(scores, order, axis=1).astype(np.float32)
    names = list(labels or [])
    out = np.empty(order.shape, dtype=object)
    for r in range(order.shape[0]):
        for c in range(k):
            index = int(order[r, c])
            out[r, c] = (names[index] if index < len(names) else str(index)).encode("utf-8")
    return out, chosen
