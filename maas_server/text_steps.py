"""Text to the tensors a transformer encoder takes: a ``tokenizers`` tokenizer, truncation,
padding to the batch's longest text (or a fixed length) and the model's input names.

>>> encoder = TextEncoder.load(folder, folder, TextSteps(max_length=128))
>>> batch = encoder.encode(["a sentence", "another one"])
>>> encoder.feeds(batch, {"input_ids": "INT64", "attention_mask": "INT64"})["input_ids"].shape
(2, 4)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from .errors import BadRequestError
from .pipeline_config import TextSteps
from .runtime import ModelLoadError

__all__ = ["TextEncoder", "TokenBatch", "find_model_file"]


def find_model_file(version_dir: Path, model_dir: Path, filename: str) -> Path | None:
    """``filename`` in the version folder, else in the model's folder (None: in neither);
    a file whose links lead out of its folder is refused."""
    for folder in (version_dir, model_dir):
        root = folder.resolve()
        path = (folder / filename).resolve()
        if not path.is_relative_to(root):
            raise ModelLoadError(f"{filename} lies outside the model's folder")
        if path.is_file():
            return path
    return None


@dataclass
class TokenBatch:
    """Token ids of several texts, padded to one length, with their attention mask."""

    ids: np.ndarray[Any, np.dtype[np.int64]]
    mask: np.ndarray[Any, np.dtype[np.int64]]
    type_ids: np.ndarray[Any, np.dtype[np.int64]]

    @property
    def token_counts(self) -> np.ndarray[Any, np.dtype[np.int64]]:
        """Tokens of each text (padding excluded)."""
        counts: np.ndarray[Any, np.dtype[np.int64]] = self.mask.sum(axis=1)
        return counts


class TextEncoder:
    """A tokenizer set up for a model: truncation and padding as its steps say."""

    def __init__(self, tokenizer: Tokenizer, steps: TextSteps) -> None:
        self.steps = steps
        self.tokenizer = tokenizer
        tokenizer.no_padding()
        if steps.truncation:
            tokenizer.enable_truncation(max_length=steps.max_length)
        else:
            tokenizer.no_truncation()
        pad_id = tokenizer.token_to_id("[PAD]")
        if pad_id is None:
            pad_id = tokenizer.token_to_id("<pad>")
        self.pad_id = int(pad_id or 0)
        self.vocab_size = int(tokenizer.get_vocab_size(with_added_tokens=True))

    @classmethod
    def load(cls, version_dir: Path, model_dir: Path, steps: TextSteps) -> TextEncoder:
        path = find_model_file(version_dir, model_dir, steps.tokenizer)
        if path is None:
            raise ModelLoadError(
                f"{steps.tokenizer} is missing: a text pipeline needs the tokenizer file in "
                "the version folder or the model's folder"
            )
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:
            raise ModelLoadError(f"cannot read {steps.tokenizer}: {exc}") from None
        return cls(tokenizer, steps)

    def check_lengths(self, name: str, texts: Sequence[str]) -> None:
        """Without truncation: 400 naming the first text longer than ``max_length`` tokens."""
        if self.steps.truncation:
            return
        encodings = self.tokenizer.encode_batch(
            list(texts), add_special_tokens=self.steps.add_special_tokens
        )
        for index, encoding in enumerate(encodings):
            if len(encoding.ids) > self.steps.max_length:
                raise BadRequestError(
                    f"input {name!r}: element {index} has {len(encoding.ids)} tokens; the model "
                    f"takes at most {self.steps.max_length} (truncation is off)"
                )

    def encode(self, texts: Sequence[str]) -> TokenBatch:
        """Tokenize ``texts`` as one batch, padded to its longest text (or the fixed length)."""
        encodings = self.tokenizer.encode_batch(
            list(texts), add_special_tokens=self.steps.add_special_tokens
        )
        return self._pad([e.ids for e in encodings], [e.type_ids for e in encodings])

    def token_ids(self, texts: Sequence[str]) -> np.ndarray[Any, Any]:
        """Each text's token ids (truncated, not padded), as an object array of int64 arrays."""
        encodings = self.tokenizer.encode_batch(
            list(texts), add_special_tokens=self.steps.add_special_tokens
        )
        out = np.empty(len(encodings), dtype=object)
        for index, encoding in enumerate(encodings):
            out[index] = np.asarray(encoding.ids, dtype=np.int64)
        return out

    def from_ids(self, sequences: Sequence[Sequence[int]]) -> TokenBatch:
        """Token ids given by the caller (no special tokens added), truncated as texts are."""
        limit = self.steps.max_length
        if not self.steps.truncation:
            for index, ids in enumerate(sequences):
                if len(ids) > limit:
                    raise BadRequestError(
                        f"input 'input': element {index} has {len(ids)} tokens; the model takes "
                        f"at most {limit} (truncation is off)"
                    )
        cut = [ids[:limit] for ids in sequences]
        return self._pad(cut, [[0] * len(ids) for ids in cut])

    def _pad(self, ids: Sequence[Sequence[int]], type_ids: Sequence[Sequence[int]]) -> TokenBatch:
        padding = self.steps.padding
        longest = max((len(i) for i in ids), default=0)
        width = max(longest, 1) if padding == "longest" else max(int(padding), longest)
        rows = len(ids)
        out_ids = np.full((rows, width), self.pad_id, dtype=np.int64)
        mask = np.zeros((rows, width), dtype=np.int64)
        types = np.zeros((rows, width), dtype=np.int64)
        for row, (seq, seq_types) in enumerate(zip(ids, type_ids, strict=True)):
            n = len(seq)
            out_ids[row, :n] = seq
            mask[row, :n] = 1
            types[row, :n] = seq_types
        return TokenBatch(out_ids, mask, types)

    def feeds(
        self, batch: TokenBatch, datatypes: dict[str, str]
    ) -> dict[str, np.ndarray[Any, Any]]:
        """The model's inputs for ``batch`` under the configured names, in the dtype each input
        declares (``datatypes``: input name to protocol datatype)."""
        steps = self.steps
        feeds: dict[str, np.ndarray[Any, Any]] = {steps.input_ids: batch.ids}
        if steps.attention_mask is not None and steps.attention_mask in datatypes:
            feeds[steps.attention_mask] = batch.mask
        if steps.token_type_ids is not None and steps.token_type_ids in datatypes:
            feeds[steps.token_type_ids] = batch.type_ids
        for name, array in feeds.items():
            if datatypes.get(name) == "INT32":
                feeds[name] = array.astype(np.int32)
        return feeds
