"""Build ``tiny_gpt``: a tiny GPT-2-style decoder with a KV cache, exported to ONNX for tests.

Run from the repository root (torch and transformers are needed here only, never to serve)::

    pip install torch==2.13.0 "transformers>=5"
    python examples/build_tiny_lm.py

Pretrained weights cannot be downloaded where maas is tested, so this script makes a model:

1. a byte-level BPE tokenizer (1,024 tokens, ``<|endoftext|>`` first) trained with
   ``tokenizers`` on the license texts in ``examples/tiny_lm_corpus/``;
2. ``GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=64, n_positions=256))`` (~180k
   parameters), trained on the same texts: the files joined into one token stream, each opened
   by ``<|endoftext|>``, and AdamW on random windows of it, so that greedy decoding continues a
   license (``"Permission is hereby"`` -> ``" granted, free of charge, to any person ..."``);
3. one merged ONNX graph in Hugging Face Optimum's decoder layout: inputs ``input_ids``,
   ``attention_mask`` (past + new), ``position_ids`` and ``past_key_values.{i}.key/.value``
   ``[batch, heads, past, head_dim]`` (past length 0 on the first step); outputs ``logits`` and
   ``present.{i}.key/.value``.

It writes ``examples/model_repository/tiny_gpt/`` (``1/model.onnx``, ``tokenizer.json``,
``tokenizer_config.json`` with a chat template, ``config.json`` with ``"task":
"text-generation"``) and checks, before it says done, that greedy decoding in onnxruntime with the
cache equals decoding without it (the whole sequence re-run each step) and equals PyTorch's own
``generate``, one prompt at a time and as a left-padded batch, and that greedy decoding goes on
with a few license sentences word for word (``CONTINUATIONS``).

The build is deterministic: seeded, one thread, ``torch.use_deterministic_algorithms``, so the same
versions on the same machine write the same bytes (training amplifies the last-bit differences
between CPUs' floating-point kernels, so another kind of CPU may write other weights, which the
checks then judge). Training takes 3 to 6 minutes on one core.
"""

from __future__ import annotations

import hashlib
import json
import math
import pathlib
import tempfile
import time
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import DynamicCache, GPT2Config, GPT2LMHeadModel

HERE = pathlib.Path(__file__).resolve().parent
CORPUS = HERE / "tiny_lm_corpus"
TARGET = HERE / "model_repository" / "tiny_gpt"

VOCAB_SIZE = 1024
N_LAYER = 2
N_HEAD = 2
N_EMBD = 64
N_POSITIONS = 256
SEED = 0
# training: AdamW on STEPS batches of BATCH random windows of WINDOW tokens of the corpus stream.
# Short windows put short contexts, like a prompt's, in most of the loss: with 256-token ones the
# loss ends lower but greedy decoding of a 3-word prompt strays after a few words.
STEPS = 1500
BATCH = 64
WINDOW = 64
LEARNING_RATE = 3e-3
WARMUP = 50
OPSET = 17
EOS = "<|endoftext|>"

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'] }}: {{ message['content'] }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)
CONFIG = {
    "task": "text-generation",
    "generation": {
        "max_tokens": 32,
        "temperature": 0.0,
        "eos_token_id": 0,
        "context_length": N_POSITIONS,
    },
    # one decode step takes ~0.1 ms: a second intra-op thread costs more than it brings
    "execution_providers": [
        {"name": "CPUExecutionProvider", "options": {"intra_op_num_threads": 1}}
    ],
}
CHECK_PROMPTS = [
    "Permission is hereby",
    "Licensed under the Apache License",
    "The software is provided",
    "Copyright",
    "You may not use this file except in compliance with",
]
CHECK_TOKENS = 40
# greedy decoding must reproduce the corpus after these prompts
CONTINUATIONS = {
    "Permission is hereby": " granted, free of charge, to any person obtaining a copy",
    "Redistribution and use": " in source and binary forms, with or without",
    "Licensed under the Apache License": ', Version 2.0 (the "License");',
}


