"""Many steering configurations in one decode: each sequence gets exactly its own configuration,
checked against the numpy oracle and against the same engine run one configuration at a time."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_f32_close, eval_fresh, f32_tol

import sadi_cpp
from sadi_cpp import BadInputError
from sadi_cpp.llama.batch import BatchRow

PROMPT = [1] + [(7 * i + 11) % 250 + 3 for i in range(29)]  # 30 tokens, BOS first
LAST = [len(PROMPT) - 1]
ALL = list(range(len(PROMPT)))


def configurations(tiny):
    """name -> (steering kwargs, rows the policy steers, oracle edits): different sites, deltas, K,
    policies and added vectors."""
    rng = np.random.default_rng(5)
    head = np.zeros((tiny.n_layer, tiny.n_head), bool)
    head[0, 1] = head[2, 3] = True
    neuron = np.zeros((tiny.n_layer, tiny.n_ff), bool)
    neuron[1, [3, 7, 20, 33]] = True
    hidden = np.zeros((tiny.n_layer, tiny.n_embd), bool)
    hidden[2, [0, 5]] = True
    residual = np.zeros((tiny.n_layer, tiny.n_embd), np.float32)
    residual[1] = rng.standard_normal(tiny.n_embd)
    head_values = np.repeat(head, tiny.head_dim, axis=1)
    zeros = np.zeros(tiny.n_embd, bool)
    return {
        "heads-all": (dict(mask={"head": head}, delta=3.0, positions="all"), ALL,
                      {("head", il): (ALL, head_values[il], 3.0) for il in (0, 2)}),
        "neurons-last": (dict(mask={"neuron": neuron}, delta=-0.5, positions="last"), LAST,
                         {("neuron", 1): (LAST, neuron[1], -0.5)}),
        "hidden+residual-all": (dict(mask={"hidden": hidden}, delta=2.0, positions="all", add={"residual": residual}), ALL,
                                {("hidden", 2): (ALL, hidden[2], 2.0), ("residual", 1): (ALL, zeros, 0.0, residual[1])}),
        "heads-last-generated": (dict(mask={"head": head}, delta=9.0, positions="last+generated"), LAST,
                                 {("head", il): (LAST, head_values[il], 9.0) for il in (0, 2)}),
    }


def steering_of(kwargs):
    """The steering part of a configuration (its position policy is the caller's: rows are flagged by hand)."""
    return {k: v for k, v in kwargs.items() if k != "positions"}


def batch_of(hook, names, steer_rows_of):
    """Every sequence holds the whole prompt; sequence k is bound to names[k] (None: unbound)."""
    rows, outputs = [], []
    for seq, name in enumerate(names):
        hook.bind(seq, name)
        for p, tok in enumerate(PROMPT):
            rows.append(BatchRow(tok, p, (seq,), p in steer_rows_of.get(name, ())))
        outputs.append(len(rows) - 1)
    return rows, outputs


@pytest.mark.parametrize("n_ubatch", [256, 7])
def test_each_sequence_gets_its_own_configuration(tiny, make_llama, n_ubatch):
    configs = configurations(tiny)
    hook = sadi_cpp.attach(make_llama(n_batch=256, n_ubatch=n_ubatch))
    for name, (kwargs, _, _) in configs.items():
        hook.configure(name, **steering_of(kwargs))
    names = list(configs) + [None]  # and one unbound sequence
    rows, outputs = batch_of(hook, names, {n: r for n, (_, r, _) in configs.items()})
    hook.kv_clear()
    got = hook.decode(rows, outputs)
    plain_want = tiny.forward(PROMPT)[0][-1]
    for k, name in enumerate(names):
        if name is None:
            assert_f32_close(got[k], plain_want, what="unbound")
            continue
        kwargs, _, edits = configs[name]
        want = tiny.forward(PROMPT, edits)[0][-1]
        assert_f32_close(got[k], want, what=name)
        assert np.abs(want - plain_want).max() > 100 * f32_tol(plain_want), name  # each configuration really changes the logits
        # the same engine, this configuration alone through the ordinary API
        alone = sadi_cpp.attach(make_llama())
        with alone.steering(**kwargs):
            assert_f32_close(got[k], eval_fresh(alone.llm, PROMPT), what=name)


def test_an_unbound_sequence_is_bit_identical_to_an_unhooked_context(tiny, make_llama):
    configs = configurations(tiny)
    hook = sadi_cpp.attach(make_llama())
    for name, (kwargs, _, _) in configs.items():
        hook.configure(name, **steering_of(kwargs))
    names = ["heads-all", None, "neurons-last"]
    rows, outputs = batch_of(hook, names, {n: r for n, (_, r, _) in configs.items()})
    hook.kv_clear()
    got = hook.decode(rows, outputs)

    # the same batch through llama.cpp without any callback
    from llama_cpp import llama_cpp
    from llama_cpp import _internals as internals

    plain = make_llama()
    params = type(plain.context_params).from_buffer_copy(plain.context_params)
    params.n_seq_max, params.kv_unified = hook.n_seq_max, True  # as the hooked context, less the callback
    ctx = internals.LlamaContext(model=plain._model, params=params, verbose=False)
    batch = internals.LlamaBatch(n_tokens=len(rows), embd=0, n_seq_max=1, verbose=False)
    b = batch.batch
    b.n_tokens = len(rows)
    for i, r in enumerate(rows):
        b.token[i], b.pos[i], b.n_seq_id[i], b.seq_id[i][0], b.logits[i] = r.token, r.pos, 1, r.seqs[0], int(i in outputs)
    assert llama_cpp.llama_decode(ctx.ctx, b) == 0
    want = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx.ctx, outputs[1]), shape=(plain.n_vocab(),)).copy()
    ctx.close()
    assert np.array_equal(got[1], want)
    assert not np.array_equal(got[0], want) and not np.array_equal(got[2], want)


