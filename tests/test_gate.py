"""The gate, checked against independent computations: its score equals the numpy formula on a
recording of the same prompt; a gate that does not fire leaves the logits bit-identical to no
steering; one that fires gives bit for bit the plain steered run; in a batched decode a gated
sequence equals it alone, and each sequence's decision is its own."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import F32_EPS, ORACLE_ULPS, assert_f32_close, eval_fresh, f32_tol

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
        # the residual rows of a batch and of a lone decode differ by f32 rounding (another grouping of
        # rows: ORACLE_ULPS eps relative, helpers.py); a cosine of such rows moves by a few times that
        assert abs(alone.gate_result.score - hook.gate(0).score) <= 4 * ORACLE_ULPS * F32_EPS
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


def gate_pairs(tmp_path, name="gate_pairs.jsonl", n=12, offset=0):
    """Texts that should fire (they end in a run of 'z') and texts that should not (a run of 'a')."""
    import json

    path = tmp_path / name
    path.write_text("".join(json.dumps({"positive": f"item {i + offset} " + "z" * (3 + i % 4),
                                        "negative": f"item {i + offset} " + "a" * (3 + i % 4)}) + "\n" for i in range(n)))
    return path


def test_a_gate_file_round_trips_and_is_refused_where_it_does_not_belong(tiny_path, tmp_path, make_llama):
    from helpers import bad, runner

    from sadi_cpp.cli import app
    from sadi_cpp.masks.gate_file import load_gate, save_gate
    from sadi_cpp.masks.fingerprint import hook_fingerprint
    from sadi_cpp.masks.mask import SadiMask

    hook = sadi_cpp.attach(make_llama())
    gate = Gate(1, np.arange(hook.shape.n_embd, dtype=np.float32) - 3, np.ones(hook.shape.n_embd, np.float32), 0.123456789,
                model=hook_fingerprint(hook), n_pairs=7, pairs_sha256="ef" * 32, tool_version="t", tuned='{"on": "dev"}')
    path = save_gate(gate, tmp_path / "cond.sadi.gguf")
    back = load_gate(path)
    assert back.name == "cond" and back.layer == 1 and back.threshold == float(np.float32(0.123456789))
    assert np.array_equal(back.direction, gate.direction) and np.array_equal(back.center, gate.center)
    assert (back.n_pairs, back.pairs_sha256, back.tuned, back.model) == (7, "ef" * 32, '{"on": "dev"}', gate.model)
    with pytest.raises(BadInputError, match="a sadi-cpp gate, not a mask \\(give it with --gate\\)"):
        SadiMask.load(path)
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0x40  # a bit of the center tensor
    damaged = tmp_path / "damaged.sadi.gguf"
    damaged.write_bytes(bytes(raw))
    with pytest.raises(BadInputError, match="does not match its checksum"):
        load_gate(damaged)
    bad(["generate", "Hi", "-m", str(tiny_path), "--mask", str(path)], "a sadi-cpp gate, not a mask")
    bad(["inspect", str(tiny_path)], "a GGUF model", "not a sadi-cpp mask")
    shown = runner.invoke(app, ["inspect", str(path)])
    assert shown.exit_code == 0 and "kind: gate" in shown.stdout and "layer: 1" in shown.stdout, shown.output


def test_build_gate_separates_held_out_texts_and_generate_and_eval_use_it(tiny_path, tmp_path):
    import json

    from helpers import bad, runner
    from sadi_cpp.cli import app
    from sadi_cpp.masks.gate_file import load_gate

    pairs, dev, test = gate_pairs(tmp_path), gate_pairs(tmp_path, "dev.jsonl", 8, 100), gate_pairs(tmp_path, "test.jsonl", 8, 200)
    out = tmp_path / "z.gate.sadi.gguf"
    res = runner.invoke(app, ["build-gate", str(pairs), str(tiny_path), "--test", str(test), "-o", str(out), "-q", "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["layer"] in range(2) and len(report["layer_auc"]) == 2 and report["threshold"]["on"] == "pairs (held-out halves)"
    assert report["test"]["auc"] >= 0.9 and report["test"]["recall"] >= 0.75, report["test"]  # the letters are easy to tell apart
    tuned = runner.invoke(app, ["tune-gate", str(out), str(dev), "-m", str(tiny_path), "-q", "--json"])
    assert tuned.exit_code == 0, tuned.output
    chosen = json.loads(tuned.stdout)["threshold"]
    gate = load_gate(out)
    assert chosen["on"] == "dev" and gate.threshold == chosen["threshold"] and json.loads(gate.tuned)["on"] == "dev"
    shown = runner.invoke(app, ["inspect", str(out)])
    assert shown.exit_code == 0 and "chosen: threshold" in shown.stdout and "on dev" in shown.stdout, shown.output
    mask = tmp_path / "m.sadi.gguf"
    assert runner.invoke(app, ["build-mask", str(pairs), str(tiny_path), "--site", "neuron", "-o", str(mask), "-q"]).exit_code == 0
    gen = runner.invoke(app, ["generate", "item 5 zzzz", "-m", str(tiny_path), "-n", "4", "--json", "--mask", str(mask),
                              "--gate", str(out)])
    assert gen.exit_code == 0, gen.output
    g = json.loads(gen.stdout)["gate"]
    assert g["fired"] is True and g["score"] >= g["threshold"], g
    bad(["generate", "Hi", "-m", str(tiny_path), "--mask", str(mask), "--gate", str(out), "--positions", "all"],
        "--positions", "a gate decides")
    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps({"prompt": f"item {i} " + ("z" if i % 2 else "a") * 4, "choices": [" b", " c"],
                                         "label": i % 2}) + "\n" for i in range(10)))
    ev = runner.invoke(app, ["eval", str(items), "-m", str(tiny_path), "--mask", str(mask), "--gate", str(out), "-q", "--json"])
    assert ev.exit_code == 0, ev.output
    assert json.loads(ev.stdout)["gate_fired"] == 5  # the z items


@pytest.mark.parametrize("positions", ["last", "last+generated"])
def test_gated_scoring_batched_equals_sequential(tiny, make_llama, positions):
    from sadi_cpp.data.mcdata import MCItem
    from sadi_cpp.scoring.score import score_items

    hook = sadi_cpp.attach(make_llama())
    items = [MCItem(f"item {i} " + "xy" * (i % 3 + 1), [" p", " qq r"], i % 2, f"item {i}") for i in range(8)]
    prompts = [hook.tokenize(it.prompt) for it in items]
    gate = a_gate(hook, 0.0)
    scores = np.array([float(gate.score(residual_at(hook, p, GATE_LAYER))) for p in prompts])
    gate = a_gate(hook, float(np.median(scores)))  # fires on about half
    configs = [Steering(), Steering(head_mask(tiny, hook, [(1, 0), (2, 3)]), 3.0, gate=gate), Steering(head_mask(tiny, hook, [(2, 1)]), -0.5)]
    batched = score_items(hook, items, configs, positions=positions, batched=True)
    sequential = score_items(hook, items, configs, positions=positions, batched=False)
    want = (scores >= gate.threshold).astype(float)
    assert 0 < want.sum() < len(items)
    assert np.array_equal(batched.fired[1], want) and np.array_equal(sequential.fired[1], want)
    assert np.isnan(batched.fired[0]).all() and np.isnan(batched.fired[2]).all()
    assert_f32_close(batched.logprob, sequential.logprob, what=f"gated scoring, {positions}")
    # unfired items score as unsteered (other rows of the same decode: f32 rounding apart), fired ones not
    assert_f32_close(batched.logprob[1][want == 0], batched.logprob[0][want == 0], what="closed gate")
    assert np.abs(batched.logprob[1][want == 1] - batched.logprob[0][want == 1]).max() > 1e-3
