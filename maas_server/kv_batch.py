"""The bookkeeping of a batch of sequences decoded together, in plain numpy.

Row ``i`` of every array of a :class:`KVBatch` belongs to ``rows[i]``. The KV caches of the rows
are left-padded to one common length, ``width``: a row's real cache sits at the right end and the
columns before it are masked out with ``attention_mask`` zeros, while ``positions`` carries each
row's own next position (so padding never shifts a row's position ids).

- :meth:`KVBatch.single`: a freshly prefilled sequence, a batch of one.
- :meth:`KVBatch.next_mask`: the ``attention_mask`` of the next step (one more column of ones).
- :meth:`KVBatch.advance`: after a step, its ``present`` tensors become the ``past`` and every row
  moves one position on.
- :meth:`KVBatch.merge`: rows of several batches in one, each cache right-aligned to the longest.
- :meth:`KVBatch.keep`: only some rows stay; padding columns no remaining row needs are dropped.

The cache tensors are ``[rows, heads, width, head_dim]``; they may be numpy arrays or values that
live in an execution provider's memory (anything with ``.numpy()``), copied to the host only when
rows join or leave. Nothing here runs a model, so all of it is unit-tested without ONNX Runtime.

>>> batch = KVBatch.single("a", past, prompt_length=3, token=7, ids_dtype=np.int64)
>>> mask = batch.next_mask()
>>> batch.advance(mask, present, np.array([8]), np.int64)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Generic, TypeVar

import numpy as np

__all__ = ["KVBatch", "host_array"]

Row = TypeVar("Row")
Batch = TypeVar("Batch", bound="KVBatch[Any]")
Array = np.ndarray[Any, Any]


def host_array(value: Any) -> Array:
    """A cache tensor as a numpy array (an OrtValue in device memory is copied to the host)."""
    if isinstance(value, np.ndarray):
        return value
    array: Array = value.numpy()
    return array


class KVBatch(Generic[Row]):
    """Rows decoded together; see the module docstring for the layout."""

    def __init__(
        self,
        rows: list[Row],
        past: list[Any],
        mask: Array,
        positions: Array,
        last: Array,
    ) -> None:
        if not (len(rows) == mask.shape[0] == positions.shape[0] == last.shape[0]):
            raise ValueError("every array of a batch needs one row per sequence")
        self.rows = rows
        self.past = past  # numpy arrays, or values in the provider's memory
        self.mask = mask  # [rows, width]: 1 where a row has a real cache entry
        self.padded = not mask.all()  # else the next mask is all ones
        self.positions = positions  # [rows, 1]: where each row's next token goes
        self.last = last  # [rows, 1]: each row's last token, the next input
        self.changed()

    def changed(self) -> None:
        """Called whenever the rows change (a hook for subclasses that cache facts about rows)."""

    @classmethod
    def single(
        cls: type[Batch], row: Any, past: list[Any], prompt_length: int, token: int, ids_dtype: Any
    ) -> Batch:
        """One sequence after its prefill: ``past`` covers its ``prompt_length`` tokens and
        ``token`` is the one it chose."""
        return cls(
            [row],
            past,
            np.ones((1, prompt_length), dtype=np.int64),
            np.array([[prompt_length]], dtype=np.int64),
            np.array([[token]], dtype=ids_dtype),
        )

    @property
    def width(self) -> int:
        """The length of the (padded) KV cache."""
        return int(self.mask.shape[1])

    def next_mask(self) -> Array:
        """The ``attention_mask`` of the next step: this one and a column of ones."""
        rows = len(self.rows)
        if self.padded:
            return np.concatenate((self.mask, np.ones((rows, 1), dtype=np.int64)), axis=1)
        return np.ones((rows, self.width + 1), dtype=np.int64)

    def advance(self, mask: Array, present: list[Any], tokens: Array, ids_dtype: Any) -> None:
        """A step ran with ``mask`` (from :meth:`next_mask`): ``present`` is the next ``past``
        and ``tokens`` (one per row) the next inputs."""
        self.mask = mask
        self.past = present
        self.positions += 1
        self.last = tokens.astype(ids_dtype, copy=False).reshape(-1, 1)

    def keep(self, indices: Sequence[int]) -> None:
        """Keep only the rows at ``indices`` (in that order), and drop the padding columns that
        no remaining row needs. With no index left the batch is empty."""
        if not indices:
            self.rows = []
            self.past = []
            self.mask = self.mask[:0]
            self.positions = self.positions[:0]
            self.last = self.last[:0]
            self.padded = False
            self.changed()
            return
        index = np.array(indices)
        mask = self.mask[index]
        first = int(mask.any(axis=0).argmax())
        self.mask = np.ascontiguousarray(mask[:, first:])
        self.padded = not self.mask.all()
        self.past = [np.ascontiguousarray(host_array(p)[index][:, :, first:]) for p in self.past]
        self.positions = self.positions[index]
        self.last = self.last[index]
        self.rows = [self.rows[i] for i in indices]
        self.changed()

    @classmethod
    def merge(cls: type[Batch], batches: Sequence[Batch]) -> Batch:
        """One batch of all rows, in order, each KV cache right-aligned to the longest."""
        if not batches:
            raise ValueError("merge needs at least one batch")
        width = max(b.width for b in batches)
        rows = sum(len(b.rows) for b in batches)
        mask = np.zeros((rows, width), dtype=np.int64)
        hosts = [[host_array(p) for p in b.past] for b in batches]
        past: list[Any] = []
        for k in range(len(hosts[0])):
            first = hosts[0][k]
            shape = (rows, first.shape[1], width, first.shape[3])
            past.append(np.zeros(shape, dtype=first.dtype))
        row = 0
        for batch, host in zip(batches, hosts, strict=True):
            count, length = batch.mask.shape
            mask[row : row + count, width - length :] = batch.mask
            for k, array in enumerate(host):
                past[k][row : row + count, :, width - length :, :] = array
            row += count
        return cls(
            [r for b in batches for r in b.rows],
            past,
            mask,
            np.concatenate([b.positions for b in batches]),
            np.concatenate([b.last for b in batches]),
        )
