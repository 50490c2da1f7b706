"""The KV-cache batch bookkeeping of the decode loop (:mod:`maas_server.kv_batch`), in plain
numpy: no ONNX Runtime, no model."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from maas_server.kv_batch import KVBatch, host_array

HEADS, HEAD_DIM, LAYERS = 2, 3, 2


def _cache(length: int, seed: int) -> list[np.ndarray[Any, Any]]:
    """Per-layer key and value caches of one sequence, filled with recognisable values."""
    rng = np.random.default_rng(seed)
    return [
        rng.standard_normal((1, HEADS, length, HEAD_DIM)).astype(np.float32)
        for _ in range(2 * LAYERS)
    ]


def _single(name: str, length: int, token: int) -> KVBatch[str]:
    return KVBatch.single(name, _cache(length, seed=length), length, token, np.int64)


def test_single_sequence_after_prefill() -> None:
    batch = _single("a", 4, 7)
    assert batch.rows == ["a"]
    assert batch.width == 4
    assert batch.mask.tolist() == [[1, 1, 1, 1]]
    assert not batch.padded
    assert batch.positions.tolist() == [[4]]
    assert batch.last.tolist() == [[7]]
    assert batch.last.dtype == np.int64


def test_advance_appends_a_column_and_moves_positions() -> None:
    batch = _single("a", 3, 7)
    mask = batch.next_mask()
    assert mask.tolist() == [[1, 1, 1, 1]]
    present = _cache(4, seed=9)
    batch.advance(mask, present, np.array([11]), np.int32)
    assert batch.past is present
    assert batch.width == 4
    assert batch.positions.tolist() == [[4]]
    assert batch.last.tolist() == [[11]]
    assert batch.last.dtype == np.int32


def test_merge_left_pads_shorter_caches_and_keeps_positions() -> None:
    short, long = _single("short", 2, 5), _single("long", 5, 6)
    merged = KVBatch.merge([short, long])
    assert merged.rows == ["short", "long"]
    assert merged.width == 5
    assert merged.padded
    assert merged.mask.tolist() == [[0, 0, 0, 1, 1], [1, 1, 1, 1, 1]]
    # padding never shifts a row's positions: each continues after its own prompt
    assert merged.positions.tolist() == [[2], [5]]
    assert merged.last.tolist() == [[5], [6]]
    for k in range(2 * LAYERS):
        assert merged.past[k].shape == (2, HEADS, 5, HEAD_DIM)
        np.testing.assert_array_equal(merged.past[k][0, :, 3:], short.past[k][0])
        np.testing.assert_array_equal(merged.past[k][0, :, :3], 0)
        np.testing.assert_array_equal(merged.past[k][1], long.past[k][0])
    # the next step's mask keeps the padding masked out
    assert merged.next_mask().tolist() == [[0, 0, 0, 1, 1, 1], [1, 1, 1, 1, 1, 1]]


def test_keep_drops_rows_and_padding_no_row_needs() -> None:
    merged = KVBatch.merge([_single("a", 2, 1), _single("b", 6, 2), _single("c", 4, 3)])
    assert merged.width == 6
    merged.keep([0, 2])  # the longest leaves: two padding columns are nobody's any more
    assert merged.rows == ["a", "c"]
    assert merged.width == 4
    assert merged.mask.tolist() == [[0, 0, 1, 1], [1, 1, 1, 1]]
    assert merged.positions.tolist() == [[2], [4]]
    assert merged.last.tolist() == [[1], [3]]
    assert all(p.shape == (2, HEADS, 4, HEAD_DIM) for p in merged.past)
    assert all(p.flags.c_contiguous for p in merged.past)


def test_merge_then_keep_gives_each_row_back_exactly() -> None:
    parts = [_single(name, length, i) for i, (name, length) in enumerate([("a", 3), ("b", 7)])]
    for index, part in enumerate(parts):
        merged = KVBatch.merge(parts)
        merged.keep([index])
        assert merged.rows == part.rows
        assert not merged.padded
        assert merged.mask.tolist() == part.mask.tolist()
        assert merged.positions.tolist() == part.positions.tolist()
        for got, want in zip(merged.past, part.past, strict=True):
            np.testing.assert_array_equal(got, want)


def test_keep_nothing_empties_the_batch() -> None:
    batch = KVBatch.merge([_single("a", 2, 1), _single("b", 3, 2)])
    batch.keep([])
    assert batch.rows == []
    assert batch.past == []
    assert batch.mask.shape[0] == 0


def test_merge_into_a_batch_that_already_advanced() -> None:
    running = _single("a", 2, 1)
    for token in (4, 5, 6):
        running.advance(
            running.next_mask(), _cache(running.width + 1, token), np.array([token]), np.int64
        )
    merged = KVBatch.merge([running, _single("b", 3, 9)])
    assert merged.mask.tolist() == [[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]]
    assert merged.positions.tolist() == [[5], [3]]


def test_changed_hook_runs_on_every_change_of_rows() -> None:
    class Counting(KVBatch[str]):
        calls = 0

        def changed(self) -> None:
            type(self).calls += 1

    batch = Counting.merge(
        [
            Counting.single("a", _cache(2, 1), 2, 1, np.int64),
            Counting.single("b", _cache(3, 1), 3, 1, np.int64),
        ]
    )
    assert isinstance(batch, Counting)
    before = Counting.calls
    batch.keep([1])
    assert Counting.calls == before + 1


def test_device_values_are_copied_to_the_host_only_when_rows_change() -> None:
    class DeviceValue:
        """Stands in for an OrtValue: only ``.numpy()`` reaches the data."""

        def __init__(self, array: np.ndarray[Any, Any]) -> None:
            self.array = array
            self.copies = 0

        def numpy(self) -> np.ndarray[Any, Any]:
            self.copies += 1
            return self.array

    prefill = [DeviceValue(a) for a in _cache(3, 2)]
    batch: KVBatch[str] = KVBatch.single("a", list(prefill), 3, 1, np.int64)
    values = [DeviceValue(a) for a in _cache(4, 3)]
    batch.advance(batch.next_mask(), list(values), np.array([2]), np.int64)
    assert all(v.copies == 0 for v in [*prefill, *values])
    merged = KVBatch.merge([batch, _single("b", 2, 3)])
    assert all(v.copies == 1 for v in values)
    assert isinstance(merged.past[0], np.ndarray)
    assert host_array(merged.past[0]) is merged.past[0]


def test_inconsistent_arrays_are_refused() -> None:
    with pytest.raises(ValueError, match="one row per sequence"):
        KVBatch(["a", "b"], [], np.ones((1, 2)), np.ones((2, 1)), np.ones((2, 1)))
    with pytest.raises(ValueError, match="at least one"):
        KVBatch.merge([])
