"""The engine inside llama.cpp, checked against the numpy oracle of the tiny model."""

from __future__ import annotations

import itertools
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from helpers import ORACLE_SITES, assert_f32_close, eval_fresh, f32_tol, last_logits

import sadi_cpp
from sadi_cpp import BadInputError, SteeringError, UnsupportedModelError

PROMPT = [1] + [(7 * i + 11) % 250 + 3 for i in range(39)]  # 40 tokens, BOS first


def oracle_sites(tiny, tokens, edits=None):
    _, sites = tiny.forward(tokens, edits)
    return {s: np.stack([sites[(s, il)] for il in range(tiny.n_layer)], axis=1) for s in ORACLE_SITES}


def masks(tiny):
    """A mask over all three sites and several layers, and the oracle's per-value masks."""
    head = np.zeros((tiny.n_layer, tiny.n_head), bool)
    head[0, 1] = head[2, 3] = True
    neuron = np.zeros((tiny.n_layer, tiny.n_ff), bool)
    neuron[1, [3, 7, 20]] = True
    hidden = np.zeros((tiny.n_layer, tiny.n_embd), bool)
    hidden[2, [0, 5]] = hidden[0, 9] = True
    mask = {"head": head, "neuron": neuron, "hidden": hidden}
    values = {"head": np.repeat(head, tiny.head_dim, axis=1), "neuron": neuron, "hidden": hidden}
    return mask, values


def oracle_edits(values, rows, delta):
    return {(s, il): (rows, v[il], delta) for s, v in values.items() for il in range(v.shape[0]) if v[il].any()}


def test_recorded_values_match_oracle(tiny, make_llama):
    hook = sadi_cpp.attach(make_llama())
    with hook.recording(positions="all") as rec:
        hook.llm.eval(PROMPT)
    want = oracle_sites(tiny, PROMPT)
    assert rec.positions.tolist() == list(range(len(PROMPT)))
    for site in ORACLE_SITES:
        got = rec.values(site)
        assert got.shape == want[site].shape
        assert not np.isnan(got).any()
        assert_f32_close(got, want[site], what=site)
    heads = want["head"].reshape(len(PROMPT), tiny.n_layer, tiny.n_head, tiny.head_dim).mean(-1)
    assert_f32_close(rec.units("head"), heads)


def test_default_policy_records_the_last_prompt_token(tiny, make_llama):
    hook = sadi_cpp.attach(make_llama())
    with hook.recording(sites=("neuron",)) as rec:
        hook.llm.eval(PROMPT)
    assert rec.positions.tolist() == [len(PROMPT) - 1]
    want = oracle_sites(tiny, PROMPT)["neuron"][-1:]
    assert_f32_close(rec.values("neuron"), want)
    with pytest.raises(BadInputError):
        rec.values("head")


@pytest.mark.parametrize("policy,rows", [("last", [len(PROMPT) - 1]), ("all", list(range(len(PROMPT))))])
def test_steered_logits_match_oracle(tiny, make_llama, policy, rows):
    hook = sadi_cpp.attach(make_llama())
    mask, values = masks(tiny)
    plain = eval_fresh(hook.llm, PROMPT)
    with hook.steering(mask, delta=3.0, positions=policy):
        steered = eval_fresh(hook.llm, PROMPT)
    want, _ = tiny.forward(PROMPT, oracle_edits(values, rows, 3.0))
    assert_f32_close(steered, want[-1])
    assert np.abs(steered - plain).max() > 100 * f32_tol(plain)  # the edit is visible, the check can fail


def test_recording_sees_values_before_the_edit_at_its_node(tiny, make_llama):
    hook = sadi_cpp.attach(make_llama())
    mask, values = masks(tiny)
    rows = [len(PROMPT) - 1]
    with hook.steering(mask, delta=-0.5), hook.recording() as rec:
        hook.llm.eval(PROMPT)
    want = oracle_sites(tiny, PROMPT, oracle_edits(values, rows, -0.5))
    for site in ORACLE_SITES:
        assert_f32_close(rec.values(site)[0], want[site][-1])


