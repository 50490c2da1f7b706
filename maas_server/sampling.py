"""Choosing the next token from a row of logits: greedy, or sampled with temperature, top-k and
top-p (nucleus), each sequence with its own seeded ``numpy.random.Generator``.

A sequence's random stream belongs to it alone, so a seeded request draws the same tokens
whether it runs alone or batched with others.

>>> sampler = TokenSampler(SamplingParams(temperature=0.8, top_k=40, top_p=0.95, seed=7))
>>> token = sampler.choose(logits_row)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["SamplingParams", "TokenSampler"]


@dataclass(frozen=True)
class SamplingParams:
    """``temperature`` 0 means greedy (the arg max; ``top_k``, ``top_p`` and ``seed`` are then
    unused); ``top_k`` 0 and ``top_p`` 1 switch those filters off; ``seed`` None draws from
    fresh entropy."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


class TokenSampler:
    """The token chooser of one sequence."""

    def __init__(self, params: SamplingParams) -> None:
        self.params = params
        self.greedy = params.greedy
        self._rng = None if params.greedy else np.random.default_rng(params.seed)

    def choose(self, logits: np.ndarray[Any, Any]) -> int:
        """The next token for a 1-D row of logits."""
        if self._rng is None:
            return int(logits.argmax())
        params = self.params
        scaled = logits.astype(np.float64) / params.temperature
        vocab = scaled.shape[0]
        if 0 < params.top_k < vocab:
            candidates = np.argpartition(-scaled, params.top_k - 1)[: params.top_k]
        else:
            candidates = np.arange(vocab)
        if params.top_p < 1.0:
            # the nucleus needs candidates by descending score; ties keep the lower id first
            candidates = candidates[np.lexsort((candidates, -scaled[candidates]))]
        scores = scaled[candidates]
        probs = np.exp(scores - scores.max())
        cumulative = np.cumsum(probs)
        if params.top_p < 1.0:
            keep = int(np.searchsorted(cumulative, params.top_p * cumulative[-1], "left")) + 1
            cumulative = cumulative[:keep]
        index = int(np.searchsorted(cumulative, self._rng.random() * cumulative[-1], "right"))
        return int(candidates[min(index, len(cumulative) - 1)])
