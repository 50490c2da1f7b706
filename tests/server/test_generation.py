"""Triton's generate extension over the tiny GPT-2 decoder, against a real uvicorn server.

Greedy output is checked token for token against a decode that runs onnxruntime directly without
the KV cache (the whole sequence again at every step).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from tokenizers import Tokenizer

from maas_server.generation import GenerationEngine, GenerationService
from tests.conftest import wait_for
from tests.server.conftest import EOS_AFTER, EOS_PROMPT, engine_of, reference_greedy
from tests.waiting import StepGate, until

PROMPTS = [
    "Licensed under the Apache License",
    "The software is provided",
    "Copyright",
    "You may not use this file except in compliance with",
    "Redistribution and use in source and binary forms",
    "THIS SOFTWARE IS PROVIDED BY THE REGENTS",
    "Mozilla Public License",
    "a",
]

Event = tuple[str, dict[str, Any]]


def sse_events(lines: Iterator[str]) -> Iterator[Event]:
    """(event name, JSON data) of each server-sent event."""
    name = "message"
    for line in lines:
        if line.startswith("event:"):
            name = line[len("event:") :].strip()
        elif line.startswith("data:"):
            yield name, json.loads(line[len("data:") :])
            name = "message"


def stream(url: str, model: str, body: dict[str, Any]) -> list[Event]:
    with httpx.stream(
        "POST", f"{url}/v2/models/{model}/generate_stream", json=body, timeout=60
    ) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        return list(sse_events(response.iter_lines()))


def generate(url: str, model: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{url}/v2/models/{model}/generate", json=body, timeout=60)


def streamed_ids(events: list[Event]) -> list[int]:
    return [t for _, data in events for t in data.get("token_ids", [])]


def streamed_text(events: list[Event]) -> str:
    return "".join(data["text_output"] for _, data in events)


# --- greedy decoding ------------------------------------------------------------------------


@pytest.mark.parametrize("prompt", PROMPTS[:4])
def test_streamed_greedy_equals_uncached_reference(
    generation_url: str,
    prompt: str,
    tokenizer: Tokenizer,
    reference_session: ort.InferenceSession,
) -> None:
    steps = 40
    events = stream(
        generation_url,
        "tiny_gpt",
        {"text_input": prompt, "max_tokens": steps, "return_token_ids": True},
    )
    ids = streamed_ids(events)
    assert ids == reference_greedy(reference_session, tokenizer.encode(prompt).ids, steps)
    assert streamed_text(events) == tokenizer.decode(ids)
    *pieces, (_, final) = events
    assert all(name == "message" for name, _ in events)
    assert all(data["text_output"] for _, data in pieces)  # one event per new piece of text
    assert final == {
        "model_name": "tiny_gpt",
        "model_version": "1",
        "text_output": "",
        "token_ids": final["token_ids"],
        "finish_reason": "length",
        "prompt_tokens": len(tokenizer.encode(prompt).ids),
        "completion_tokens": steps,
    }


def test_pieces_are_complete_utf8(generation_url: str, tokenizer: Tokenizer) -> None:
    """A byte-level model splits characters across tokens; no piece ends in the middle of one
    (invalid bytes, which only the last flush may leave aside). The trained model writes ASCII
    when greedy; sampled hot it also picks lone bytes, some of which open a multi-byte
    character."""
    held_back = 0
    for seed in range(8):
        events = stream(
            generation_url,
            "tiny_gpt",
            {
                "text_input": "Copyright",
                "max_tokens": 60,
                "temperature": 3.0,
                "seed": seed,
                "return_token_ids": True,
            },
        )
        pieces = [data["text_output"] for _, data in events[:-1]]
        held_back += sum(len(data["token_ids"]) > 1 for _, data in events[:-1])
        assert all(not p.endswith("\ufffd") for p in pieces[:-1])
        assert "".join(pieces) == tokenizer.decode(streamed_ids(events))
    assert held_back > 0


def test_generate_equals_stream(generation_url: str) -> None:
    body = {"text_input": PROMPTS[1], "max_tokens": 25, "return_token_ids": True, "id": "r1"}
    answer = generate(generation_url, "tiny_gpt", body)
    assert answer.status_code == 200
    result = answer.json()
    events = stream(generation_url, "tiny_gpt", body)
    assert result["text_output"] == streamed_text(events)
    assert result["token_ids"] == streamed_ids(events)
    assert result["id"] == "r1"
    assert result["finish_reason"] == "length"
    assert result["completion_tokens"] == 25


def test_parameters_at_top_level_or_nested(generation_url: str) -> None:
    top = generate(generation_url, "tiny_gpt", {"text_input": "Copyright", "max_tokens": 7})
    nested = generate(
        generation_url, "tiny_gpt", {"text_input": "Copyright", "parameters": {"max_tokens": 7}}
    )
    assert top.json() == nested.json()
    assert top.json()["completion_tokens"] == 7


def test_model_defaults_apply(generation_url: str) -> None:
    result = generate(generation_url, "tiny_gpt", {"text_input": "Copyright"}).json()
    assert result["completion_tokens"] == 32  # config.json: generation.max_tokens
    assert "token_ids" not in result


def test_versioned_route(generation_url: str) -> None:
    body = {"text_input": "Copyright", "max_tokens": 3}
    latest = generate(generation_url, "tiny_gpt", body).json()
    versioned = httpx.post(f"{generation_url}/v2/models/tiny_gpt/versions/1/generate", json=body)
    assert versioned.json() == latest
    missing = httpx.post(f"{generation_url}/v2/models/tiny_gpt/versions/7/generate", json=body)
    assert missing.status_code == 404


def test_io_binding_gives_the_same_tokens(generation_url: str) -> None:
    body = {"text_input": PROMPTS[0], "max_tokens": 40, "return_token_ids": True}
    plain = generate(generation_url, "tiny_gpt", body).json()
    bound = generate(generation_url, "tiny_gpt_iobinding", body).json()
    assert bound["token_ids"] == plain["token_ids"]
    assert bound["text_output"] == plain["text_output"]


def test_empty_prompt_starts_from_bos(
    generation_url: str, reference_session: ort.InferenceSession
) -> None:
    result = generate(
        generation_url, "tiny_gpt", {"text_input": "", "max_tokens": 5, "return_token_ids": True}
    ).json()
    assert result["token_ids"] == reference_greedy(reference_session, [0], 5)
    assert result["prompt_tokens"] == 1


# --- stopping -------------------------------------------------------------------------------


def test_max_tokens(
    generation_url: str, tokenizer: Tokenizer, reference_session: ort.InferenceSession
) -> None:
    reference = reference_greedy(reference_session, tokenizer.encode("Copyright").ids, 5)
    for max_tokens in (1, 2, 5):
        events = stream(
            generation_url,
            "tiny_gpt",
            {"text_input": "Copyright", "max_tokens": max_tokens, "return_token_ids": True},
        )
        final = events[-1][1]
        assert final["finish_reason"] == "length"
        assert final["completion_tokens"] == max_tokens
        assert streamed_ids(events) == reference[:max_tokens]


def test_stop_strings(generation_url: str) -> None:
    prompt = PROMPTS[0]
    full = generate(generation_url, "tiny_gpt", {"text_input": prompt, "max_tokens": 40}).json()
    text = full["text_output"]
    stop = text[12:16]
    assert stop.strip()
    cut = text.index(stop)
    body = {"text_input": prompt, "max_tokens": 40, "stop": stop}
    answer = generate(generation_url, "tiny_gpt", body).json()
    assert answer["text_output"] == text[:cut]
    assert answer["finish_reason"] == "stop"
    assert answer["completion_tokens"] < 40
    events = stream(generation_url, "tiny_gpt", body)
    assert streamed_text(events) == text[:cut]
    assert all(stop not in data["text_output"] for _, data in events)
    assert events[-1][1]["finish_reason"] == "stop"
    # several stop strings: the earliest in the text wins; one that never appears changes nothing
    later = text[20:23]
    several = generate(
        generation_url,
        "tiny_gpt",
        {"text_input": prompt, "max_tokens": 40, "stop": ["\x00never\x00", later, stop]},
    ).json()
    assert several["text_output"] == text[: min(cut, text.index(later))]


def test_stop_string_spanning_pieces(generation_url: str) -> None:
    """A stop string that starts in one piece and ends in a later one is still found, and its
    first half is never sent."""
    prompt = PROMPTS[1]
    events = stream(generation_url, "tiny_gpt", {"text_input": prompt, "max_tokens": 40})
    pieces = [data["text_output"] for _, data in events[:-1]]
    joined = "".join(pieces)
    boundary = len(pieces[0]) + len(pieces[1])
    stop = joined[boundary - 2 : boundary + 2]
    cut = joined.index(stop)
    stopped = stream(
        generation_url, "tiny_gpt", {"text_input": prompt, "max_tokens": 40, "stop": [stop]}
    )
    assert streamed_text(stopped) == joined[:cut]
    assert stopped[-1][1]["finish_reason"] == "stop"


def test_eos_stops(
    generation_url: str, tokenizer: Tokenizer, reference_session: ort.InferenceSession
) -> None:
    prompt_ids = tokenizer.encode(EOS_PROMPT).ids
    reference = reference_greedy(reference_session, prompt_ids, 40)
    eos = reference[EOS_AFTER - 1]
    stop_at = reference.index(eos) + 1
    body = {"text_input": EOS_PROMPT, "max_tokens": 40, "return_token_ids": True}
    result = generate(generation_url, "tiny_gpt_eos", body).json()
    assert result["finish_reason"] == "stop"
    assert result["token_ids"] == reference[:stop_at]
    assert result["completion_tokens"] == stop_at
    assert result["text_output"] == tokenizer.decode(reference[: stop_at - 1])
    ignored = generate(generation_url, "tiny_gpt_eos", {**body, "ignore_eos": True}).json()
    assert ignored["finish_reason"] == "length"
    assert ignored["token_ids"] == reference


def test_context_length(generation_url: str, tokenizer: Tokenizer) -> None:
    long_text = " ".join(["Copyright"] * 400)
    ids = tokenizer.encode(long_text).ids
    assert len(ids) > 256
    refused = generate(generation_url, "tiny_gpt", {"text_input": long_text})
    assert refused.status_code == 400
    assert "context is 256 tokens" in refused.json()["error"]
    words = 1
    while len(tokenizer.encode(" ".join(["Copyright"] * (words + 1))).ids) < 250:
        words += 1
    text = " ".join(["Copyright"] * words)
    prompt_tokens = len(tokenizer.encode(text).ids)
    result = generate(
        generation_url, "tiny_gpt", {"text_input": text, "max_tokens": 100, "ignore_eos": True}
    ).json()
    assert result["finish_reason"] == "length"
    assert result["prompt_tokens"] == prompt_tokens
    assert result["prompt_tokens"] + result["completion_tokens"] == 256


# --- disconnects ----------------------------------------------------------------------------


@pytest.fixture
def tiny_engine(generation_service: GenerationService, generation_url: str) -> GenerationEngine:
    """The tiny_gpt engine, once idle; a test holds its steps with a :class:`StepGate`."""
    engine = engine_of(generation_service, generation_url, "tiny_gpt")
    wait_for(lambda: engine.active_sequences == 0)
    return engine


def assert_engine_adds_only(engine: GenerationEngine, url: str, tokens: int) -> None:
    """Nothing runs any more for an ended sequence: a new request adds exactly its own tokens."""
    before = engine.tokens
    body = {"text_input": "a", "max_tokens": tokens, "ignore_eos": True}
    assert generate(url, "tiny_gpt", body).json()["completion_tokens"] == tokens
    assert engine.tokens - before == tokens


def test_stream_disconnect_stops_the_sequence(
    tiny_engine: GenerationEngine, generation_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = StepGate.install(tiny_engine, monkeypatch, allow=8)
    before = tiny_engine.tokens
    body = {"text_input": "Copyright", "max_tokens": 200, "ignore_eos": True}
    with httpx.stream(
        "POST", f"{generation_url}/v2/models/tiny_gpt/generate_stream", json=body
    ) as response:
        lines = response.iter_lines()
        received = 0
        for line in lines:
            received += line.startswith("data:")
            if received == 3:
                break
        assert tiny_engine.active_sequences == 1
        wait_for(lambda: gate.holding)  # the engine waits inside its 9th step
    # The server notices the disconnect by itself, while the engine is paused.
    wait_for(lambda: gate.cancels == 1)
    gate.open()
    wait_for(lambda: tiny_engine.active_sequences == 0)
    generated = tiny_engine.tokens - before
    assert generated <= 9  # the 8 steps let through and the held one, no more
    assert_engine_adds_only(tiny_engine, generation_url, 3)  # nothing runs for it any more


def test_generate_disconnect_stops_the_sequence(
    tiny_engine: GenerationEngine, generation_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = StepGate.install(tiny_engine, monkeypatch, allow=3)
    before = tiny_engine.tokens
    body = {"text_input": "Copyright", "max_tokens": 200, "ignore_eos": True}
    with pytest.raises(httpx.ReadTimeout):  # the engine is held: no answer comes
        httpx.post(
            f"{generation_url}/v2/models/tiny_gpt/generate",
            json=body,
            timeout=httpx.Timeout(30, read=0.3),
        )
    wait_for(lambda: gate.cancels == 1)
    gate.open()
    wait_for(lambda: tiny_engine.active_sequences == 0)
    assert tiny_engine.tokens - before <= 4  # the held step, no more
    assert_engine_adds_only(tiny_engine, generation_url, 3)


# --- concurrency ----------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["tiny_gpt", "tiny_gpt_serial"])
def test_eight_concurrent_streams(
    model: str,
    generation_url: str,
    generation_service: GenerationService,
    tokenizer: Tokenizer,
    reference_session: ort.InferenceSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    steps = 40
    engine = engine_of(generation_service, generation_url, model)
    wait_for(lambda: engine.active_sequences == 0)
    # The engine pauses in its first run until all 8 have arrived: they run together however
    # slowly the machine lets their requests in.
    gate = StepGate.install(engine, monkeypatch, allow=0)
    engine.largest_batch = 0
    start_steps = engine.steps

    def run(prompt: str) -> list[Event]:
        body = {"text_input": prompt, "max_tokens": steps, "return_token_ids": True}
        return stream(generation_url, model, body)

    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        futures = [pool.submit(run, prompt) for prompt in PROMPTS]
        wait_for(lambda: engine.active_sequences == len(PROMPTS))
        gate.open()
        results = [future.result(timeout=120) for future in futures]
    for prompt, events in zip(PROMPTS, results, strict=True):
        ids = streamed_ids(events)
        assert ids == reference_greedy(reference_session, tokenizer.encode(prompt).ids, steps)
        assert events[-1][1]["finish_reason"] == "length"
    runs = engine.steps - start_steps
    if model == "tiny_gpt":
        # batched: far fewer session runs than tokens (8 x 40 = 320)
        assert engine.largest_batch > 1
        assert runs < len(PROMPTS) * steps * 0.75
    else:
        assert engine.largest_batch == 1
        assert runs == len(PROMPTS) * steps


def test_concurrent_streams_are_interleaved(
    tiny_engine: GenerationEngine, generation_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stream that starts while a long one runs is not held back: it shares the steps and
    finishes first."""
    gate = StepGate.install(tiny_engine, monkeypatch, allow=3)
    tiny_engine.largest_batch = 0
    long_body = {"text_input": "Copyright", "max_tokens": 150, "ignore_eos": True}
    with ThreadPoolExecutor(2) as pool:
        long = pool.submit(stream, generation_url, "tiny_gpt", long_body)
        wait_for(lambda: gate.holding)  # the long one runs (paused after 3 steps)
        started = tiny_engine.tokens
        short_future = pool.submit(
            stream, generation_url, "tiny_gpt", {"text_input": "a", "max_tokens": 5}
        )
        wait_for(lambda: tiny_engine.active_sequences == 2)
        # Enough steps for the short one's prefill and its 4 decode steps, even unbatched
        # (2 runs a step), far fewer than the long one's 150.
        gate.release(12)
        short = short_future.result(timeout=60)
        assert short[-1][1]["completion_tokens"] == 5
        assert tiny_engine.active_sequences == 1  # the long one is still going
        assert tiny_engine.tokens - started < 60
        assert tiny_engine.largest_batch >= 2
        gate.open()
        assert long.result()[-1][1]["completion_tokens"] == 150