def test_delta_zero_or_empty_mask_is_bit_identical_to_no_hook(tiny, make_llama):
    plain = eval_fresh(make_llama(), PROMPT)
    hook = sadi_cpp.attach(make_llama())
    mask, _ = masks(tiny)
    assert np.array_equal(eval_fresh(hook.llm, PROMPT), plain)
    with hook.steering(mask, delta=0.0):
        assert np.array_equal(eval_fresh(hook.llm, PROMPT), plain)
    empty = {s: np.zeros_like(m) for s, m in mask.items()}
    with hook.steering(empty, delta=5.0, positions="all"):
        assert np.array_equal(eval_fresh(hook.llm, PROMPT), plain)


@pytest.mark.parametrize("force_copy", [False, True])
def test_ubatch_splits_give_the_one_ubatch_result(tiny, make_llama, force_copy):
    mask, values = masks(tiny)
    results = []
    for n_batch, n_ubatch in [(256, 256), (16, 4), (32, 7)]:
        hook = sadi_cpp.attach(make_llama(n_batch=n_batch, n_ubatch=n_ubatch), force_copy=force_copy)
        with hook.steering(mask, delta=2.0, positions="all"), hook.recording(positions="all") as rec:
            hook.llm.eval(PROMPT)
        results.append((last_logits(hook.llm), rec.values("hidden"), rec.values("head")))
    want_logits, _ = tiny.forward(PROMPT, oracle_edits(values, range(len(PROMPT)), 2.0))
    for logits, hidden, head in results:
        assert_f32_close(logits, want_logits[-1])
        assert_f32_close(logits, results[0][0])
        assert_f32_close(hidden, results[0][1])
        assert_f32_close(head, results[0][2])


def test_last_prompt_token_steered_when_it_opens_a_new_batch(tiny, make_llama):
    """The last prompt token alone in the final n_batch chunk (41 tokens, n_batch 8)."""
    tokens = PROMPT + [42]
    hook = sadi_cpp.attach(make_llama(n_batch=8, n_ubatch=8))
    mask, values = masks(tiny)
    with hook.steering(mask, delta=1.5):
        got = eval_fresh(hook.llm, tokens)
    want, _ = tiny.forward(tokens, oracle_edits(values, [len(tokens) - 1], 1.5))
    assert_f32_close(got, want[-1])


def greedy_oracle(tiny, prompt, n_new, values, delta, policy):
    tokens = list(prompt)
    for _ in range(n_new):
        if policy == "last":
            rows = [len(prompt) - 1]
        elif policy == "last+generated":
            rows = list(range(len(prompt) - 1, len(tokens)))
        else:
            rows = list(range(len(tokens)))
        logits, _ = tiny.forward(tokens, oracle_edits(values, rows, delta))
        tokens.append(int(np.argmax(logits[-1])))
    return tokens[len(prompt):]


@pytest.mark.parametrize("policy", ["last", "last+generated", "all"])
def test_generation_follows_the_position_policy(tiny, make_llama, policy):
    hook = sadi_cpp.attach(make_llama())
    mask, values = masks(tiny)
    prompt = PROMPT[:12]
    with hook.steering(mask, delta=4.0, positions=policy):
        got = list(itertools.islice(hook.llm.generate(prompt, temp=0.0, top_k=1), 6))
    assert got == greedy_oracle(tiny, prompt, 6, values, 4.0, policy)


def test_policies_steer_different_tokens(tiny):
    """The generation test above could pass with a policy ignored; the oracle tells them apart here."""
    _, values = masks(tiny)
    prompt = PROMPT[:12]
    outs = {p: greedy_oracle(tiny, prompt, 6, values, 4.0, p) for p in ("last", "last+generated", "all")}
    outs["none"] = greedy_oracle(tiny, prompt, 6, values, 0.0, "last")
    assert len({tuple(v) for v in outs.values()}) >= 3


def test_leaving_steering_restores_unsteered_generation(tiny, make_llama):
    plain = sadi_cpp.attach(make_llama())
    want = plain.llm.create_completion(bytes(PROMPT[:12]).decode("latin-1"), max_tokens=6, temperature=0.0)
    hook = sadi_cpp.attach(make_llama())
    mask, _ = masks(tiny)
    text = bytes(PROMPT[:12]).decode("latin-1")
    with hook.steering(mask, delta=4.0, positions="all"):
        steered = hook.llm.create_completion(text, max_tokens=6, temperature=0.0)
    after = hook.llm.create_completion(text, max_tokens=6, temperature=0.0)
    assert after["choices"][0]["text"] == want["choices"][0]["text"]
    assert steered["choices"][0]["text"] != want["choices"][0]["text"]


