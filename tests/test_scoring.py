"""Multiple-choice scoring against the tiny model's numpy oracle."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_f32_close

import sadi_cpp
from sadi_cpp.evaluation.interventions import BASELINE, sadi
from sadi_cpp.steering import Steering
from sadi_cpp.data.mcdata import MCItem
from sadi_cpp.scoring.score import Scores, score_items

ITEMS = [
    MCItem("Item 1: the sky is", (" blue", " green", " loud!"), 0),
    MCItem("Q: 2+2=", (" 4", " five"), 1),
    MCItem("Once upon a time", (" there", " x"), 0),
]


def head_mask(tiny):
    m = np.zeros((tiny.n_layer, tiny.n_head), bool)
    m[0, 1] = m[2, 3] = True
    return m


def oracle_scores(tiny, llm, item, mask=None, delta=0.0, all_rows=False):
    prompt = llm.tokenize(item.prompt.encode())
    out = []
    for choice in item.choices:
        full = llm.tokenize((item.prompt + choice).encode())
        assert full[: len(prompt)] == prompt
        cont = full[len(prompt):]
        edits = None
        if mask is not None:
            rows = list(range(len(full))) if all_rows else [len(prompt) - 1]
            values = np.repeat(mask, tiny.head_dim, axis=1)
            edits = {("head", il): (rows, values[il], delta) for il in range(tiny.n_layer) if values[il].any()}
        logits = tiny.forward(full, edits)[0]
        lp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(-1, keepdims=True)
        out.append(sum(lp[len(prompt) - 1 + k, t] for k, t in enumerate(cont)))
    return np.array(out)


@pytest.mark.parametrize("positions", ["last", "all"])
def test_choice_logprobs_match_oracle(tiny, make_llama, positions):
    hook = sadi_cpp.attach(make_llama())
    mask = head_mask(tiny)
    scores = score_items(hook, ITEMS, [BASELINE, sadi({"head": mask}, 4.0)], positions=positions)
    for i, item in enumerate(ITEMS):
        base = oracle_scores(tiny, hook.llm, item)
        steered = oracle_scores(tiny, hook.llm, item, mask, 4.0, all_rows=positions == "all")
        n = len(item.choices)
        assert_f32_close(scores.logprob[0, i, :n], base, what=item.prompt)
        assert_f32_close(scores.logprob[1, i, :n], steered, what=item.prompt)
        assert np.abs(steered - base).max() > 0.05  # the steering is visible
    assert np.isnan(scores.logprob[:, 1, 2]).all()  # item 1 has two choices
    p = len(hook.llm.tokenize(ITEMS[0].prompt.encode()))
    want = [len(hook.llm.tokenize((ITEMS[0].prompt + c).encode())) - p for c in ITEMS[0].choices]
    assert scores.n_tokens[0].tolist() == want and min(want) > 1  # multi-token continuations are covered


def test_delta_zero_is_the_baseline_bit_for_bit_and_order_does_not_matter(tiny, make_llama):
    """The reference path: one configuration at a time, every one seeing the same decode split."""
    hook = sadi_cpp.attach(make_llama())
    mask = head_mask(tiny)
    configs = [BASELINE, sadi({"head": mask}, 0.0), sadi({"head": mask}, 3.0), Steering(name="empty")]
    scores = score_items(hook, ITEMS, configs, batched=False)
    assert np.array_equal(scores.logprob[0], scores.logprob[1], equal_nan=True)
    assert np.array_equal(scores.logprob[0], scores.logprob[3], equal_nan=True)
    backwards = score_items(hook, ITEMS[::-1], configs[::-1], batched=False)
    assert np.array_equal(backwards.logprob[::-1, ::-1], scores.logprob, equal_nan=True)
    assert not hook.steers  # scoring leaves the hook unsteered


@pytest.mark.parametrize("positions", ["last", "last+generated", "all"])
def test_batched_scoring_equals_one_configuration_at_a_time(tiny, make_llama, positions):
    """Many configurations and items per decode. Rows of one decode are not bit-identical to the
    same rows elsewhere in it (llama.cpp sums attention over the cache's cells in SIMD lanes, and a
    sequence's cells sit at other offsets), so the comparison is within f32 rounding."""
    hook = sadi_cpp.attach(make_llama())
    mask = head_mask(tiny)
    neurons = np.zeros((tiny.n_layer, tiny.n_ff), bool)
    neurons[1, [2, 9]] = True
    configs = [BASELINE, sadi({"head": mask}, 0.0), sadi({"head": mask}, 3.0), sadi({"neuron": neurons}, -0.7),
               Steering(name="empty")]
    one_at_a_time = score_items(hook, ITEMS, configs, positions=positions, batched=False)
    seen = []
    batched = score_items(hook, ITEMS, configs, positions=positions, progress=seen.append)
    assert sum(seen) == len(ITEMS)
    assert_f32_close(batched.logprob, one_at_a_time.logprob)
    assert_f32_close(batched.logprob[1], batched.logprob[0])  # delta 0: the baseline, to rounding
    assert np.nanmax(np.abs(batched.logprob[2] - batched.logprob[0])) > 0.01  # the steered ones really differ
    backwards = score_items(hook, ITEMS[::-1], configs[::-1], positions=positions)
    assert_f32_close(backwards.logprob[::-1, ::-1], batched.logprob)
    assert not hook.steers and hook.configs == ()  # its configurations are gone again


def test_batched_scoring_splits_decodes_when_the_budget_is_small(tiny, make_llama):
    """Few sequences and a small batch: items and configurations spread over many decodes."""
    small = sadi_cpp.attach(make_llama(n_batch=64, n_ubatch=8, n_ctx=64))
    assert small.n_seq_max == 8  # at most two configurations of a three-choice item per decode
    configs = [BASELINE] + [sadi({"head": head_mask(tiny)}, d) for d in (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0)]
    sizes = []
    decode = small.decode
    small.decode = lambda rows, logits=(): sizes.append(len(rows)) or decode(rows, logits)
    got = score_items(small, ITEMS, configs)
    assert len(sizes) > len(ITEMS) and max(sizes) <= 64  # split, within the budget
    want = score_items(sadi_cpp.attach(make_llama()), ITEMS, configs, batched=False)
    assert_f32_close(got.logprob, want.logprob)


def test_predictions_sum_and_per_token():
    # Hand-made scores where the two rankings disagree: item 0's choice 0 wins by its sum
    # (-3 > -4) and choice 1 by its mean per token (-4/4 = -1 > -3/1); item 1 has a padded third
    # slot (NaN) that must never win, and ties nowhere.
    scores = Scores(["only"], np.array([[[-3.0, -4.0, np.nan], [-2.0, -1.0, np.nan]]]),
                    n_tokens=np.array([[1.0, 4.0, 1.0], [1.0, 1.0, 1.0]]), labels=np.array([1, 1]))
    assert scores.predictions().tolist() == [[0, 1]]
    assert scores.predictions(normalize=True).tolist() == [[1, 1]]
    assert scores.correct().tolist() == [[False, True]]
    assert scores.correct(normalize=True).tolist() == [[True, True]]


def test_evaluate_compares_on_the_same_items(tiny, make_llama, tmp_path):
    import json

    from sadi_cpp.evaluation.evaluate import evaluate

    hook = sadi_cpp.attach(make_llama())
    path = tmp_path / "mc.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": it.prompt, "choices": list(it.choices), "label": it.label}) for it in ITEMS) + "\n")
    zero = evaluate(hook, path, sadi({"head": head_mask(tiny)}, 0.0))
    assert zero.acc == zero.base_acc and zero.diff == 0 and zero.n == 3
    strong = evaluate(hook, ITEMS, sadi({"head": head_mask(tiny)}, 4.0))
    scores = score_items(hook, ITEMS, [BASELINE, sadi({"head": head_mask(tiny)}, 4.0)])
    assert strong.base_acc == scores.correct()[0].mean() and strong.acc == scores.correct()[1].mean()
