"""The gate, checked against independent computations: its score equals the numpy formula on a
recording of the same prompt; a gate that does not fire leaves the logits bit-identical to no
steering; one that fires gives bit for bit the plain steered run; in a batched decode a gated
sequence equals it alone, and each sequence's decision is its own."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_f32_close, eval_fresh, f32_tol

import sadi_cpp
from sadi_cpp import BadInputError, Steering
from sadi_cpp.gate import Gate
from sadi_cpp.llama.batch import BatchRow

PROMPT = [1] + [(11 * i + 5) % 250 + 3 for i in range(23)]
OTHER = [1] + [(7 * i + 2) % 240 + 9 for i in range(17)]
GATE_LAYER = 0  # the tiny model has 3 layers: masks in layers 1 and 2 lie above the gate


def a_gate(hook, threshold, layer=GATE_LAYER, seed=0):
    rng = np.random.default_rng(seed)
    n = hook.shape.n_embd
    return Gate(layer, rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(np.float32) * 0.1, threshold)


def head_mask(tiny, hook, units):
    m = np.zeros((tiny.n_layer, hook.n_units("head")), bool)
    for layer, unit in units:
        m[layer, unit] = True
    return {"head": m}


def residual_at(hook, tokens, layer):
    with hook.recording(sites=("residual",), positions="last") as rec:
        hook.eval(tokens)
    return rec.values("residual")[0, layer]


def test_the_gate_score_equals_numpy_on_a_recording(tiny, make_llama):
    hook = sadi_cpp.attach(make_llama())
    for layer in (0, 1):
        gate = a_gate(hook, -1.0, layer)
        want = float(gate.score(residual_at(hook, PROMPT, layer)))
        with hook.steering(head_mask(tiny, hook, [(2, 1)]), 2.0, gate=gate):
            eval_fresh(hook.llm, PROMPT)
            got = hook.gate_result
        assert got is not None and got.fired
        # cosine of two f32 vectors computed in double from the same f32 row (the engine reads the
        # graph's f32 values, the recording copies them): only the summation order differs
        assert abs(got.score - want) <= 1e-12, (layer, got.score, want)
        assert abs(want) > 1e-3  # a real angle, not the degenerate 0


def test_closed_gate_is_bit_identical_to_no_steering_and_open_gate_to_plain_steering(tiny, make_llama):
    hook = sadi_cpp.attach(make_llama())
    mask = head_mask(tiny, hook, [(1, 0), (2, 3)])  # above the gate layer
    plain_llm = sadi_cpp.attach(make_llama())
    unsteered = eval_fresh(plain_llm.llm, PROMPT)
    with plain_llm.steering(mask, 3.0):
        steered = eval_fresh(plain_llm.llm, PROMPT)
    assert np.abs(steered - unsteered).max() > 100 * f32_tol(unsteered)  # the mask does steer
    score = float(a_gate(hook, 0.0).score(residual_at(hook, PROMPT, GATE_LAYER)))
    for threshold, want, fired in ((np.nextafter(np.float32(score), np.float32(2)), unsteered, False),
                                   (score - 0.05, steered, True)):
        with hook.steering(mask, 3.0, gate=a_gate(hook, threshold)):
            got = eval_fresh(hook.llm, PROMPT)
            assert hook.gate_result.fired is fired
        assert np.array_equal(got, want), fired


def test_units_at_or_below_the_gate_layer_are_not_steered_on_the_deciding_row(tiny, make_llama):
    hook = sadi_cpp.attach(make_llama())
    unsteered = eval_fresh(hook.llm, PROMPT)
    low = head_mask(tiny, hook, [(0, 1), (1, 2)])
    with hook.steering(low, 3.0, gate=a_gate(hook, -1.0, layer=1)):  # fires, but both layers are <= 1
        got = eval_fresh(hook.llm, PROMPT)
        assert hook.gate_result.fired
    assert np.array_equal(got, unsteered)


def test_generated_tokens_follow_the_prompts_decision(tiny, make_llama):
    hook = sadi_cpp.attach(make_llama())
    mask = head_mask(tiny, hook, [(0, 1), (2, 3)])
    ref = sadi_cpp.attach(make_llama())

    def continuation(h, **steer):
        with h.steering(mask, 3.0, positions="last+generated", **steer):
            h.llm.reset()
            h.eval(PROMPT)
            return h.continuation_logits(OTHER[1:6]), h.gate_result

    got, result = continuation(hook, gate=a_gate(hook, -1.0))
    assert result.fired
    # fired: the deciding row skips layer 0 (at the gate), generated rows are steered at every
    # layer. The reference: two ungated configurations in batched decodes of one sequence.
    above = {"head": mask["head"].copy()}
    above["head"][0] = False
    ref.configure("above", above, 3.0)
    ref.configure("all", mask, 3.0)
    ref.kv_clear()
    ref.bind(0, "above")
    ref.decode([BatchRow(t, p, (0,), p == len(PROMPT) - 1) for p, t in enumerate(PROMPT)], [len(PROMPT) - 1])
    ref.bind(0, "all")
    tail = OTHER[1:6]
    want = ref.decode([BatchRow(t, len(PROMPT) + i, (0,), True) for i, t in enumerate(tail)], list(range(len(tail))))
    assert_f32_close(got, want, what="generated, gate fired")
    closed, result = continuation(hook, gate=a_gate(hook, 1.0))
    assert not result.fired
    plain = sadi_cpp.attach(make_llama())
    plain.llm.reset()
    plain.eval(PROMPT)
    assert np.array_equal(closed, plain.continuation_logits(OTHER[1:6]))


def test_gated_sequences_in_a_batch_equal_them_alone(tiny, make_llama):
    hook = sadi_cpp.attach(make_llama())
    mask = head_mask(tiny, hook, [(1, 0), (2, 3)])
    open_gate, shut_gate = a_gate(hook, -1.0), a_gate(hook, 1.0)
    hook.configure("open", mask, 3.0)
    hook.configure("open", Steering(mask, 3.0, gate=open_gate))
    hook.configure("shut", Steering(mask, 3.0, gate=shut_gate))
    hook.configure("plain", mask, -0.5)
    rows, outputs = [], []
    for seq, name in enumerate(["open", "shut", "plain", None]):
        hook.bind(seq, name)
        tokens = PROMPT if seq != 3 else OTHER
        rows += [BatchRow(t, p, (seq,), p == len(tokens) - 1) for p, t in enumerate(tokens)]
        outputs.append(len(rows) - 1)
    hook.kv_clear()
    got = hook.decode(rows, outputs)
    assert hook.gate(0).fired and not hook.gate(1).fired and hook.gate(2) is None and hook.gate(3) is None
    alone = sadi_cpp.attach(make_llama())
    with alone.steering(Steering(mask, 3.0, gate=open_gate)):
        assert_f32_close(got[0], eval_fresh(alone.llm, PROMPT), what="open gate in a batch")
        assert abs(alone.gate_result.score - hook.gate(0).score) <= 1e-6  # other summation order in a batch
    unsteered = eval_fresh(alone.llm, PROMPT)
    assert_f32_close(got[1], unsteered, what="shut gate in a batch")
    with alone.steering(mask, -0.5):
        assert_f32_close(got[2], eval_fresh(alone.llm, PROMPT), what="plain in a batch")
    assert np.abs(got[0] - got[1]).max() > 100 * f32_tol(unsteered)
    # the shut sequence's later steered rows stay unsteered; binding again decides again
    nxt = hook.decode([BatchRow(5, len(PROMPT), (1,), True)], [0])
    hook.bind(1, "open")
    assert hook.gate(1) is None
    hook.seq_free(1)
    again = hook.decode([BatchRow(t, p, (1,), p == len(PROMPT) - 1) for p, t in enumerate(PROMPT)], [len(PROMPT) - 1])
    assert hook.gate(1).fired
    assert_f32_close(again[0], got[0], what="bound again: decided again")
    assert_f32_close(nxt[0], eval_fresh(alone.llm, PROMPT + [5]), what="a shut gate's later steered row")


def test_gates_refuse_what_they_cannot_do(tiny, make_llama):
    hook = sadi_cpp.attach(make_llama())
    mask = head_mask(tiny, hook, [(2, 3)])
    with pytest.raises(BadInputError, match="positions 'last' or 'last\\+generated'"):
        hook.set_steering(mask, 3.0, positions="all", gate=a_gate(hook, 0.0))
    with pytest.raises(BadInputError, match="leave at least one layer above it"):
        hook.set_steering(mask, 3.0, gate=a_gate(hook, 0.0, layer=tiny.n_layer - 1))
    wide = Gate(0, np.ones(hook.shape.n_embd + 1, np.float32), np.zeros(hook.shape.n_embd + 1, np.float32), 0.0)
    with pytest.raises(BadInputError, match="built for another model"):
        hook.set_steering(mask, 3.0, gate=wide)
    with pytest.raises(BadInputError, match="a number in \\[-1, 1\\]"):
        a_gate(hook, 1.5)
    with pytest.raises(BadInputError, match="all zeros"):
        Gate(0, np.zeros(4, np.float32), np.zeros(4, np.float32), 0.0)
    assert not hook.steers and hook.gate_result is None  # nothing was left half set
    hook.configure("g", Steering(mask, 3.0, gate=a_gate(hook, -1.0)))
    hook.bind(0, "g")
    with pytest.raises(BadInputError, match="decides at its first steered row"):
        hook.decode([BatchRow(t, p, (0,), True) for p, t in enumerate(PROMPT[:4])], [3])