def test_an_inner_steering_block_gives_back_the_outer_one(tiny, make_llama):
    hook = sadi_cpp.attach(make_llama())
    mask, _ = masks(tiny)
    plain = eval_fresh(hook.llm, PROMPT)
    with hook.steering(mask, delta=3.0, positions="all"):
        outer = eval_fresh(hook.llm, PROMPT)
        with hook.steering({"head": mask["head"]}, delta=-0.5):
            inner = eval_fresh(hook.llm, PROMPT)
        assert np.array_equal(eval_fresh(hook.llm, PROMPT), outer)  # the outer configuration is back
        assert hook.steers
    assert not hook.steers and np.array_equal(eval_fresh(hook.llm, PROMPT), plain)
    assert np.abs(outer - plain).max() > 100 * f32_tol(plain) and np.abs(inner - outer).max() > 100 * f32_tol(plain)


def test_force_copy_path_equals_host_path(tiny, make_llama):
    mask, _ = masks(tiny)
    out = []
    for force_copy in (False, True):
        hook = sadi_cpp.attach(make_llama(), force_copy=force_copy)
        assert hook.engine.force_copy is force_copy
        with hook.steering(mask, delta=2.5, positions="all"), hook.recording(positions="all") as rec:
            hook.llm.eval(PROMPT)
        out.append((last_logits(hook.llm), [rec.values(s) for s in ORACLE_SITES]))
    assert np.array_equal(out[0][0], out[1][0])
    for a, b in zip(out[0][1], out[1][1]):
        assert np.array_equal(a, b)


def test_streaming_accumulators(tiny, make_llama):
    hook = sadi_cpp.attach(make_llama())
    seqs = [PROMPT[:10], PROMPT[:17], PROMPT[5:30]]
    with hook.recording(sites=("hidden", "head"), capture=False) as rec:
        for i, seq in enumerate(seqs):
            rec.set_slot(i % 2)
            hook.llm.reset()
            hook.llm.eval(seq)
    want = [oracle_sites(tiny, s) for s in seqs]
    assert_f32_close(rec.sums("hidden", 0), want[0]["hidden"][-1] + want[2]["hidden"][-1])
    assert_f32_close(rec.sums("head", 1), want[1]["head"][-1])
    assert rec.counts("hidden", 0).tolist() == [2] * tiny.n_layer
    assert rec.counts("head", 1).tolist() == [1] * tiny.n_layer
    with pytest.raises(sadi_cpp.SadiError):
        rec.values("hidden")  # capture=False kept no rows


def test_two_models_in_one_process_keep_their_own_state(tiny, make_llama, tmp_path):
    from tiny_model import TinyLlama

    other = TinyLlama(seed=7)
    a = sadi_cpp.attach(make_llama())
    b = sadi_cpp.attach(make_llama(model_path=str(other.write(tmp_path / "other.gguf"))))
    mask, values = masks(tiny)
    with a.steering(mask, delta=3.0):
        got_a = eval_fresh(a.llm, PROMPT)
        got_b = eval_fresh(b.llm, PROMPT)
    want_a, _ = tiny.forward(PROMPT, oracle_edits(values, [len(PROMPT) - 1], 3.0))
    want_b, _ = other.forward(PROMPT)
    assert_f32_close(got_a, want_a[-1])
    assert_f32_close(got_b, want_b[-1])


