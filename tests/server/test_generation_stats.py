"""Generation requests in the statistics extension and the Prometheus metrics, counted the way
Triton counts a decoupled model's requests: a known sequence on ``tiny_gpt_stats`` (a model copy
no other test uses, so that its counts start at zero), then OpenAI requests on ``tiny_gpt``
(counted by difference)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from maas_server.generation import GenerationService
from tests.conftest import wait_for
from tests.server.test_generation import generate, stream
from tests.server.test_observability import model_labels, parse_metrics
from tests.waiting import StepGate

MODEL = "tiny_gpt_stats"


def model_stats(url: str, model: str) -> dict[str, Any]:
    answer = httpx.get(f"{url}/v2/models/{model}/stats")
    assert answer.status_code == 200, answer.text
    (stats,) = answer.json()["model_stats"]
    assert isinstance(stats, dict)
    return stats


def metrics(url: str) -> tuple[str, dict[str, dict[tuple[tuple[str, str], ...], float]]]:
    text = httpx.get(f"{url}/metrics").text
    return text, parse_metrics(text)


def test_generation_requests_in_statistics_and_metrics(
    generation_url: str, generation_service: GenerationService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """2 generates (one ended by a stop string), 1 stream, 1 stream the client leaves."""
    labels = model_labels(MODEL)
    first = generate(generation_url, MODEL, {"text_input": "Copyright", "max_tokens": 20})
    assert first.status_code == 200, first.text
    stop = first.json()["text_output"][8:11]
    assert stop.strip()
    stopped = generate(
        generation_url, MODEL, {"text_input": "Copyright", "max_tokens": 20, "stop": stop}
    )
    assert stopped.json()["finish_reason"] == "stop"  # a success, though it cancels the sequence
    events = stream(generation_url, MODEL, {"text_input": "The software", "max_tokens": 9})
    assert events[-1][1]["completion_tokens"] == 9
    engine = generation_service.engine(MODEL, None)
    wait_for(lambda: engine.active_sequences == 0)
    assert metrics(generation_url)[1]["nv_inference_pending_request_count"][labels] == 0

    # The left stream lasts beyond its first event: the engine pauses after its second step.
    gate = StepGate.install(engine, monkeypatch, allow=2)
    body = {"text_input": "Copyright", "max_tokens": 200, "ignore_eos": True}
    with httpx.stream(
        "POST", f"{generation_url}/v2/models/{MODEL}/generate_stream", json=body
    ) as response:
        lines = response.iter_lines()  # kept: dropping the iterator would close the stream
        assert next(lines).startswith("data:")
        wait_for(lambda: gate.holding)
        running = metrics(generation_url)[1]
        assert running["nv_inference_pending_request_count"][labels] == 1
    wait_for(lambda: gate.cancels == 1)  # the server saw the client leave
    gate.open()
    wait_for(lambda: engine.active_sequences == 0)

    stats = model_stats(generation_url, MODEL)
    inference = stats["inference_stats"]
    assert inference["success"]["count"] == 3
    assert inference["fail"]["count"] == 1
    assert stats["inference_count"] == 3
    assert stats["execution_count"] == engine.steps
    # 4 prefills, at most 19 + 19 + 8 steps for the completed requests (the stream took all 8),
    # and far fewer than 200 for the one left
    assert 4 + 8 <= engine.steps < 4 + 19 + 19 + 8 + 100
    for key in ("queue", "compute_input", "compute_infer", "compute_output"):
        assert inference[key]["count"] == 3, key
    assert inference["compute_input"]["ns"] == inference["compute_output"]["ns"] == 0
    assert inference["compute_infer"]["ns"] > 0
    assert inference["queue"]["ns"] + inference["compute_infer"]["ns"] <= inference["success"]["ns"]
    assert stats["last_inference"] > 0
    batches = stats["batch_stats"]
    assert [b["batch_size"] for b in batches] == [1]
    assert batches[0]["compute_infer"]["count"] == engine.steps
    # every run's time is counted once for the model, and once for each sequence it advanced
    assert batches[0]["compute_infer"]["ns"] >= inference["compute_infer"]["ns"]

    text, samples = metrics(generation_url)
    assert f'nv_inference_request_success{{model="{MODEL}",version="1"}} 3.0' in text
    assert samples["nv_inference_request_failure"][labels] == 1
    assert samples["nv_inference_count"][labels] == 3
    assert samples["nv_inference_exec_count"][labels] == engine.steps
    assert samples["nv_inference_pending_request_count"][labels] == 0
    rejected = samples["maas_inference_rejected_total"]
    assert {k: v for k, v in rejected.items() if ("model", MODEL) in k} == {
        model_labels(MODEL, reason="cancelled"): 1
    }
    assert samples["maas_inference_request_duration_seconds_count"][labels] == 3


def test_openai_requests_count_per_sequence(
    generation_url: str, generation_service: GenerationService
) -> None:
    """A completion with ``n`` = 2 counts as 2 requests, a streamed chat completion as 1; their
    session runs all count."""
    model = "tiny_gpt"
    engine = generation_service.engine(model, None)
    wait_for(lambda: engine.active_sequences == 0)
    before, steps = model_stats(generation_url, model), engine.steps
    answer = httpx.post(
        f"{generation_url}/v1/completions",
        json={"model": model, "prompt": "Copyright", "max_tokens": 5, "n": 2},
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    with httpx.stream(
        "POST",
        f"{generation_url}/v1/chat/completions",
        json={
            "model": model,
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 4,
            "stream": True,
        },
        timeout=60,
    ) as response:
        assert response.status_code == 200
        assert "data: [DONE]" in list(response.iter_lines())
    wait_for(lambda: engine.active_sequences == 0)
    after = model_stats(generation_url, model)

    def delta(*path: str) -> int:
        old: Any = before
        new: Any = after
        for key in path:
            old, new = old[key], new[key]
        assert isinstance(new, int) and isinstance(old, int)
        return new - old

    assert delta("inference_stats", "success", "count") == 3
    assert delta("inference_stats", "fail", "count") == 0
    assert delta("inference_count") == 3
    assert delta("execution_count") == engine.steps - steps > 0
