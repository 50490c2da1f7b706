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

__all__ = ["GREEDY_BELOW", "SamplingParams", "TokenSampler"]

GREEDY_BELOW = 1e-5
"""Temperatures below this decode greedily (dividing logits by them would overflow)."""


@dataclass(frozen=True)
class SamplingParams:
    """``temperature`` 0 (or below :data:`GREEDY_BELOW`) means greedy: the arg max, with
    ``top_k``, ``top_p`` and ``seed`` unused. ``top_k`` 0 and ``top_p`` 1 switch those filters
    off; ``seed`` None draws from fresh entropy."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW


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
        with np.errstate(all="ignore"):
            token = self._sample(logits.astype(np.float64) / params.temperature)
        # logits with NaN or infinities (a broken model) leave no distribution to draw from
        return int(logits.argmax()) if token is None else token

    def _sample(self, scaled: np.ndarray[Any, Any]) -> int | None:
        params = self.params
        assert self._rng is not None
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
        if not np.isfinite(cumulative[-1]) or cumulative[-1] <= 0:
            return None
        if params.top_p < 1.0:
            keep = int(np.searchsorted(cumulative, params.top_p * cumulative[-1], "left")) + 1
            cumulative = cumulative[:keep]
        index = int(np.searchsorted(cumulative, self._rng.random() * cumulative[-1], "right"))
        return int(candidates[min(index, len(cumulative) - 1)])
