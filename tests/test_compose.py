"""Per-unit strengths and composed steering, checked against the weight-folding oracle: steering
unit u of a layer by (1 + delta_u) at every position equals scaling the weights that read u by
(1 + delta_u) (test_folding.py); two masks' strengths add where they select the same unit."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from helpers import assert_f32_close, eval_fresh, f32_tol

import sadi_cpp
from sadi_cpp import BadInputError, Steering
from sadi_cpp.llama.batch import BatchRow

PROMPT = [1] + [(11 * i + 5) % 250 + 3 for i in range(23)]


def folded(tiny, site, factors):
    """A copy of the tiny model with the weights that read each steered unit scaled by its own
    factor; ``factors``: {(layer, unit): factor}."""
    t = copy.deepcopy(tiny)
    for (layer, unit), factor in factors.items():
        p = f"blk.{layer}."
        if site == "head":
            t.w[p + "attn_output.weight"][:, unit * t.head_dim:(unit + 1) * t.head_dim] *= factor
        elif site == "neuron":
            t.w[p + "ffn_down.weight"][:, unit] *= factor
        else:
            t.w[p + "ffn_down.weight"][unit, :] *= factor
    return t


def mask_of(tiny, hook, site, units):
    m = np.zeros((tiny.n_layer, hook.n_units(site)), bool)
    for layer, unit in units:
        m[layer, unit] = True
    return m


@pytest.mark.parametrize("site, units", [("head", [(0, 1), (0, 2), (2, 3)]), ("neuron", [(1, 5), (1, 6), (2, 40)]),
                                         ("hidden", [(1, 0), (1, 9), (2, 31)])])
def test_per_unit_strengths_equal_their_folded_weights(tiny, tiny_path, make_llama, tmp_path, site, units):
    hook = sadi_cpp.attach(make_llama())
    mask = mask_of(tiny, hook, site, units)
    weights = np.zeros(mask.shape, np.float32)
    for k, (layer, unit) in enumerate(units):
        weights[layer, unit] = [1.0, -0.25, 0.5][k]  # adjacent units of other strengths stay apart in the engine
    steering = Steering({site: mask}, 2.0, weights={site: weights})
    with hook.steering(steering, positions="all"):
        steered = eval_fresh(hook.llm, PROMPT)
    factors = {(layer, unit): 1 + 2.0 * weights[layer, unit] for layer, unit in units}
    want = eval_fresh(make_llama(model_path=str(folded(tiny, site, factors).write(tmp_path / "f.gguf"))), PROMPT)
    assert_f32_close(steered, want, what=site)
    # the check can fail: one strength for all (the plain mask) folds differently
    same = {u: 3.0 for u in units}
    other = eval_fresh(make_llama(model_path=str(folded(tiny, site, same).write(tmp_path / "same.gguf"))), PROMPT)
    assert np.abs(other - steered).max() > 100 * f32_tol(want)


def test_overlapping_masks_add_their_strengths(tiny, make_llama, tmp_path):
    hook = sadi_cpp.attach(make_llama())
    a = mask_of(tiny, hook, "neuron", [(1, 5), (1, 6), (2, 7)])
    b = mask_of(tiny, hook, "neuron", [(1, 6), (2, 7), (2, 8)])
    composed = Steering.compose([({"neuron": a}, 2.0), ({"neuron": b}, -0.5)])
    assert composed.strengths["neuron"][1, 6] == 1.5 and composed.strengths["neuron"][2, 8] == -0.5
    with hook.steering(composed, positions="all"):
        got = eval_fresh(hook.llm, PROMPT)
    summed = np.zeros(a.shape, np.float32)
    summed[a] += 2.0
    summed[b] += -0.5
    with hook.steering(Steering({"neuron": a | b}, 1.0, weights={"neuron": summed}), positions="all"):
        one = eval_fresh(hook.llm, PROMPT)
    assert np.array_equal(got, one)  # the same strengths per unit: the same engine configuration, bit for bit
    factors = {(1, 5): 3.0, (1, 6): 2.5, (2, 7): 2.5, (2, 8): 0.5}
    want = eval_fresh(make_llama(model_path=str(folded(tiny, "neuron", factors).write(tmp_path / "f.gguf"))), PROMPT)
    assert_f32_close(got, want, what="composed")
    # hook.steering takes the list of (mask, delta) pairs directly, on any mix of sites
    heads = mask_of(tiny, hook, "head", [(0, 1)])
    with hook.steering([({"neuron": a}, 2.0), ({"neuron": b}, -0.5), ({"head": heads}, 0.0)], positions="all"):
        assert np.array_equal(eval_fresh(hook.llm, PROMPT), got)


def test_a_composed_configuration_in_a_batched_decode_equals_it_alone(tiny, make_llama):
    hook = sadi_cpp.attach(make_llama())
    a = mask_of(tiny, hook, "head", [(0, 1), (2, 3)])
    b = mask_of(tiny, hook, "hidden", [(1, 0), (1, 9)])
    composed = Steering.compose([({"head": a}, 3.0), ({"hidden": b}, -0.5)])
    hook.configure("composed", composed)
    hook.configure("other", {"head": a}, -0.9)
    rows, outputs = [], []
    for seq, name in enumerate(["composed", "other", None]):
        hook.bind(seq, name)
        for p, tok in enumerate(PROMPT):
            rows.append(BatchRow(tok, p, (seq,), True))
        outputs.append(len(rows) - 1)
    hook.kv_clear()
    got = hook.decode(rows, outputs)
    alone = sadi_cpp.attach(make_llama())
    with alone.steering(composed, positions="all"):
        want = eval_fresh(alone.llm, PROMPT)
    assert_f32_close(got[0], want, what="composed in a batch")
    assert np.abs(got[0] - got[2]).max() > 100 * f32_tol(want)  # and it does steer


def test_bad_compositions_are_refused_in_words():
    m = np.zeros((3, 4), bool)
    m[0, 1] = True
    with pytest.raises(BadInputError, match="part 2 of a composition"):
        Steering.compose([({"head": m}, 1.0), "nope"])
    with pytest.raises(BadInputError, match="strengths stay within"):
        Steering.compose([({"head": m}, 9000.0), ({"head": m}, 9000.0)])
    with pytest.raises(BadInputError, match="weights must be finite and of the mask's shape"):
        Steering({"head": m}, 1.0, weights={"head": np.ones((3, 5))})
    with pytest.raises(BadInputError, match="needs at least one part"):
        Steering.compose([])
    assert not Steering.compose([({"head": m}, 2.0), ({"head": m}, -2.0)]).steers  # opposite strengths cancel


def test_generate_and_eval_take_several_masks(tiny_path, tmp_path):
    import json

    from helpers import bad, runner
    from sadi_cpp.cli import app

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"Item {i}: ", "positive": p, "negative": n}) + "\n"
                             for i, (p, n) in enumerate([("good", "bad"), ("yes", "no"), ("warm", "cold")] * 3)))
    masks = []
    for site in ("head", "neuron"):
        out = tmp_path / f"{site}.sadi.gguf"
        assert runner.invoke(app, ["build-mask", str(pairs), str(tiny_path), "--site", site, "-o", str(out), "-q"]).exit_code == 0
        masks.append(str(out))
    shown = runner.invoke(app, ["inspect", masks[0], masks[1], masks[0], "--json"])
    assert shown.exit_code == 0, shown.output
    composition = json.loads(shown.stdout)["composition"]
    # build-mask's default K: 5 heads, 100 neurons; the head mask given twice shares all its 5 units with itself
    assert composition["n_units"] == 5 + 100
    assert len(composition["shared_units"]) == 5 and {u["site"] for u in composition["shared_units"]} == {"head"}
    args = ["generate", "Hello", "-m", str(tiny_path), "-n", "6", "--json", "--mask", masks[0], "--delta", "4",
            "--mask", masks[1], "--delta", "-2"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert [(m["site"], m["delta"]) for m in report["masks"]] == [("head", 4.0), ("neuron", -2.0)]
    weighted = runner.invoke(app, args + ["--weighting", "mean-diff"])
    assert weighted.exit_code == 0 and json.loads(weighted.stdout)["weighting"] == "mean-diff", weighted.output
    bad(["generate", "Hello", "-m", str(tiny_path), "--mask", masks[0], "--mask", masks[1], "--delta", "4"], "one --delta per --mask")
    bad(["generate", "Hello", "-m", str(tiny_path), "--mask", masks[0], "--weighting", "loud"], "--weighting", "unknown weighting")
    dev = tmp_path / "dev.jsonl"
    dev.write_text("".join(json.dumps({"prompt": f"Q{i}: ", "choices": [" a", " b"], "label": i % 2}) + "\n" for i in range(6)))
    res = runner.invoke(app, ["eval", str(dev), "-m", str(tiny_path), "--mask", masks[0], "--mask", masks[1], "-q", "--json"])
    assert res.exit_code == 0, res.output
    assert len(json.loads(res.stdout)["masks"]) == 2
    bad(["eval", str(dev), "-m", str(tiny_path), "--mask", masks[0], "--mask", masks[1], "--method", "fixed"], "takes one mask")


def test_tune_composes_every_cell_and_gates_it(tiny_path, tmp_path):
    """tune --with-mask: each cell is the tuned mask composed with the given one, and the baseline
    is the given one alone (checked against eval of it); --gate gates every cell."""
    import json

    from helpers import bad, runner
    from sadi_cpp.cli import app

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"Item {i}: ", "positive": p, "negative": n}) + "\n"
                             for i, (p, n) in enumerate([("good", "bad"), ("yes", "no"), ("warm", "cold")] * 3)))
    other = tmp_path / "other.sadi.gguf"
    assert runner.invoke(app, ["build-mask", str(pairs), str(tiny_path), "--site", "neuron", "-o", str(other), "-q"]).exit_code == 0
    dev = tmp_path / "dev.jsonl"
    dev.write_text("".join(json.dumps({"prompt": f"Q{i} {'xy' * (i % 4)}: ", "choices": [" a", " bb"], "label": i % 2}) + "\n"
                           for i in range(12)))
    args = ["tune", str(pairs), str(dev), "-m", str(tiny_path), "--k-grid", "1,3", "--delta-grid", "2,-0.5", "-q", "--json",
            "-o", str(tmp_path / "tuned.sadi.gguf")]
    res = runner.invoke(app, args + ["--with-mask", str(other), "--with-delta", "-3"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["composed_with"][0]["delta"] == -3.0
    alone = runner.invoke(app, ["eval", str(dev), "-m", str(tiny_path), "--mask", str(other), "--delta", "-3", "-q", "--json"])
    assert alone.exit_code == 0, alone.output
    assert report["baseline"] == json.loads(alone.stdout)["acc"]  # the baseline is the composed-with steering alone
    gate = tmp_path / "g.sadi.gguf"
    gp = tmp_path / "gate_pairs.jsonl"
    gp.write_text("".join(json.dumps({"positive": f"Q{i} xyxy", "negative": f"Q{i} zz"}) + "\n" for i in range(8)))
    assert runner.invoke(app, ["build-gate", str(gp), str(tiny_path), "-o", str(gate), "-q"]).exit_code == 0
    gated = runner.invoke(app, args + ["--gate", str(gate)])
    assert gated.exit_code == 0, gated.output
    assert json.loads(gated.stdout)["gate"]["file"] == str(gate)
    bad(["tune", str(pairs), str(dev), "-m", str(tiny_path), "--method", "fixed", "--gate", str(gate)], "--method sadi")
    bad(["tune", str(pairs), str(dev), "-m", str(tiny_path), "--with-delta", "2"], "--with-delta gives the delta")