# --- sampling -------------------------------------------------------------------------------


def test_seeded_sampling_is_reproducible(generation_url: str) -> None:
    body = {
        "text_input": "Copyright",
        "max_tokens": 30,
        "temperature": 0.9,
        "top_k": 50,
        "top_p": 0.9,
        "seed": 1234,
        "return_token_ids": True,
    }
    first = generate(generation_url, "tiny_gpt", body).json()
    again = generate(generation_url, "tiny_gpt", body).json()
    assert first["token_ids"] == again["token_ids"]
    other = generate(generation_url, "tiny_gpt", {**body, "seed": 4321}).json()
    assert other["token_ids"] != first["token_ids"]
    greedy = generate(generation_url, "tiny_gpt", {**body, "temperature": 0}).json()
    assert greedy["token_ids"] != first["token_ids"]
    # the same seed gives the same tokens when the sequence shares its steps with others
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: generate(generation_url, "tiny_gpt", body), range(4)))
    assert all(r.json()["token_ids"] == first["token_ids"] for r in results)


def test_top_k_one_is_greedy(generation_url: str) -> None:
    greedy = generate(
        generation_url, "tiny_gpt", {"text_input": "Copyright", "return_token_ids": True}
    ).json()
    sampled = generate(
        generation_url,
        "tiny_gpt",
        {"text_input": "Copyright", "temperature": 1.5, "top_k": 1, "return_token_ids": True},
    ).json()
    assert sampled["token_ids"] == greedy["token_ids"]