def train_tokenizer() -> Tokenizer:
    """Byte-level BPE over the corpus files, in sorted order so that training is repeatable."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    files = sorted(str(p) for p in CORPUS.glob("*.txt"))
    if not files:
        raise SystemExit(f"no corpus files in {CORPUS}")
    tokenizer.train(files, trainer)
    if tokenizer.token_to_id(EOS) != 0 or tokenizer.get_vocab_size() != VOCAB_SIZE:
        raise SystemExit("unexpected tokenizer: EOS must be id 0 and the vocabulary full")
    return tokenizer


def corpus_stream(tokenizer: Tokenizer) -> torch.Tensor:
    """Every corpus text, in sorted order, each opened by ``<|endoftext|>``, as one token stream."""
    ids: list[int] = []
    for path in sorted(CORPUS.glob("*.txt")):
        ids += [0, *tokenizer.encode(path.read_text(encoding="utf-8")).ids]
    return torch.tensor(ids, dtype=torch.int64)


def build_model() -> GPT2LMHeadModel:
    torch.manual_seed(SEED)
    config = GPT2Config(
        n_layer=N_LAYER,
        n_head=N_HEAD,
        n_embd=N_EMBD,
        n_positions=N_POSITIONS,
        vocab_size=VOCAB_SIZE,
        bos_token_id=0,
        eos_token_id=0,
        # a model this small memorises its corpus better without dropout
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    config._attn_implementation = "eager"
    return GPT2LMHeadModel(config)


def train(model: GPT2LMHeadModel, stream: torch.Tensor) -> None:
    """AdamW with a linear warm-up and a cosine decay, on random windows of the stream."""
    generator = torch.Generator().manual_seed(SEED)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=0.01)

    def rate(step: int) -> float:
        if step < WARMUP:
            return (step + 1) / WARMUP
        return 0.5 * (1 + math.cos(math.pi * (step - WARMUP) / (STEPS - WARMUP)))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, rate)
    offsets = torch.arange(WINDOW)
    model.train()
    started = time.monotonic()
    for step in range(STEPS):
        starts = torch.randint(0, len(stream) - WINDOW + 1, (BATCH,), generator=generator)
        windows = stream[starts[:, None] + offsets]
        loss = model(input_ids=windows, labels=windows).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step % 100 == 0 or step == STEPS - 1:
            elapsed = time.monotonic() - started
            print(f"  step {step:5d}  loss {loss.item():.3f}  {elapsed:5.0f} s", flush=True)
    model.eval()


class OptimumLayout(torch.nn.Module):
    """The model with flat tensors in and out, as Optimum's merged decoder export has them."""

    def __init__(self, model: GPT2LMHeadModel) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        *past: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        cache = DynamicCache(
            ddp_cache_data=[(past[2 * i], past[2 * i + 1]) for i in range(N_LAYER)]
        )
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=True,
        )
        present: list[torch.Tensor] = []
        for layer in out.cache.layers:
            present += [layer.keys, layer.values]
        return (out.logits, *present)


def export(model: GPT2LMHeadModel, path: pathlib.Path) -> None:
    head_dim = N_EMBD // N_HEAD
    past_names = [
        f"past_key_values.{i}.{kind}" for i in range(N_LAYER) for kind in ("key", "value")
    ]
    present_names = [f"present.{i}.{kind}" for i in range(N_LAYER) for kind in ("key", "value")]
    batch, seq, past_len = 2, 3, 4
    sample = (
        torch.randint(0, VOCAB_SIZE, (batch, seq)),
        torch.ones(batch, past_len + seq, dtype=torch.int64),
        torch.arange(past_len, past_len + seq).repeat(batch, 1),
        *[torch.randn(batch, N_HEAD, past_len, head_dim) for _ in past_names],
    )
    dynamic: dict[str, dict[int, str]] = {
        "input_ids": {0: "batch_size", 1: "sequence_length"},
        "attention_mask": {0: "batch_size", 1: "total_sequence_length"},
        "position_ids": {0: "batch_size", 1: "sequence_length"},
        "logits": {0: "batch_size", 1: "sequence_length"},
    }
    for name in past_names:
        dynamic[name] = {0: "batch_size", 2: "past_sequence_length"}
    for name in present_names:
        dynamic[name] = {0: "batch_size", 2: "total_sequence_length"}
    wrapper = OptimumLayout(model).eval()  # the exporter restores the wrapper's mode afterwards
    with torch.no_grad():
        torch.onnx.export(
            wrapper,
            sample,
            str(path),
            input_names=["input_ids", "attention_mask", "position_ids", *past_names],
            output_names=["logits", *present_names],
            dynamic_axes=dynamic,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )


# --- checks in onnxruntime -------------------------------------------------------------------


