"""The engine on the default model, Gemma 3 270M Q4_K_M (post-norms after attention and FFN)."""

import dataclasses

import numpy as np
import pytest
from helpers import ORACLE_SITES, eval_fresh

import sadi_cpp


@pytest.fixture(scope="module")
def gemma():
    hook = sadi_cpp.load(None, n_ctx=256, n_threads=2)
    yield hook
    hook.llm.close()


@pytest.fixture(scope="module")
def tokens(gemma):
    return gemma.llm.tokenize(b"The capital of France is")


def test_shape_and_sites(gemma):
    assert dataclasses.asdict(gemma.shape) == {"arch": "gemma3", "n_layer": 18, "n_head": 4, "head_dim": 256, "n_ff": 2048, "n_embd": 640,
                                                 "n_expert": 0, "n_ff_exp": 0}
    assert gemma.sites == ("head", "neuron", "hidden")
    assert gemma.engine.site_node("neuron", 0) == "ffn_geglu-0"


def test_one_head_changes_logits_a_whole_post_normed_row_does_not(gemma, tokens):
    plain = eval_fresh(gemma.llm, tokens)
    one = np.zeros((18, 4), bool)
    one[5, 0] = True
    with gemma.steering({"head": one}, delta=29.0):
        steered = eval_fresh(gemma.llm, tokens)
    assert np.abs(steered - plain).max() > 0.1
    for layer in (0, 5, 17):
        row = np.zeros((18, 4), bool)
        row[layer, :] = True
        with gemma.steering({"head": row}, delta=29.0):
            assert np.array_equal(eval_fresh(gemma.llm, tokens), plain), layer
    # ffn_out feeds an RMS post-norm too; in the first layers its rows are large next to the
    # norm's eps (1e-6) and the factor is erased exactly (docs/engine.md has the later layers)
    hidden_row = np.zeros((18, 640), bool)
    hidden_row[0, :] = True
    with gemma.steering({"hidden": hidden_row}, delta=29.0):
        assert np.array_equal(eval_fresh(gemma.llm, tokens), plain)


def test_host_and_copy_paths_record_the_same_values(gemma, tokens):
    got = []
    for force_copy in (False, True):
        gemma.engine.force_copy = force_copy
        with gemma.recording(positions="all") as rec:
            gemma.llm.eval(tokens)
        got.append([rec.values(s) for s in ORACLE_SITES])
    gemma.engine.force_copy = False
    for host, copy in zip(*got):
        assert not np.isnan(host).any()
        assert np.array_equal(host, copy)


def test_cli_end_to_end_on_the_default_model(tmp_path):
    """build-mask on the shipped example pairs, inspect, generate: steering changes the text, delta 0 does not."""
    import json
    from pathlib import Path

    from typer.testing import CliRunner

    from sadi_cpp.cli import app

    runner = CliRunner()
    pairs = Path(__file__).resolve().parents[1] / "examples" / "sentiment_pairs.jsonl"
    mask = tmp_path / "gemma.sentiment.head.sadi.gguf"
    res = runner.invoke(app, ["build-mask", str(pairs), "--site", "head", "-o", str(mask), "--n-ctx", "128", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["pairs_used"] == 180
    res = runner.invoke(app, ["inspect", str(mask), "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["model"]["arch"] == "gemma3"
    base = ["generate", "My opinion of the new phone is that it", "--mask", str(mask), "-n", "16", "--json", "--n-ctx", "128"]
    res = runner.invoke(app, base + ["--positions", "all"])
    out = json.loads(res.stdout)
    assert res.exit_code == 0 and out["steered"] != out["unsteered"]
    res = runner.invoke(app, base + ["--delta", "0"])
    out = json.loads(res.stdout)
    assert out["steered"] == out["unsteered"]


def test_quiet_load_prints_nothing(capfd):
    """verbose=False (the default) hides llama.cpp's log while the hooked context is built, as Llama() does."""
    capfd.readouterr()
    hook = sadi_cpp.load(None, n_ctx=256, n_threads=2)
    hook.llm.close()
    out, err = capfd.readouterr()
    assert out == "" and err == "", (out, err)


def test_delta_zero_is_bit_identical_to_a_plain_llama(gemma, tokens):
    from llama_cpp import Llama

    from sadi_cpp.models import default_model_path

    plain = Llama(model_path=str(default_model_path()), n_ctx=256, n_threads=2, verbose=False)
    want = eval_fresh(plain, tokens)
    plain.close()
    heads = np.zeros((18, 4), bool)
    heads[[2, 9, 15], [0, 3, 1]] = True
    with gemma.steering({"head": heads}, delta=0.0, positions="all"):
        assert np.array_equal(eval_fresh(gemma.llm, tokens), want)