@pytest.mark.parametrize("order", ["llama-first", "hook-first", "close-then-hook"])
def test_freeing_in_any_order_is_safe(tiny_path, order, tmp_path):
    script = textwrap.dedent(f"""
        import gc, numpy as np, sadi_cpp
        from llama_cpp import Llama
        llm = Llama(model_path={str(tiny_path)!r}, n_ctx=64, verbose=False)
        hook = sadi_cpp.attach(llm)
        m = np.zeros((3, 4), bool); m[1, 2] = True
        with hook.steering({{"head": m}}, delta=2.0):
            llm.eval([1, 5, 6, 7])
        if {order!r} == "llama-first":
            del llm; gc.collect(); hook.engine.set_mask(0, "head", 1, [2], [1.0]); del hook
        elif {order!r} == "hook-first":
            del hook; gc.collect(); llm.reset(); llm.eval([1, 5, 6]); del llm
        else:
            llm.close(); hook.detach(); hook.clear_steering(); del llm, hook
        gc.collect()
        print("clean exit")
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "clean exit" in res.stdout


def test_detach_gives_back_a_plain_context(tiny, make_llama):
    llm = make_llama()
    hook = sadi_cpp.attach(llm)
    with pytest.raises(sadi_cpp.SadiError):
        sadi_cpp.attach(llm)
    hook.detach()
    assert "eval" not in vars(llm) and llm._ctx is not hook._ctx
    want, _ = tiny.forward(PROMPT)
    assert_f32_close(eval_fresh(llm, PROMPT), want[-1])
    sadi_cpp.attach(llm)  # attachable again


def test_callback_error_is_raised_after_decode_and_the_context_recovers(tiny, make_llama):
    hook = sadi_cpp.attach(make_llama(n_ubatch=256))
    mask, _ = masks(tiny)
    with hook.steering(mask, delta=2.0, positions="all"):
        hook.engine.set_n_ubatch(8)  # wrong on purpose: the planned rows cannot match the graph
        with pytest.raises(SteeringError, match="rows|ubatch"):
            eval_fresh(hook.llm, PROMPT)
        hook.engine.set_n_ubatch(256)
    want, _ = tiny.forward(PROMPT)
    assert_f32_close(eval_fresh(hook.llm, PROMPT), want[-1])


def test_bad_masks_and_options_are_refused(tiny, make_llama):
    hook = sadi_cpp.attach(make_llama())
    with pytest.raises(BadInputError, match="shape"):
        hook.set_steering({"head": np.zeros((2, 4), bool)}, delta=1.0)
    with pytest.raises(BadInputError, match="unknown site"):
        hook.set_steering({"attention": np.zeros((3, 4), bool)}, delta=1.0)
    with pytest.raises(BadInputError, match="policy"):
        hook.set_steering({"head": np.zeros((3, 4), bool)}, delta=1.0, positions="first")
    with pytest.raises(BadInputError, match="finite"):
        hook.set_steering({"head": np.zeros((3, 4), bool)}, delta=float("nan"))
    with pytest.raises(BadInputError, match="0/1"):
        hook.set_steering({"head": np.full((3, 4), 2)}, delta=1.0)
    assert not hook.steers


def test_model_without_a_dense_ffn_is_refused_by_site(tiny, make_llama, tmp_path):
    """A mixture-of-experts FFN: no dense ffn_down input (neurons refused, naming it); its output
    is the experts' weighted sum, ffn_moe_out (hidden works: its values are checked by weight
    folding in test_folding.py)."""
    path = tiny.write(tmp_path / "tiny-moe.gguf", n_expert=2)
    hook = sadi_cpp.attach(make_llama(model_path=str(path)))
    assert hook.sites == ("head", "hidden", "expert") and hook.engine.site_node("hidden", 1) == "ffn_moe_out-1"
    with pytest.raises(UnsupportedModelError, match="ffn_down"):
        hook.set_steering({"neuron": np.ones((3, tiny.n_ff), bool)}, delta=1.0)
    with hook.recording(sites=("head", "hidden")) as rec:  # heads and the FFN output work
        hook.llm.eval(PROMPT[:5])
    assert rec.values("head").shape == (1, 3, tiny.n_head * tiny.head_dim)
    assert rec.values("hidden").shape == (1, 3, tiny.n_embd) and not np.isnan(rec.values("hidden")).any()


def test_load_refuses_a_file_that_is_not_gguf(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"not a model at all")
    with pytest.raises(BadInputError, match="not a GGUF"):
        sadi_cpp.load(str(bad))
    with pytest.raises(BadInputError, match="no such model"):
        sadi_cpp.load(str(tmp_path / "missing.gguf"))


def test_a_failed_attach_leaves_a_working_plain_llama(tiny, make_llama, monkeypatch):
    llm = make_llama()
    want = eval_fresh(llm, PROMPT)

    def broken(*args, **kwargs):
        raise RuntimeError("no context today")

    monkeypatch.setattr(sadi_cpp.llama.context, "HookedContext", broken)
    with pytest.raises(RuntimeError, match="no context today"):
        sadi_cpp.attach(llm)
    assert getattr(llm, "_sadi_hook", None) is None
    assert np.array_equal(eval_fresh(llm, PROMPT), want)
