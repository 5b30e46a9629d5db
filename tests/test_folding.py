"""The weight-folding oracle: steering needs no re-implementation of the model to be checked.
Scaling head h of layer L by (1 + delta) at every position equals scaling the columns of that
layer's attention output projection that read head h; scaling neuron j equals scaling column j of
ffn_down; scaling FFN-output element i equals scaling row i of ffn_down (llama: no post-norm and
no bias after ffn_down). So, with positions="all", the hooked model's logits must equal the plain
logits of a second GGUF whose weights were edited that way. Architecture families added later
(tests of issue 13) reuse this check with their own weight names."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from helpers import assert_f32_close, eval_fresh, f32_tol

import sadi_cpp

PROMPT = [1] + [(11 * i + 5) % 250 + 3 for i in range(23)]


def folded(tiny, site, layer, units, factor):
    """A copy of the tiny model with the weights that read the steered units scaled by ``factor``."""
    t = copy.deepcopy(tiny)
    p = f"blk.{layer}."
    if site == "head":
        cols = [h * t.head_dim + k for h in units for k in range(t.head_dim)]
        t.w[p + "attn_output.weight"][:, cols] *= factor
    elif site == "neuron":
        t.w[p + "ffn_down.weight"][:, units] *= factor
    else:  # hidden: the FFN's output elements are ffn_down's rows
        t.w[p + "ffn_down.weight"][units, :] *= factor
    return t


CASES = [("head", 1, [2]), ("head", 0, [0, 3]), ("neuron", 2, [5, 17, 40]), ("hidden", 1, [0, 9, 31])]
ARCHS = ["llama", "qwen2", "qwen3"]  # llama.cpp graph builders with the same FFN and attention output


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("site,layer,units", CASES)
def test_steering_equals_the_folded_weights(tiny, make_llama, tmp_path, site, layer, units, arch):
    delta = 2.0
    hook = sadi_cpp.attach(make_llama(model_path=str(tiny.write(tmp_path / f"{arch}.gguf", arch=arch))))
    assert hook.shape.arch == arch and hook.sites == ("head", "neuron", "hidden")
    mask = np.zeros((tiny.n_layer, hook.n_units(site)), bool)
    mask[layer, units] = True
    with hook.steering({site: mask}, delta=delta, positions="all"):
        steered = eval_fresh(hook.llm, PROMPT)
    path = folded(tiny, site, layer, units, 1 + delta).write(tmp_path / "folded.gguf", arch=arch)
    want = eval_fresh(make_llama(model_path=str(path)), PROMPT)
    assert_f32_close(steered, want, what=site)
    # the check can fail: the same edit folded into the wrong layer (or units) does not match
    wrong_layer = (layer + 1) % tiny.n_layer
    wrong = folded(tiny, site, wrong_layer, units, 1 + delta).write(tmp_path / "wrong.gguf", arch=arch)
    assert np.abs(eval_fresh(make_llama(model_path=str(wrong)), PROMPT) - steered).max() > 100 * f32_tol(want)


@pytest.mark.parametrize("site,layer,units", [("head", 2, [1, 3]), ("hidden", 1, [4, 20])])
def test_a_mixture_of_experts_ffn_folds_too(tiny, make_llama, tmp_path, site, layer, units):
    """MoE (2 experts): heads fold into attn_output; the FFN output (ffn_moe_out, the experts'
    weighted sum) folds into the same rows of every expert's down projection."""
    delta = 2.0
    hook = sadi_cpp.attach(make_llama(model_path=str(tiny.write(tmp_path / "moe.gguf", n_expert=2))))
    mask = np.zeros((tiny.n_layer, hook.n_units(site)), bool)
    mask[layer, units] = True
    with hook.steering({site: mask}, delta=delta, positions="all"):
        steered = eval_fresh(hook.llm, PROMPT)

    def fold(at):
        def edit(tensors):
            p = f"blk.{at}."
            if site == "head":
                cols = [h * tiny.head_dim + k for h in units for k in range(tiny.head_dim)]
                tensors[p + "attn_output.weight"] = tensors[p + "attn_output.weight"].copy()
                tensors[p + "attn_output.weight"][:, cols] *= 1 + delta
            else:
                tensors[p + "ffn_down_exps.weight"][:, units, :] *= 1 + delta  # [expert, n_embd, n_ff]
        return edit

    want = eval_fresh(make_llama(model_path=str(tiny.write(tmp_path / "f.gguf", n_expert=2, edit=fold(layer)))), PROMPT)
    assert_f32_close(steered, want, what=site)
    wrong = eval_fresh(make_llama(model_path=str(tiny.write(tmp_path / "w.gguf", n_expert=2, edit=fold((layer + 1) % 3)))), PROMPT)
    assert np.abs(wrong - steered).max() > 100 * f32_tol(want)
