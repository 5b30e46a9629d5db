"""The architecture matrix: every family of arch_models.FAMILIES, f32 and Q8_0, each site checked
by weight folding (steering with positions="all" equals the plain logits of a GGUF whose
attn_output columns, ffn_down columns or ffn_down rows were scaled), delta 0 bit-identical to the
unhooked model, the head site read the same with flash attention on and off, and the recordings
equal the inputs of the next linear layer.

docs/models.md is this run's matrix: the last test compares it with the committed file (set
SADI_CPP_WRITE_MODELS_MD=1 to write it instead)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Tuple

import gguf
import numpy as np
import pytest
from helpers import eval_fresh, f32_tol
from llama_cpp import Llama

import sadi_cpp
import sadi_cpp.errors
from arch_models import FAMILIES, write_arch
from tiny_model import TinyLlama

GGML_TYPE_F32 = 0
PROMPT = [1] + [(11 * i + 5) % 250 + 3 for i in range(23)]
CASES = {"head": (1, [2]), "neuron": (2, [5, 17, 40]), "hidden": (1, [0, 9, 31])}
ARCHS = list(FAMILIES)
VARIANTS = ("f32", "q8_0")
DELTA = 2.0
# f32 fixtures: the f32 rounding bound of tests/helpers.py. Q8_0 fixtures: the matrices after the
# steered layer quantize their input to 8 bits per block (steps of 1/127 of the block's largest
# value); the steered and the folded run reach those inputs through different f32 rounding, so an
# input may land one step apart, which moves the logits by a fraction of 2^-7 of their size:
# 2^-8 of the largest logit (on the development machine no input moved: the errors were 0).
Q8_REL = 2.0**-8
# Flash attention on the CPU rounds the attention scores' inputs to f16 (2^-11 relative). This
# random model's scores are large (tens), so the softmax weights move by up to ~1% and the head
# values (weighted sums of V rows) with them: measured up to 0.9% of the largest value. 2^-5
# relative bounds that; the exact check is the folding under flash attention below it.
FLASH_REL = 2.0**-5
MATRIX: Dict[Tuple[str, str, str], str] = {}  # (arch, variant, column) -> cell of docs/models.md
DOC = Path(__file__).resolve().parents[1] / "docs" / "models.md"


@pytest.fixture(scope="module")
def tiny() -> TinyLlama:
    return TinyLlama()


@pytest.fixture(scope="module")
def written(tiny, tmp_path_factory):
    folder = tmp_path_factory.mktemp("archs")
    cache: Dict[Tuple[str, str], Path] = {}

    def get(arch: str, variant: str) -> Path:
        if (arch, variant) not in cache:
            cache[(arch, variant)] = write_arch(tiny, arch, folder / f"{arch}-{variant}.gguf", quant=variant == "q8_0")
        return cache[(arch, variant)]

    return get


def llama(path: Path, **kw) -> Llama:
    args = dict(model_path=str(path), n_ctx=256, n_batch=256, n_ubatch=256, n_threads=2, type_k=GGML_TYPE_F32,
                type_v=GGML_TYPE_F32, verbose=False)
    args.update(kw)
    return Llama(**args)


def plain_logits(path: Path, **kw) -> np.ndarray:
    """The last prompt token's logits from an unhooked Llama on ``path``."""
    llm = llama(path, **kw)
    try:
        return eval_fresh(llm, PROMPT)
    finally:
        llm.close()


def steered_logits(hook, site: str, layer: int, units) -> np.ndarray:
    """Logits with ``units`` of ``site`` in ``layer`` scaled by (1 + DELTA) at every position."""
    mask = np.zeros((hook.shape.n_layer, hook.n_units(site)), bool)
    mask[layer, units] = True
    with hook.steering({site: mask}, delta=DELTA, positions="all"):
        return eval_fresh(hook.llm, PROMPT)


