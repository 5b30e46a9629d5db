"""Added vectors (fixed-vector and CAA baselines) and the residual site, against the numpy oracle
and against llama.cpp's own control-vector code."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
from helpers import assert_f32_close, eval_fresh

import sadi_cpp
from sadi_cpp import BadInputError

PROMPT = [1] + [(5 * i + 17) % 250 + 3 for i in range(29)]


def test_recorded_residual_matches_oracle(tiny, make_llama):
    hook = sadi_cpp.attach(make_llama())
    with hook.recording(sites=("residual", "hidden"), positions="all") as rec:
        hook.llm.eval(PROMPT)
    _, sites = tiny.forward(PROMPT)
    want = np.stack([sites[("residual", il)] for il in range(tiny.n_layer)], axis=1)
    got = rec.values("residual")
    assert got.shape == want.shape and not np.isnan(got).any()
    assert_f32_close(got, want)


@pytest.mark.parametrize("policy,rows", [("last", [len(PROMPT) - 1]), ("all", list(range(len(PROMPT))))])
def test_added_vectors_match_oracle(tiny, make_llama, policy, rows):
    rng = np.random.default_rng(3)
    hook = sadi_cpp.attach(make_llama())
    add = {
        "head": np.zeros((tiny.n_layer, tiny.n_head * tiny.head_dim), np.float32),
        "neuron": np.zeros((tiny.n_layer, tiny.n_ff), np.float32),
        "residual": np.zeros((tiny.n_layer, tiny.n_embd), np.float32),
    }
    add["head"][1, 8:16] = rng.standard_normal(8)
    add["neuron"][2] = rng.standard_normal(tiny.n_ff)
    add["residual"][0] = rng.standard_normal(tiny.n_embd)
    # scaling and adding at the same node: scale first, then add
    hidden_mask = np.zeros((tiny.n_layer, tiny.n_embd), bool)
    hidden_mask[1, [2, 4]] = True
    add["hidden"] = np.zeros((tiny.n_layer, tiny.n_embd), np.float32)
    add["hidden"][1] = rng.standard_normal(tiny.n_embd)

    edits = {(s, il): (rows, np.zeros(a.shape[1], bool), 0.0, a[il]) for s, a in add.items() for il in range(tiny.n_layer) if a[il].any()}
    edits[("hidden", 1)] = (rows, hidden_mask[1], 3.0, add["hidden"][1])
    want = tiny.forward(PROMPT, edits)[0][-1]
    with hook.steering({"hidden": hidden_mask}, delta=3.0, positions=policy, add=add):
        got = eval_fresh(hook.llm, PROMPT)
    assert_f32_close(got, want)
    plain = tiny.forward(PROMPT)[0][-1]
    assert np.abs(got - plain).max() > 0.1  # the edit is large enough to be seen


def test_residual_add_at_every_token_equals_llamas_control_vector(tiny, tiny_path, make_llama):
    """llama.cpp adds a control vector to l_out of layers >= 1 at every token: the same edit."""
    rng = np.random.default_rng(9)
    direction = np.zeros((tiny.n_layer, tiny.n_embd), np.float32)
    direction[1] = rng.standard_normal(tiny.n_embd)
    direction[2] = 0.5 * rng.standard_normal(tiny.n_embd)

    plain = make_llama()
    data = np.ascontiguousarray(direction[1:].reshape(-1))  # llama.cpp's buffer starts at layer 1
    rc = sadi_cpp.llama.hook.llama_cpp.llama_set_adapter_cvec(
        plain._ctx.ctx, data.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), data.size, tiny.n_embd, 1, tiny.n_layer - 1)
    assert rc == 0
    cvec = eval_fresh(plain, PROMPT)

    hook = sadi_cpp.attach(make_llama())
    with hook.steering(add={"residual": direction}, positions="all"):
        ours = eval_fresh(hook.llm, PROMPT)
    base = eval_fresh(hook.llm, PROMPT)
    assert_f32_close(ours, cvec)
    assert np.abs(ours - base).max() > 0.1


def test_bad_vectors_are_refused(tiny, make_llama):
    hook = sadi_cpp.attach(make_llama())
    with pytest.raises(BadInputError, match="shape"):
        hook.set_steering(add={"residual": np.zeros((tiny.n_layer, 3))})
    with pytest.raises(BadInputError, match="NaN"):
        hook.set_steering(add={"hidden": np.full((tiny.n_layer, tiny.n_embd), np.nan)})
    with pytest.raises(BadInputError, match="unknown site"):
        hook.set_steering(add={"mlp": np.zeros((tiny.n_layer, tiny.n_embd))})
    assert not hook.steers
    base = eval_fresh(hook.llm, PROMPT)
    with hook.steering(add={"residual": np.zeros((tiny.n_layer, tiny.n_embd))}):
        assert not hook.steers  # all-zero vectors add nothing and cost nothing
        assert np.array_equal(eval_fresh(hook.llm, PROMPT), base)