# --- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize("route", ["generate", "generate_stream"])
def test_errors_before_the_first_event_are_http_errors(generation_url: str, route: str) -> None:
    def post(model: str, body: Any) -> httpx.Response:
        return httpx.post(f"{generation_url}/v2/models/{model}/{route}", json=body)

    cases: list[tuple[str, Any, int, str]] = [
        ("nope", {"text_input": "a"}, 404, "unknown model 'nope'"),
        ("mlp", {"text_input": "a"}, 400, "not a text-generation model"),
        ("no_tokenizer", {"text_input": "a"}, 503, "tokenizer.json is missing"),
        ("not_a_decoder", {"text_input": "a"}, 503, "lacks the 'input_ids' input"),
        ("tiny_gpt", {}, 400, "text_input"),
        ("tiny_gpt", {"text_input": 3}, 400, "text_input"),
        ("tiny_gpt", [1, 2], 400, "JSON object"),
        ("tiny_gpt", {"text_input": "a", "max_tokens": 0}, 400, "max_tokens"),
        ("tiny_gpt", {"text_input": "a", "max_tokens": "many"}, 400, "max_tokens"),
        ("tiny_gpt", {"text_input": "a", "temperature": -1}, 400, "temperature"),
        ("tiny_gpt", {"text_input": "a", "top_p": 0}, 400, "top_p"),
        ("tiny_gpt", {"text_input": "a", "top_p": 1.5}, 400, "top_p"),
        ("tiny_gpt", {"text_input": "a", "top_k": -2}, 400, "top_k"),
        ("tiny_gpt", {"text_input": "a", "seed": -1}, 400, "seed"),
        ("tiny_gpt", {"text_input": "a", "stop": [""]}, 400, "stop"),
        ("tiny_gpt", {"text_input": "a", "stop": 5}, 400, "stop"),
        ("tiny_gpt", {"text_input": "a", "stop": ["x"] * 17}, 400, "stop"),
        ("tiny_gpt", {"text_input": "a", "ignore_eos": "yes"}, 400, "ignore_eos"),
        ("tiny_gpt", {"text_input": "a", "parameters": []}, 400, "parameters"),
    ]
    for model, body, status, message in cases:
        answer = post(model, body)
        assert answer.status_code == status, (model, body, answer.text)
        assert answer.headers["content-type"] == "application/json"
        assert message in answer.json()["error"], (body, answer.json())
    bad_json = httpx.post(
        f"{generation_url}/v2/models/tiny_gpt/{route}",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    assert bad_json.status_code == 400


def test_errors_after_the_first_event_end_the_stream(
    generation_service: GenerationService,
    generation_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    engine = engine_of(generation_service, generation_url, "tiny_gpt")
    original = engine._execute
    calls = 0

    def failing(*args: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls > 4:
            raise RuntimeError("the accelerator caught fire")
        return original(*args)

    monkeypatch.setattr(engine, "_execute", failing)
    events = stream(generation_url, "tiny_gpt", {"text_input": "Copyright", "max_tokens": 30})
    names = [name for name, _ in events]
    assert names[0] == "message"
    assert names[-1] == "error"
    assert "the accelerator caught fire" in events[-1][1]["error"]
    assert not any("finish_reason" in data for _, data in events)
    wait_for(lambda: engine.active_sequences == 0)


def test_failure_before_the_first_event_is_a_500(
    generation_service: GenerationService,
    generation_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    engine = engine_of(generation_service, generation_url, "tiny_gpt")

    def failing(*args: Any) -> Any:
        raise RuntimeError("no memory left")

    monkeypatch.setattr(engine, "_execute", failing)
    for route in ("generate", "generate_stream"):
        answer = httpx.post(
            f"{generation_url}/v2/models/tiny_gpt/{route}", json={"text_input": "Copyright"}
        )
        assert answer.status_code == 500
        assert "no memory left" in answer.json()["error"]
    wait_for(lambda: engine.active_sequences == 0)


def test_server_metadata_lists_generate(generation_url: str) -> None:
    assert "generate" in httpx.get(f"{generation_url}/v2").json()["extensions"]


def test_generation_models_still_serve_infer(generation_url: str) -> None:
    """A text-generation model is an ONNX model: /infer runs one step of it."""
    body = {
        "inputs": [
            {"name": "input_ids", "shape": [1, 2], "datatype": "INT64", "data": [5, 6]},
            {"name": "attention_mask", "shape": [1, 2], "datatype": "INT64", "data": [1, 1]},
            {"name": "position_ids", "shape": [1, 2], "datatype": "INT64", "data": [0, 1]},
        ]
        + [
            {"name": f"past_key_values.{i}.{k}", "shape": [1, 2, 0, 32], "datatype": "FP32"}
            | {"data": []}
            for i in range(2)
            for k in ("key", "value")
        ],
        "outputs": [{"name": "logits"}],
    }
    answer = httpx.post(f"{generation_url}/v2/models/tiny_gpt/infer", json=body)
    assert answer.status_code == 200, answer.text
    logits = np.array(answer.json()["outputs"][0]["data"])
    assert logits.shape == (2 * 1024,)


def test_pieces_carry_the_request_id(generation_url: str) -> None:
    events = stream(
        generation_url, "tiny_gpt", {"text_input": "Copyright", "max_tokens": 10, "id": "abc"}
    )
    assert all(data["id"] == "abc" for _, data in events)
    assert all(
        set(data) == {"model_name", "model_version", "text_output", "id"} for _, data in events[:-1]
    )


def test_sequences_beyond_max_batch_size_wait_their_turn(
    generation_url: str,
    generation_service: GenerationService,
    tokenizer: Tokenizer,
    reference_session: ort.InferenceSession,
) -> None:
    engine = engine_of(generation_service, generation_url, "tiny_gpt_pairs")
    prompts = PROMPTS[:5]
    with ThreadPoolExecutor(len(prompts)) as pool:
        results = list(
            pool.map(
                lambda p: generate(
                    generation_url,
                    "tiny_gpt_pairs",
                    {"text_input": p, "max_tokens": 20, "return_token_ids": True},
                ).json(),
                prompts,
            )
        )
    for prompt, result in zip(prompts, results, strict=True):
        assert result["token_ids"] == reference_greedy(
            reference_session, tokenizer.encode(prompt).ids, 20
        )
    assert engine.largest_batch <= 2
    wait_for(lambda: engine.active_sequences == 0)


def test_unload_lets_running_streams_finish(
    generation_url: str, generation_service: GenerationService, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = engine_of(generation_service, generation_url, "tiny_gpt_spare")
    gate = StepGate.install(engine, monkeypatch, allow=5)
    body = {"text_input": "Copyright", "max_tokens": 60, "ignore_eos": True}
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(stream, generation_url, "tiny_gpt_spare", body)
        wait_for(lambda: gate.holding)  # running, paused after 5 steps
        unload = httpx.post(f"{generation_url}/v2/repository/models/tiny_gpt_spare/unload")
        assert unload.status_code == 200
        refused = generate(generation_url, "tiny_gpt_spare", body)
        assert refused.status_code == 503
        assert not running.done() and engine.active_sequences == 1
        gate.open()
        events = running.result()
    assert events[-1][1]["finish_reason"] == "length"
    assert events[-1][1]["completion_tokens"] == 60
    load = httpx.post(f"{generation_url}/v2/repository/models/tiny_gpt_spare/load", timeout=60)
    assert load.status_code == 200
    again = generate(generation_url, "tiny_gpt_spare", {**body, "max_tokens": 5})
    assert again.json()["completion_tokens"] == 5
    assert engine_of(generation_service, generation_url, "tiny_gpt_spare") is not engine


async def test_closing_the_engine_fails_running_streams(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the server does at shutdown: streams still running end with a 503 error."""
    from maas_server.config import load_config
    from maas_server.errors import ModelUnavailableError
    from maas_server.runtime import OnnxModel
    from maas_server.tokenizer import TextTokenizer
    from tests.server.conftest import TINY_GPT

    model = OnnxModel.load("tiny_gpt", 1, TINY_GPT / "1" / "model.onnx", load_config(TINY_GPT))
    engine = GenerationEngine(model, TextTokenizer.load(TINY_GPT))
    gate = StepGate.install(engine, monkeypatch, allow=3)
    stream = engine.submit(engine.encode("Copyright"), engine.params({"max_tokens": 200}))
    chunks = stream.chunks()
    first = await anext(chunks)
    assert first[0].text
    await until(lambda: gate.holding)  # still running, paused after 3 of its 200 steps
    closing = asyncio.create_task(asyncio.to_thread(engine.close))
    await until(lambda: engine._closed)  # the shutdown is asked for while the stream runs
    gate.open()
    await closing
    with pytest.raises(ModelUnavailableError, match="shutting down"):
        async for _ in chunks:
            pass
    assert engine.active_sequences == 0
    with pytest.raises(ModelUnavailableError):
        engine.submit([5], engine.params({}))
    model.close()


def test_tiny_temperatures_decode_greedily(generation_url: str) -> None:
    body = {"text_input": "Copyright", "max_tokens": 12, "return_token_ids": True}
    greedy = generate(generation_url, "tiny_gpt", body).json()
    tiny = generate(generation_url, "tiny_gpt", {**body, "temperature": 1e-300, "seed": 1})
    assert tiny.status_code == 200
    assert tiny.json()["token_ids"] == greedy["token_ids"]