def tolerance(variant: str, reference: np.ndarray) -> float:
    return f32_tol(reference) if variant == "f32" else Q8_REL * max(1.0, float(np.abs(reference).max()))


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("arch", ARCHS)
def test_attaches_with_every_site_and_delta_zero_is_unhooked(written, arch, variant):
    path = written(arch, variant)
    types = {t.tensor_type for t in gguf.GGUFReader(path).tensors}
    assert (gguf.GGMLQuantizationType.Q8_0 in types) == (variant == "q8_0")
    plain = plain_logits(path)
    hook = sadi_cpp.attach(llama(path))
    try:
        assert hook.shape.arch == arch
        assert hook.sites == ("head", "neuron", "hidden"), {s: hook.site_problem(s) for s in ("head", "neuron", "hidden")}
        mask = {s: np.ones((hook.shape.n_layer, hook.n_units(s)), bool) for s in hook.sites}
        with hook.steering(mask, delta=0.0, positions="all"):
            zero = eval_fresh(hook.llm, PROMPT)
        assert np.array_equal(zero, plain), "delta 0 changed the logits"
    finally:
        hook.llm.close()
    MATRIX[(arch, variant, "loads")] = "yes"


def _fold(tiny: TinyLlama, site: str, layer: int, units, factor: float):
    def edit(t: Dict[str, np.ndarray]) -> None:
        p = f"blk.{layer}."
        if site == "head":
            cols = [h * tiny.head_dim + k for h in units for k in range(tiny.head_dim)]
            t[p + "attn_output.weight"][:, cols] *= factor
        elif site == "neuron":
            t[p + "ffn_down.weight"][:, units] *= factor
        else:  # the FFN's output elements: ffn_down's rows, and its bias where the graph adds one before ffn_out
            t[p + "ffn_down.weight"][units, :] *= factor
            if p + "ffn_down.bias" in t:
                t[p + "ffn_down.bias"][units] *= factor
    return edit


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("site", list(CASES))
@pytest.mark.parametrize("arch", ARCHS)
def test_steering_equals_the_folded_weights(tiny, written, tmp_path, arch, site, variant):
    layer, units = CASES[site]
    hook = sadi_cpp.attach(llama(written(arch, variant)))
    try:
        steered = steered_logits(hook, site, layer, units)
    finally:
        hook.llm.close()

    def plain(at: int) -> np.ndarray:
        return plain_logits(write_arch(tiny, arch, tmp_path / f"fold-{at}.gguf", quant=variant == "q8_0",
                                       edit=_fold(tiny, site, at, units, 1 + DELTA)))

    want = plain(layer)
    tol = tolerance(variant, want)
    err = float(np.abs(steered - want).max())
    assert err <= tol, f"{arch} {variant} {site}: max error {err:.3g} > {tol:.3g}"
    # the check can fail: the same edit folded into the next layer does not match
    wrong = float(np.abs(plain((layer + 1) % tiny.n_layer) - steered).max())
    assert wrong > 4 * tol, f"{arch} {variant} {site}: the wrong layer matches too ({wrong:.3g})"
    MATRIX[(arch, variant, site)] = "folds"


# How a layer's attention output reaches its l_out, per family: l_out = l_in + s * attn_out + s * ffn_out
# (s: granite's residual scale, else 1). Gemma 2/3 and OLMo 2 normalise attn_out first (post norms):
# their head recordings are checked by the folding above only.
RESIDUAL_SCALE = {"llama": 1.0, "qwen2": 1.0, "qwen3": 1.0, "phi3": 1.0, "granite": 0.7, "command-r": 1.0, "gptneox": 1.0}