def test_a_shared_prompt_serves_several_configurations(tiny, make_llama):
    """The prefix once, in every sequence (multi-sequence rows); the last token per configuration."""
    configs = configurations(tiny)
    hook = sadi_cpp.attach(make_llama())
    hook.configure("n", **steering_of(configs["neurons-last"][0]))
    hook.configure("h", **steering_of(configs["heads-last-generated"][0]))
    seqs = (0, 1, 2)
    hook.bind(1, "n")
    hook.bind(2, "h")
    rows = [BatchRow(t, p, seqs) for p, t in enumerate(PROMPT[:-1])]
    rows += [BatchRow(PROMPT[-1], len(PROMPT) - 1, (s,), True) for s in seqs]
    hook.kv_clear()
    got = hook.decode(rows, [len(rows) - 3, len(rows) - 2, len(rows) - 1])
    assert_f32_close(got[0], tiny.forward(PROMPT)[0][-1])
    assert_f32_close(got[1], tiny.forward(PROMPT, configs["neurons-last"][2])[0][-1])
    assert_f32_close(got[2], tiny.forward(PROMPT, configs["heads-last-generated"][2])[0][-1])


def test_configurations_are_named_replaced_and_removed(tiny, make_llama):
    hook = sadi_cpp.attach(make_llama())
    kwargs = configurations(tiny)["neurons-last"][0]
    hook.configure("a", **steering_of(kwargs))
    hook.configure("a", **steering_of(dict(kwargs, delta=0.0)))  # replaced, same engine slot
    assert hook.configs == ("a",) and hook.engine.n_configs == 2
    hook.bind(0, "a")
    rows = [BatchRow(t, p, (0,), True) for p, t in enumerate(PROMPT)]
    hook.kv_clear()
    assert_f32_close(hook.decode(rows, [len(rows) - 1])[0], tiny.forward(PROMPT)[0][-1])  # delta 0: unsteered
    hook.remove_config("a")
    with pytest.raises(BadInputError, match="no steering configuration named 'a'"):
        hook.bind(0, "a")
    with pytest.raises(BadInputError, match="delta"):
        hook.configure("b", mask=kwargs["mask"], delta=float("nan"))
    assert hook.configs == () and hook.engine.n_configs == 2  # the freed slot is reused, not grown
    with pytest.raises(BadInputError, match="sequence"):
        hook.decode([BatchRow(1, 0, (hook.n_seq_max,))])
    assert not hook.steers  # configurations leave the ordinary steering alone
