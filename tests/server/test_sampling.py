"""Token sampling: greedy, temperature, top-k, top-p, seeds; and generation parameters."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from maas_server.config import ConfigError, GenerationConfig, parse_config
from maas_server.errors import BadRequestError
from maas_server.generation import GenerationParams
from maas_server.sampling import SamplingParams, TokenSampler

LOGITS = np.log(np.array([0.5, 0.25, 0.15, 0.1], dtype=np.float32))


def draws(params: SamplingParams, count: int = 4000) -> np.ndarray[Any, Any]:
    sampler = TokenSampler(params)
    return np.array([sampler.choose(LOGITS) for _ in range(count)])


def test_greedy_is_the_arg_max() -> None:
    sampler = TokenSampler(SamplingParams(temperature=0.0, seed=3))
    assert sampler.greedy
    assert [sampler.choose(LOGITS) for _ in range(5)] == [0] * 5


def test_sampling_follows_the_distribution() -> None:
    frequencies = np.bincount(draws(SamplingParams(temperature=1.0, seed=0)), minlength=4) / 4000
    np.testing.assert_allclose(frequencies, [0.5, 0.25, 0.15, 0.1], atol=0.03)


def test_temperature_sharpens_and_flattens() -> None:
    sharp = np.bincount(draws(SamplingParams(temperature=0.2, seed=0)), minlength=4)[0]
    flat = np.bincount(draws(SamplingParams(temperature=5.0, seed=0)), minlength=4)[0]
    assert sharp > 3800  # p = 0.966
    assert flat < 1300  # p = 0.29


def test_top_k_and_top_p_cut_the_tail() -> None:
    assert set(draws(SamplingParams(temperature=1.0, top_k=2, seed=0))) == {0, 1}
    assert set(draws(SamplingParams(temperature=1.0, top_p=0.7, seed=0))) == {0, 1}
    assert set(draws(SamplingParams(temperature=1.0, top_p=0.76, seed=0))) == {0, 1, 2}
    assert set(draws(SamplingParams(temperature=1.0, top_k=1, seed=0))) == {0}


def test_seeds_reproduce() -> None:
    params = SamplingParams(temperature=1.0, top_p=0.9, seed=42)
    np.testing.assert_array_equal(draws(params, 100), draws(params, 100))
    assert not np.array_equal(draws(params, 100), draws(SamplingParams(1.0, 0, 0.9, 43), 100))


def test_generation_params_defaults_and_checks() -> None:
    defaults = GenerationConfig(max_tokens=9, temperature=0.5, stop=["END"])
    params = GenerationParams.parse({}, defaults)
    assert params.max_tokens == 9
    assert params.sampling == SamplingParams(temperature=0.5, top_k=0, top_p=1.0, seed=None)
    assert params.stop == ("END",)
    given = GenerationParams.parse(
        {"max_tokens": 3.0, "temperature": 0, "top_k": -1, "stop": "x", "seed": 2**63}, defaults
    )
    assert given.max_tokens == 3
    assert given.sampling.top_k == 0
    assert given.stop == ("x",)
    assert given.sampling.seed == 2**63
    for bad in (
        {"max_tokens": True},
        {"max_tokens": 2.5},
        {"temperature": float("nan")},
        {"temperature": "hot"},
        {"top_p": -0.1},
        {"seed": 2**64},
        {"stop": [1]},
    ):
        with pytest.raises(BadRequestError):
            GenerationParams.parse(bad, defaults)


def test_generation_config_keys() -> None:
    config = parse_config(
        {"task": "text-generation", "generation": {"max_tokens": 4, "eos_token_id": [1, 2]}}, "t"
    )
    assert config.generation is not None
    assert config.generation.eos_token_id == [1, 2]
    assert parse_config({}, "t").task == "inference"
    with pytest.raises(ConfigError, match="task"):
        parse_config({"generation": {"max_tokens": 4}}, "t")
    with pytest.raises(ConfigError, match="no_such_key"):
        parse_config({"task": "text-generation", "generation": {"no_such_key": 1}}, "t")
    with pytest.raises(ConfigError, match="task"):
        parse_config({"task": "translation"}, "t")
    with pytest.raises(ConfigError, match="tokenizer"):
        parse_config({"task": "text-generation", "generation": {"tokenizer": "../t.json"}}, "t")
    with pytest.raises(ConfigError, match="stop"):
        parse_config({"task": "text-generation", "generation": {"stop": [""]}}, "t")


def test_extreme_temperatures_and_broken_logits() -> None:
    assert TokenSampler(SamplingParams(temperature=1e-300, seed=0)).greedy
    cold = draws(SamplingParams(temperature=1e-4, seed=0), 50)
    assert set(cold) == {0}
    hot = draws(SamplingParams(temperature=1e300, seed=0), 400)
    assert set(hot) == {0, 1, 2, 3}
    sampler = TokenSampler(SamplingParams(temperature=1.0, top_p=0.5, seed=0))
    for broken in ([np.nan, 1.0, 2.0], [np.inf, 1.0, np.inf], [-np.inf, -np.inf, -np.inf]):
        assert sampler.choose(np.array(broken, dtype=np.float32)) in (0, 1, 2)
