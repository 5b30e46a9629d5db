"""The server's per-request sampler and stop-string hold-back, against hand-computed expectations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sadi_cpp.server.batcher import _held_back
from sadi_cpp.errors import BadInputError
from sadi_cpp.server.sampling import SamplingParams, log_softmax, next_token, penalize, top_logprobs

OFF = dict(top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.0)


def test_greedy_is_the_argmax_after_penalties():
    x = np.array([1.0, 3.0, 2.9, -1.0], np.float32)
    rng = np.random.default_rng(0)
    assert next_token(x, [], SamplingParams(temperature=0.0), rng) == 1
    # token 1 was seen: 3.0 / 1.1 = 2.727 < 2.9, so token 2 wins
    assert next_token(x, [1], SamplingParams(temperature=0.0, repeat_penalty=1.1), rng) == 2


def test_penalties_follow_their_formulas():
    x = np.array([2.0, -2.0, 1.0, 0.5], np.float32)
    p = SamplingParams(repeat_penalty=2.0, frequency_penalty=0.5, presence_penalty=0.25)
    got = penalize(x, [0, 1, 1, 3, 3, 3], p)
    # positive logits divided, negative multiplied, then count * frequency + presence subtracted
    want = [2.0 / 2 - 1 * 0.5 - 0.25, -2.0 * 2 - 2 * 0.5 - 0.25, 1.0, 0.5 / 2 - 3 * 0.5 - 0.25]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert penalize(x, [], p) is x  # nothing seen: untouched, no copy
    assert x[0] == 2.0  # the caller's logits are never changed


def test_top_k_top_p_and_min_p_cut_the_candidates():
    x = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    rng = np.random.default_rng(1)
    draws = lambda p: {next_token(x, [], p, rng) for _ in range(400)}  # noqa: E731
    assert draws(SamplingParams(temperature=1.0, **{**OFF, "top_k": 1})) == {0}
    assert draws(SamplingParams(temperature=1.0, **{**OFF, "top_p": 0.75})) == {0, 1}  # 0.5 + 0.3 reaches 0.75
    assert draws(SamplingParams(temperature=1.0, **{**OFF, "min_p": 0.4})) == {0, 1}  # >= 0.4 * 0.5
    assert draws(SamplingParams(temperature=1.0, **OFF)) == {0, 1, 2, 3}


def test_temperature_sampling_follows_the_softmax():
    x = np.array([0.0, 1.0, 2.0], np.float32)
    t = 0.7
    p = np.exp(x / t) / np.exp(x / t).sum()
    rng = np.random.default_rng(2)
    n = 20000
    counts = np.bincount([next_token(x, [], SamplingParams(temperature=t, **OFF), rng) for _ in range(n)], minlength=3)
    sigma = np.sqrt(n * p * (1 - p))
    assert np.all(np.abs(counts - n * p) < 5 * sigma), (counts, n * p)  # 5 standard deviations of a binomial


def test_same_seed_same_draws():
    x = np.random.default_rng(3).standard_normal(1000).astype(np.float32)
    p = SamplingParams(temperature=1.0)
    a = [next_token(x, [], p, np.random.default_rng(42)) for _ in range(5)]
    assert len(set(a)) == 1  # a fresh generator with the same seed draws the same token


@pytest.mark.parametrize("kw", [dict(temperature=-1), dict(top_p=1.5), dict(min_p=-0.1), dict(top_k=-2),
                                dict(frequency_penalty=3), dict(temperature=math.nan), dict(top_k=2.5)])
def test_bad_settings_are_refused(kw):
    with pytest.raises(BadInputError):
        SamplingParams(**kw)


def test_log_probabilities():
    x = np.array([1.0, 2.0, 3.0, 0.0], np.float32)
    lp = log_softmax(x)
    assert abs(np.exp(lp).sum() - 1) < 1e-12
    top = top_logprobs(lp, 2)
    assert [t for t, _ in top] == [2, 1] and top[0][1] == pytest.approx(lp[2])
    assert top_logprobs(lp, 0) == []


def test_text_that_could_start_a_stop_string_is_held_back():
    assert _held_back("Hello wor", ["world"]) == 3
    assert _held_back("Hello", ["\n\n", "###"]) == 0
    assert _held_back("Hello\n", ["\n\n"]) == 1
    assert _held_back("ab#", ["###", "#!"]) == 1
    assert _held_back("ab##", ["###", "#!"]) == 2