@pytest.mark.parametrize("arch", ARCHS)
def test_recordings_are_the_next_linear_layers_inputs(tiny, written, arch):
    """Recorded neurons times ffn_down (plus its bias) are the recorded FFN output; recorded heads
    times attn_output (plus bias) are the attention's share of the residual stream."""
    hook = sadi_cpp.attach(llama(written(arch, "f32")))
    try:
        with hook.recording(sites=("head", "neuron", "hidden", "residual"), positions="all") as rec:
            hook.llm.eval(PROMPT)
        head, neuron, hidden, resid = (rec.values(s).astype(np.float64) for s in ("head", "neuron", "hidden", "residual"))
    finally:
        hook.llm.close()
    from arch_models import tensors_for

    w = tensors_for(tiny, arch)
    for il in range(tiny.n_layer):
        p = f"blk.{il}."
        ffn = neuron[:, il] @ w[p + "ffn_down.weight"].T + w.get(p + "ffn_down.bias", 0.0)
        assert np.abs(ffn - hidden[:, il]).max() <= f32_tol(hidden[:, il]), f"{arch} layer {il}: neurons x ffn_down != FFN output"
        if arch in RESIDUAL_SCALE and il > 0:
            s = RESIDUAL_SCALE[arch]
            attn = head[:, il] @ w[p + "attn_output.weight"].T + w.get(p + "attn_output.bias", 0.0)
            share = (resid[:, il] - resid[:, il - 1]) / s - hidden[:, il]
            assert np.abs(attn - share).max() <= f32_tol(resid[:, il] / s), f"{arch} layer {il}: heads x attn_output != attention output"
    MATRIX[(arch, "f32", "recorded")] = "neuron, hidden, head" if arch in RESIDUAL_SCALE else "neuron, hidden"


@pytest.mark.parametrize("arch", ARCHS)
def test_head_site_with_flash_attention(tiny, written, tmp_path, arch):
    """GPU users run with flash attention: the head site reads the same values either way (to the
    kernel's f16 rounding), and steering heads under flash attention equals the folded weights
    under flash attention (exact to f32 rounding)."""
    path = written(arch, "f32")
    values = {}
    layer, units = CASES["head"]
    for fa in (False, True):
        hook = sadi_cpp.attach(llama(path, flash_attn=fa))
        try:
            assert hook.site_problem("head") == ""
            with hook.recording(sites=("head",), positions="all") as rec:
                hook.llm.eval(PROMPT)
            values[fa] = rec.values("head")
            if fa:
                steered = steered_logits(hook, "head", layer, units)
        finally:
            hook.llm.close()
    assert values[True].shape == values[False].shape == (len(PROMPT), tiny.n_layer, tiny.n_head * tiny.head_dim)
    err = float(np.abs(values[True] - values[False]).max())
    scale = float(np.abs(values[False]).max())
    assert err <= FLASH_REL * scale, f"{arch}: flash attention changes head values by {err:.3g} (largest {scale:.3g})"
    folded = write_arch(tiny, arch, tmp_path / "fold.gguf", edit=_fold(tiny, "head", layer, units, 1 + DELTA))
    want = plain_logits(folded, flash_attn=True)
    assert np.abs(steered - want).max() <= f32_tol(want), f"{arch}: head steering under flash attention != folded weights"
    MATRIX[(arch, "f32", "flash")] = "same, folds"


EXPERT_CASE = (1, [5, 17, 48 + 3, 48 + 40])  # layer 1: neurons 5 and 17 of expert 0, 3 and 40 of expert 1