def _empty_past(batch: int) -> dict[str, np.ndarray]:
    shape = (batch, N_HEAD, 0, N_EMBD // N_HEAD)
    return {
        f"past_key_values.{i}.{kind}": np.zeros(shape, np.float32)
        for i in range(N_LAYER)
        for kind in ("key", "value")
    }


def greedy_cached(session: ort.InferenceSession, prompts: list[list[int]], steps: int) -> list:
    """Greedy decoding of a left-padded batch, reusing the KV cache between steps."""
    width = max(len(p) for p in prompts)
    ids = np.zeros((len(prompts), width), np.int64)
    mask = np.zeros((len(prompts), width), np.int64)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = prompt
        mask[row, width - len(prompt) :] = 1
    feeds: dict[str, np.ndarray] = {
        "input_ids": ids,
        "attention_mask": mask,
        **_empty_past(len(prompts)),
    }
    out: list[list[int]] = [[] for _ in prompts]
    names = [o.name for o in session.get_outputs()]
    for _ in range(steps):
        feeds["position_ids"] = np.maximum(np.cumsum(feeds["attention_mask"], axis=1) - 1, 0)[
            :, -feeds["input_ids"].shape[1] :
        ]
        results = dict(zip(names, session.run(names, feeds), strict=True))
        nxt = results["logits"][:, -1, :].argmax(axis=-1)
        for row, token in enumerate(nxt):
            out[row].append(int(token))
        feeds = {
            "input_ids": nxt[:, None].astype(np.int64),
            "attention_mask": np.concatenate(
                [feeds["attention_mask"], np.ones((len(prompts), 1), np.int64)], axis=1
            ),
        }
        for i in range(N_LAYER):
            for kind in ("key", "value"):
                feeds[f"past_key_values.{i}.{kind}"] = results[f"present.{i}.{kind}"]
    return out


def greedy_uncached(session: ort.InferenceSession, prompt: list[int], steps: int) -> list[int]:
    """Greedy decoding that re-runs the whole sequence each step (no cache)."""
    tokens = list(prompt)
    for _ in range(steps):
        ids = np.array([tokens], np.int64)
        feeds = {
            "input_ids": ids,
            "attention_mask": np.ones_like(ids),
            "position_ids": np.arange(len(tokens), dtype=np.int64)[None, :],
            **_empty_past(1),
        }
        (logits,) = session.run(["logits"], feeds)
        tokens.append(int(logits[0, -1].argmax()))
    return tokens[len(prompt) :]


def greedy_torch(model: GPT2LMHeadModel, prompt: list[int], steps: int) -> list[int]:
    with torch.no_grad():
        ids = torch.tensor([prompt])
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=steps,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
    result: list[int] = out[0, len(prompt) :].tolist()
    return result


def check(model_path: pathlib.Path, model: GPT2LMHeadModel, tokenizer: Tokenizer) -> None:
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    prompts = [tokenizer.encode(p).ids for p in CHECK_PROMPTS]
    batched = greedy_cached(session, prompts, CHECK_TOKENS)
    for prompt, text, from_batch in zip(prompts, CHECK_PROMPTS, batched, strict=True):
        alone = greedy_cached(session, [prompt], CHECK_TOKENS)[0]
        uncached = greedy_uncached(session, prompt, CHECK_TOKENS)
        reference = greedy_torch(model, prompt, CHECK_TOKENS)
        if not alone == uncached == reference == from_batch:
            raise SystemExit(
                f"decodes differ for {text!r}:\n cached   {alone}\n uncached {uncached}\n"
                f" torch    {reference}\n batched  {from_batch}"
            )
        if len(set(alone)) < CHECK_TOKENS // 4:
            raise SystemExit(f"greedy output of {text!r} is too repetitive: {alone}")
        print(f"  {text!r} -> {tokenizer.decode(alone)!r}")
    for prompt, expected in CONTINUATIONS.items():
        ids = tokenizer.encode(prompt).ids
        text = tokenizer.decode(
            greedy_cached(session, [ids], len(tokenizer.encode(expected).ids))[0]
        )
        if not text.startswith(expected):
            raise SystemExit(f"greedy decoding of {prompt!r} gives {text!r}, not {expected!r}")


def main() -> None:
    started = time.monotonic()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    tokenizer = train_tokenizer()
    stream = corpus_stream(tokenizer)
    model = build_model()
    print(f"training on {len(stream)} tokens: {STEPS} steps of {BATCH} x {WINDOW}")
    train(model, stream)
    version_dir = TARGET / "1"
    version_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        raw = pathlib.Path(tmp) / "model.onnx"
        export(model, raw)
        proto = onnx.load(str(raw))
    proto.producer_name = "maas examples/build_tiny_lm.py"
    onnx.checker.check_model(proto)
    model_path = version_dir / "model.onnx"
    onnx.save(proto, str(model_path))
    tokenizer.save(str(TARGET / "tokenizer.json"))
    tokenizer_config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": EOS,
        "eos_token": EOS,
        "model_max_length": N_POSITIONS,
        "chat_template": CHAT_TEMPLATE,
    }
    (TARGET / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    (TARGET / "config.json").write_text(json.dumps(CONFIG, indent=2) + "\n")
    print("greedy decoding: cached == uncached == torch generate == left-padded batch,")
    print("and it continues the corpus")
    check(model_path, model, tokenizer)
    for path in sorted(TARGET.rglob("*")):
        if path.is_file():
            digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
            size = path.stat().st_size
            print(f"{path.relative_to(HERE)}  {size} bytes  sha256 {digest}")
    print(f"built in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
