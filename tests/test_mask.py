"""SADI steps 1-2 against the numpy oracle, and the top-K selection."""

import numpy as np
import pytest
from helpers import ORACLE_SITES, assert_f32_close, eval_fresh

import sadi_cpp
from sadi_cpp import BadInputError
from sadi_cpp.masks.build import build_mask
from sadi_cpp.masks.mask import SadiMask, select_top_k

PAIRS = [
    {"prompt": "The film was ", "positive": "good", "negative": "bad"},
    {"prompt": "Food: ", "positive": "tasty and warm", "negative": "cold"},
    {"positive": "I agree with you.", "negative": "I disagree."},
    {"prompt": "Answer: ", "positive": "yes", "negative": "no"},
]


def test_select_top_k_signed_and_abs():
    table = np.array([[0.5, -3.0, 0.1], [2.0, -0.2, 1.0]])
    assert select_top_k(table, 2).tolist() == [[False, False, False], [True, False, True]]
    assert select_top_k(table, 2, "abs").tolist() == [[False, True, False], [True, False, False]]
    with pytest.raises(BadInputError, match="outside 1..6"):
        select_top_k(table, 7)
    with pytest.raises(BadInputError, match="ranking"):
        select_top_k(table, 1, "max")


@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("site", ORACLE_SITES)
def test_mean_differences_match_the_oracle(tiny, make_llama, site, batched):
    hook = sadi_cpp.attach(make_llama())
    mask = build_mask(hook, PAIRS, site=site, top_k=3, batched=batched)
    diffs = []
    for pair in PAIRS:
        prompt = pair.get("prompt", "")
        vals = []
        for text in (prompt + pair["positive"], prompt + pair["negative"]):
            toks = hook.llm.tokenize(text.encode())
            _, sites = tiny.forward(toks)
            vals.append(np.stack([sites[(site, il)][-1] for il in range(tiny.n_layer)]))
        diffs.append(vals[0] - vals[1])
    want = np.mean(diffs, axis=0)
    if site == "head":
        want = want.reshape(tiny.n_layer, tiny.n_head, tiny.head_dim).mean(-1)
    assert mask.mean_diff.shape == want.shape
    assert_f32_close(mask.mean_diff, want)
    assert mask.mask.sum() == 3 and mask.n_pairs == len(PAIRS)
    # the top-3 mask holds the three largest oracle differences (up to ties within the tolerance)
    assert np.sort(want[mask.mask]).min() >= np.sort(want.ravel())[-3] - 2e-4


def test_with_top_k_reuses_the_table(tiny, make_llama):
    hook = sadi_cpp.attach(make_llama())
    m = build_mask(hook, PAIRS, site="neuron", top_k=5)
    m2 = m.with_top_k(12, "abs")
    assert m2.mask.sum() == 12 and m2.rank_by == "abs"
    assert np.array_equal(m2.mean_diff, m.mean_diff)
    assert m.mask.sum() == 5  # the original is untouched


def test_long_pairs_are_skipped_or_refused(tiny, make_llama):
    hook = sadi_cpp.attach(make_llama(n_ctx=64))
    long = [{"positive": "x" * 200, "negative": "y"}] + PAIRS
    from sadi_cpp.masks.build import BuildStats

    stats = BuildStats()
    m = build_mask(hook, long, site="hidden", top_k=2, stats=stats)
    assert m.n_pairs == len(PAIRS) and stats.skipped == {"longer than the context": 1}
    with pytest.raises(BadInputError, match="longer than the context"):
        build_mask(hook, long, site="hidden", top_k=2, strict=True)


def test_a_mask_steers_like_its_units(tiny, make_llama):
    hook = sadi_cpp.attach(make_llama())
    m = build_mask(hook, PAIRS, site="head", top_k=2)
    assert isinstance(m, SadiMask) and set(m.units()) == {"head"}
    toks = hook.llm.tokenize(b"Answer: yes")
    with hook.steering(m, delta=4.0):
        hook.llm.reset()
        hook.llm.eval(toks)
        a = np.array(hook.llm._ctx.get_logits_ith(-1)[: hook.llm.n_vocab()])
    with hook.steering(m.units(), delta=4.0):
        hook.llm.reset()
        hook.llm.eval(toks)
        b = np.array(hook.llm._ctx.get_logits_ith(-1)[: hook.llm.n_vocab()])
    assert np.array_equal(a, b)


def test_batched_statistics_equal_sequential_ones_across_groups(tiny, make_llama):
    """Small batches force many groups and the fallback for a pair too long for a group; every
    site, the residual stream included, must agree with one text per decode."""
    from sadi_cpp.masks.contrast import mean_differences

    pairs = PAIRS * 5 + [{"prompt": "x" * 40, "positive": "long one", "negative": "short"}]
    hook = sadi_cpp.attach(make_llama(n_batch=48, n_ubatch=48))
    sites = ("head", "neuron", "hidden", "residual")
    seen = []
    batched = mean_differences(hook, pairs, sites=sites, progress=seen.append)
    sequential = mean_differences(hook, pairs, sites=sites, batched=False)
    assert batched.n_used == sequential.n_used == len(pairs) and sum(seen) == len(pairs)
    for site in sites:
        assert_f32_close(batched.diffs[site], sequential.diffs[site], what=site)
    # the other sequences' cache entries are gone: a plain evaluation gives plain logits
    plain = make_llama()
    tokens = hook.llm.tokenize(b"still works")
    assert np.array_equal(eval_fresh(hook.llm, tokens), eval_fresh(plain, tokens))