@pytest.mark.parametrize("site", ["head", "hidden", "expert"])
def test_mixture_of_experts_row(tiny, tmp_path, site):
    """A llama with a 2-expert FFN (one expert per token): heads fold into attn_output; the FFN
    output (ffn_moe_out, the experts' weighted sum) into the same rows of every expert's down
    projection; expert neuron e * n_ff + j into column j of expert e's down projection. The dense
    neuron site is refused at attach, naming what is missing."""
    layer, units = EXPERT_CASE if site == "expert" else CASES[site]

    def fold(at: int):
        def edit(t: Dict[str, np.ndarray]) -> None:
            p = f"blk.{at}."
            if site == "head":
                cols = [h * tiny.head_dim + k for h in units for k in range(tiny.head_dim)]
                t[p + "attn_output.weight"] = t[p + "attn_output.weight"].copy()
                t[p + "attn_output.weight"][:, cols] *= 1 + DELTA
            elif site == "hidden":
                t[p + "ffn_down_exps.weight"][:, units, :] *= 1 + DELTA  # [expert, n_embd, n_ff]
            else:
                for u in units:
                    t[p + "ffn_down_exps.weight"][u // tiny.n_ff, :, u % tiny.n_ff] *= 1 + DELTA
        return edit

    hook = sadi_cpp.attach(llama(tiny.write(tmp_path / "moe.gguf", n_expert=2)))
    try:
        assert hook.sites == ("head", "hidden", "expert")
        assert (hook.shape.n_expert, hook.shape.n_ff_exp, hook.n_units("expert")) == (2, tiny.n_ff, 2 * tiny.n_ff)
        problem = hook.site_problem("neuron")
        assert "dense FFN (an input of ffn_down) in layer 0" in problem
        with pytest.raises(sadi_cpp.errors.UnsupportedModelError, match="ffn_down"):
            with hook.steering({"neuron": np.ones((tiny.n_layer, tiny.n_ff), bool)}, delta=1.0):
                pass
        if site == "expert":  # a recorded row: the selected expert's neurons, zeros for the other
            with hook.recording(sites=("expert",), positions="all") as rec:
                hook.llm.eval(PROMPT)
            v = rec.values("expert").reshape(len(PROMPT), tiny.n_layer, 2, tiny.n_ff)
            chosen = (v != 0).any(axis=-1)
            assert (chosen.sum(axis=-1) == 1).all(), "each token's row holds exactly one expert (n_expert_used 1)"
            assert chosen[:, :, 0].any() and chosen[:, :, 1].any(), "both experts are used by some token"
        steered = steered_logits(hook, site, layer, units)
    finally:
        hook.llm.close()

    def plain(at: int) -> np.ndarray:
        return plain_logits(tiny.write(tmp_path / f"moe-{at}.gguf", n_expert=2, edit=fold(at)))

    want = plain(layer)
    assert np.abs(steered - want).max() <= f32_tol(want)
    assert np.abs(plain((layer + 1) % tiny.n_layer) - steered).max() > 4 * f32_tol(want)
    MATRIX[("llama + 2 experts", "f32", site)] = "folds"
    MATRIX[("llama + 2 experts", "f32", "loads")] = "yes"
    MATRIX[("llama + 2 experts", "f32", "neuron")] = "refused at attach: " + problem


def test_expert_site_copy_path_equals_host_path(tiny, tmp_path):
    """The device path (ggml_backend_tensor_get/set, forced on the CPU) reads and steers the expert
    site exactly as the in-place host path."""
    moe = tiny.write(tmp_path / "moe.gguf", n_expert=2)
    layer, units = EXPERT_CASE
    got = []
    for force_copy in (False, True):
        hook = sadi_cpp.attach(llama(moe), force_copy=force_copy)
        try:
            with hook.recording(sites=("expert",), positions="all") as rec:
                hook.llm.eval(PROMPT)
            got.append((rec.values("expert"), steered_logits(hook, "expert", layer, units)))
        finally:
            hook.llm.close()
    assert np.array_equal(got[0][0], got[1][0]) and np.array_equal(got[0][1], got[1][1])


def test_expert_site_end_to_end(tiny, tmp_path):
    """build-mask --site expert on the tiny MoE, inspect, generate: the steered text differs, and
    the mask refuses a dense model (another fingerprint) with a clear error."""
    from helpers import bad, runner

    from sadi_cpp.cli import app

    moe = tiny.write(tmp_path / "moe.gguf", n_expert=2)
    pairs = Path(__file__).resolve().parents[1] / "examples" / "sentiment_pairs.jsonl"
    mask = tmp_path / "moe.expert.sadi.gguf"
    res = runner.invoke(app, ["build-mask", str(pairs), str(moe), "--site", "expert", "--top-k", "20", "-o", str(mask), "-q"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["inspect", str(mask)])
    assert res.exit_code == 0 and "site: expert" in res.output
    res = runner.invoke(app, ["generate", "-m", str(moe), "--mask", str(mask), "--json", "-n", "12", "--delta", "40", "Hello"])
    assert res.exit_code == 0, res.output
    import json

    out = json.loads(res.stdout)
    assert out["site"] == "expert" and out["steered"] != out["unsteered"]
    dense = tiny.write(tmp_path / "dense.gguf")
    bad(["generate", "-m", str(dense), "--mask", str(mask), "Hello"], "made for another model")
    res = runner.invoke(app, ["check", str(moe)])
    assert "n_expert 2, n_ff_exp 48" in res.stdout and "expert   ok: ffn_moe_swiglu-L" in res.stdout


def render() -> str:
    lines = [
        "# Models: the architecture matrix",
        "",
        "Generated by `tests/test_architectures.py` (`SADI_CPP_WRITE_MODELS_MD=1 pytest tests/test_architectures.py`);",
        "the test suite fails when this file and the run disagree. Each family is a tiny random GGUF written",
        "with gguf-py (3 layers, 4 heads of 8, 2 KV heads, FFN 48, the byte vocabulary) in f32 and with its",
        "large matrices in Q8_0 (attn_output and ffn_down stay f32 so that folding stays exact).",
        "",
        "- **loads**: attaches, the probe finds all three sites, delta 0 on every unit is bit-identical to the unhooked model;",
        "- **head / neuron / hidden**: `folds` = steering heads 2 of layer 1, neurons 5, 17, 40 of layer 2, FFN-output",
        "  elements 0, 9, 31 of layer 1 by (1 + 2) at every position gives the plain logits of the GGUF with",
        "  attn_output columns / ffn_down columns / ffn_down rows (and bias) scaled (f32 rounding; Q8_0: 2^-8 of the",
        "  largest logit), and the same edit folded into the next layer does not;",
        "- **flash attention**: head values read with `flash_attn=True` equal those without to the kernel's f16",
        "  rounding (2^-5 of the largest value), and head steering under flash attention folds exactly.",
        "",
        "- **recordings**: recorded neurons times ffn_down (plus bias) equal the recorded FFN output, and recorded heads",
        "  times attn_output (plus bias) equal the attention's share of the recorded residual stream (families",
        "  without post norms), to f32 rounding: the sites read the inputs of the next linear layer.",
        "",
        "| family | graph | variant | loads | head | neuron | hidden | flash attention | recordings |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for arch in ARCHS:
        for variant in VARIANTS:
            cells = [MATRIX.get((arch, variant, c), "FAILED") for c in ("loads", "head", "neuron", "hidden")]
            flash = MATRIX.get((arch, variant, "flash"), "FAILED") if variant == "f32" else "-"
            recorded = MATRIX.get((arch, variant, "recorded"), "FAILED") if variant == "f32" else "-"
            lines.append(f"| {arch} | {FAMILIES[arch]} | {variant} | " + " | ".join(cells) + f" | {flash} | {recorded} |")
    moe = [MATRIX.get(("llama + 2 experts", "f32", c), "FAILED") for c in ("loads", "head", "neuron", "hidden")]
    moe[2] += "; expert site (expert x n_ff_exp units): " + MATRIX.get(("llama + 2 experts", "f32", "expert"), "FAILED")
    lines.append("| llama + 2 experts | mixture-of-experts FFN (Mixtral-style, Qwen3-MoE-style) | f32 | " + " | ".join(moe) + " | - | - |")
    lines += [
        "",
        "Real models: Gemma 3 270M Q4_K_M (gemma3, the default) and SmolLM2-135M-Instruct Q4_1 (llama) run",
        "build-mask, inspect, generate and eval end to end in `tests/test_default_model.py` and",
        "`tests/test_smollm2.py`. On a mixture-of-experts FFN the hidden site reads `ffn_moe_out` (the experts'",
        "weighted sum), and the `expert` site the input of the experts' down projection: unit e x n_ff_exp + j is",
        "neuron j of expert e, steered in the slot of each token that selected e (llama.cpp computes the other",
        "experts not at all); a recorded row holds zeros for the experts a token did not select. Folding:",
        "neurons 5, 17 of expert 0 and 3, 40 of expert 1 in layer 1 equal columns of those experts' ffn_down_exps.",
        "`sadi-cpp check MODEL` prints which sites any GGUF allows, and why not.",
        "",
    ]
    return "\n".join(lines)


def test_models_md_is_this_runs_matrix():
    """Runs last in this module: every cell above must have passed for the rendering to match."""
    text = render()
    if os.environ.get("SADI_CPP_WRITE_MODELS_MD") == "1":
        DOC.write_text(text)
    assert DOC.exists() and DOC.read_text() == text, (
        "docs/models.md differs from this run's matrix (a cell failed, or the file is stale): "
        "SADI_CPP_WRITE_MODELS_MD=1 pytest tests/test_architectures.py writes it")

